package smtpapp

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRelayPolicy(t *testing.T) {
	p, err := NewRelayPolicy([]string{"example.com", "*.example.org", "Example.NET."}, []string{"10.0.0.0/8", "2001:db8::/32", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	outside := netip.MustParseAddr("203.0.113.5")
	cases := []struct {
		rcpt   string
		client string
		auth   bool
		want   bool
	}{
		{"u@example.com", "203.0.113.5", false, true},
		{"u@EXAMPLE.COM", "203.0.113.5", false, true},
		{"u@example.com.", "203.0.113.5", false, true},
		{"u@example.net", "203.0.113.5", false, true},
		{"u@sub.example.org", "203.0.113.5", false, true},
		{"u@example.org", "203.0.113.5", false, false}, // *. matches subdomains only
		{"u@evil.test", "203.0.113.5", false, false},
		{"u@example.com.evil.test", "203.0.113.5", false, false},
		{"u@notexample.com", "203.0.113.5", false, false},
		// Found by FuzzAddress: a second normalization made these local.
		{"u@example.com..", "203.0.113.5", false, false},
		{"u@example.com\v.", "203.0.113.5", false, false},
		{"u@example.com \x85.", "203.0.113.5", false, false},
		{"u@[192.0.2.1]", "203.0.113.5", false, false},
		{"u%evil.test@example.com", "203.0.113.5", false, true}, // delivered to example.com, which owns the % part
		{"postmaster", "203.0.113.5", false, false},
		{"u@evil.test", "10.1.2.3", false, true},
		{"u@evil.test", "::ffff:10.1.2.3", false, true},
		{"u@evil.test", "2001:db8::1", false, true},
		{"u@evil.test", "192.0.2.7", false, true},
		{"u@evil.test", "192.0.2.8", false, false},
		{"u@evil.test", "203.0.113.5", true, true},
	}
	for _, tc := range cases {
		if got := p.Accepts(tc.rcpt, netip.MustParseAddr(tc.client), tc.auth); got != tc.want {
			t.Errorf("Accepts(%q, %s, auth=%v) = %v, want %v", tc.rcpt, tc.client, tc.auth, got, tc.want)
		}
	}
	// Nothing configured relays nothing.
	empty, _ := NewRelayPolicy(nil, nil)
	if empty.Accepts("u@example.com", outside, false) || empty.Accepts("u@example.com", netip.MustParseAddr("127.0.0.1"), false) {
		t.Error("an empty policy accepts mail")
	}
	for _, bad := range [][2][]string{{{"*"}, nil}, {{"a@b"}, nil}, {nil, {"10.0.0.0/33"}}, {nil, {"host.example"}}} {
		if _, err := NewRelayPolicy(bad[0], bad[1]); err == nil {
			t.Errorf("NewRelayPolicy(%v) accepted", bad)
		}
	}
}

func TestRequiresTLSFirst(t *testing.T) {
	for _, level := range []Level{LevelNone, LevelMay, LevelEncrypt} {
		for _, isTLS := range []bool{false, true} {
			for _, verb := range []string{"MAIL", "rcpt", "DATA", "BDAT", "AUTH", "EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"} {
				want := level == LevelEncrypt && !isTLS && strings.Contains("MAIL RCPT DATA BDAT AUTH", strings.ToUpper(verb))
				if got := requiresTLSFirst(level, isTLS, verb); got != want {
					t.Errorf("requiresTLSFirst(%s, tls=%v, %s) = %v", level, isTLS, verb, got)
				}
			}
		}
	}
}

func TestParseLevels(t *testing.T) {
	if l, err := ParseLevel(""); err != nil || l != LevelMay {
		t.Errorf("default level: %v %v", l, err)
	}
	if _, err := ParseLevel("verify"); err == nil {
		t.Error("verify is a client level, not a server level")
	}
	if a, err := ParseClientAuth(""); err != nil || a != ClientAuthNone {
		t.Errorf("default client_auth: %v %v", a, err)
	}
	if _, err := ParseClientAuth("optional"); err == nil {
		t.Error("optional accepted")
	}
}
