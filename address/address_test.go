package address_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-smtp/caddy-smtp/address"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func TestDomain(t *testing.T) {
	for in, want := range map[string]string{
		"u@Example.COM":             "example.com",
		"u@example.com.":            "example.com",
		"u@example.com..":           "example.com.", // one dot only: never a configured domain
		"a@b@evil.test":             "evil.test",    // the last @ counts
		"postmaster":                "",
		"u@[192.0.2.1]":             "[192.0.2.1]",
		`"u@evil.test"@example.com`: "example.com",
	} {
		if got := address.Domain(in); got != want {
			t.Errorf("Domain(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		smtputf8 bool
		want     address.Problem
	}{
		{"u@example.com", false, address.OK},
		{"first.last+tag@sub.example.com.", false, address.OK},
		{"u@[192.0.2.1]", false, address.OK},
		{"u@[IPv6:2001:db8::1]", false, address.OK},
		{"u@[x-tag:printable]", false, address.OK},
		{"u@[IPv6:fe80::1%eth0]", false, address.BadSyntax},
		{"u@[192.0.2.1\r]", false, address.BadSyntax},
		{`"u@evil.test"@example.com`, false, address.BadSyntax},
		{"u@evil.test@example.com", false, address.BadSyntax},
		{"u@example..com", false, address.BadSyntax},
		{"u@-example.com", false, address.BadSyntax},
		{"@example.com", false, address.BadSyntax},
		{"u@", false, address.BadSyntax},
		{"u@exa mple.com", false, address.BadSyntax},
		{"u@example.com\x00", false, address.BadSyntax},
		{"ü@exämple.com", false, address.NeedsSMTPUTF8},
		{"ü@exämple.com", true, address.OK},
		{"u@\xff\xfe", true, address.NotUTF8},
	} {
		if got := address.Check(tc.addr, tc.smtputf8); got != tc.want {
			t.Errorf("Check(%q, smtputf8 %v) = %v, want %v", tc.addr, tc.smtputf8, got, tc.want)
		}
	}
}

func TestSenderRouted(t *testing.T) {
	for in, want := range map[string]bool{
		"u%evil.test@example.com": true,
		"evil.test!u@example.com": true,
		"u@evil.test%example.com": false, // in the domain: bad syntax, not routing
		"u@example.com":           false,
		"u%x":                     false,
	} {
		if got := address.SenderRouted(in); got != want {
			t.Errorf("SenderRouted(%q) = %v, want %v", in, got, want)
		}
	}
}

// FuzzAddress asserts what the rest of the gateway relies on: nothing
// here panics; Domain is NormalizeDomain of what Split gives, and is
// already normalized only once; an address Check passes has exactly one
// "@" outside an address literal, no byte below 0x21, no quote,
// bracket or backslash in its local part, valid UTF-8, and ASCII only
// unless SMTPUTF8 was given; SenderRouted is about the local part only.
func FuzzAddress(f *testing.F) {
	for _, s := range st.HostileAddresses {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		local, domain := address.Split(addr)
		if address.Domain(addr) != address.NormalizeDomain(domain) {
			t.Fatalf("Domain(%q) = %q, address.NormalizeDomain(Split) = %q", addr, address.Domain(addr), address.NormalizeDomain(domain))
		}
		if domain != "" && local+"@"+domain != addr {
			t.Fatalf("Split(%q) = %q, %q", addr, local, domain)
		}
		for _, utf := range []bool{false, true} {
			if address.Check(addr, utf) != address.OK {
				continue
			}
			if !utf8.ValidString(addr) || (!utf && !address.IsASCII(addr)) {
				t.Fatalf("Check(%q, %v) passed bad bytes", addr, utf)
			}
			if local == "" || domain == "" || strings.Contains(local, "@") {
				t.Fatalf("Check(%q) passed: local %q, domain %q", addr, local, domain)
			}
			if strings.ContainsAny(local, "\"[]\\() <>,;:") {
				t.Fatalf("Check(%q) passed a local part that needs quoting", addr)
			}
			for i := 0; i < len(addr); i++ {
				if addr[i] < 0x21 || addr[i] == 0x7f {
					t.Fatalf("Check(%q) passed a control byte or space", addr)
				}
			}
			if !strings.HasPrefix(domain, "[") && strings.ContainsAny(domain, "@%!/[]") {
				t.Fatalf("Check(%q) passed domain %q", addr, domain)
			}
		}
		if address.SenderRouted(addr) && !strings.ContainsAny(addr[:strings.LastIndexByte(addr, '@')], "%!") {
			t.Fatalf("SenderRouted(%q) without %% or ! in the local part", addr)
		}
	})
}
