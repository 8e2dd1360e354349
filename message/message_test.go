package message

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// TestCopy: CRLF passes; every bare LF and bare CR is refused, or
// rewritten to CRLF under normalize, also when reads end mid-line.
func TestCopy(t *testing.T) {
	cases := []struct {
		in         string
		reject     error  // result with reject
		normalized string // result with normalize
	}{
		{"a\r\nb\r\n", nil, "a\r\nb\r\n"},
		{"", nil, ""},
		{"a\nb\r\n", ErrBareNewline, "a\r\nb\r\n"},
		{"a\rb\r\n", ErrBareNewline, "a\r\nb\r\n"},
		{"a\r\r\n", ErrBareNewline, "a\r\n\r\n"},
		{"a\n\n", ErrBareNewline, "a\r\n\r\n"},
		{"a\r", ErrBareNewline, "a\r\n"},
		{"\n.\n", ErrBareNewline, "\r\n.\r\n"},
		{"\r.\r", ErrBareNewline, "\r\n.\r\n"},
		{"x\r\n.\n", ErrBareNewline, "x\r\n.\r\n"},
	}
	for _, tc := range cases {
		for _, oneByte := range []bool{false, true} {
			src := func() *strings.Reader { return strings.NewReader(tc.in) }
			read := func(normalize bool) (string, error) {
				var out bytes.Buffer
				var r = iotestReader(src(), oneByte)
				err := Copy(&out, r, normalize)
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
	h := Received("mx.example.com", "evil)\r\nX-Injected: 1", ip6, "ESMTP", "ID1", nil, []string{"a@b", "c@d"}, time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC))
	if strings.Count(h, "\r\n") != 3 || strings.Contains(h, "X-Injected: 1\r\n") {
		t.Errorf("client text broke out of the header: %q", h)
	}
	if !strings.Contains(h, "[IPv6:2001:db8::1]") || strings.Contains(h, " for <") {
		t.Errorf("header: %q", h)
	}
	if got := Protocol(true, true, true); got != "ESMTPSA" {
		t.Errorf("Protocol: %s", got)
	}
	if got := Protocol(false, true, false); got != "SMTP" {
		t.Errorf("Protocol HELO: %s", got)
	}
}
