package smtpapp

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"
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

func TestCopyMessage(t *testing.T) {
	cases := []struct {
		in         string
		reject     error  // result with reject
		normalized string // result with normalize
	}{
		{"a\r\nb\r\n", nil, "a\r\nb\r\n"},
		{"", nil, ""},
		{"a\nb\r\n", errBareNewline, "a\r\nb\r\n"},
		{"a\rb\r\n", errBareNewline, "a\r\nb\r\n"},
		{"a\r\r\n", errBareNewline, "a\r\n\r\n"},
		{"a\n\n", errBareNewline, "a\r\n\r\n"},
		{"a\r", errBareNewline, "a\r\n"},
		{"\n.\n", errBareNewline, "\r\n.\r\n"},
		{"\r.\r", errBareNewline, "\r\n.\r\n"},
		{"x\r\n.\n", errBareNewline, "x\r\n.\r\n"},
	}
	for _, tc := range cases {
		for _, oneByte := range []bool{false, true} {
			src := func() *strings.Reader { return strings.NewReader(tc.in) }
			read := func(normalize bool) (string, error) {
				var out bytes.Buffer
				var r = iotestReader(src(), oneByte)
				err := copyMessage(&out, r, normalize)
				return out.String(), err
			}
			if _, err := read(false); !errors.Is(err, tc.reject) && err != tc.reject {
				t.Errorf("reject %q (one byte reads %v): %v, want %v", tc.in, oneByte, err, tc.reject)
			}
			if got, err := read(true); err != nil || got != tc.normalized {
				t.Errorf("normalize %q (one byte reads %v): %q %v, want %q", tc.in, oneByte, got, err, tc.normalized)
			}
		}
	}
}

func iotestReader(r *strings.Reader, oneByte bool) interface{ Read([]byte) (int, error) } {
	if oneByte {
		return iotest.OneByteReader(r)
	}
	return r
}

func TestReceivedHeader(t *testing.T) {
	ip6 := netip.MustParseAddr("2001:db8::1")
	h := receivedHeader("mx.example.com", "evil)\r\nX-Injected: 1", ip6, "ESMTP", "ID1", nil, []string{"a@b", "c@d"}, testTime)
	if strings.Count(h, "\r\n") != 3 || strings.Contains(h, "X-Injected: 1\r\n") {
		t.Errorf("client text broke out of the header: %q", h)
	}
	if !strings.Contains(h, "[IPv6:2001:db8::1]") || strings.Contains(h, " for <") {
		t.Errorf("header: %q", h)
	}
	if got := protocolName(true, true, true); got != "ESMTPSA" {
		t.Errorf("protocolName: %s", got)
	}
	if got := protocolName(false, true, false); got != "SMTP" {
		t.Errorf("protocolName HELO: %s", got)
	}
}

var testTime = mustTime("2026-11-27T10:00:00Z")

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}
