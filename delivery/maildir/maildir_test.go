package maildir

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestLFWriter(t *testing.T) {
	for in, want := range map[string]string{
		"a\r\nb\r\n":   "a\nb\n",
		"\r\n\r\n":     "\n\n",
		"no line end":  "no line end",
		"keep\rthis\n": "keep\rthis\n",
	} {
		// Every split point, so a CR at the end of a write is held.
		for cut := 0; cut <= len(in); cut++ {
			var out bytes.Buffer
			w := bufio.NewWriter(&out)
			l := &lfWriter{w: w}
			l.Write([]byte(in[:cut]))
			l.Write([]byte(in[cut:]))
			w.Flush()
			if out.String() != want && !(strings.HasSuffix(in, "\r") && cut == len(in)) {
				t.Errorf("%q split at %d: %q, want %q", in, cut, out.String(), want)
			}
		}
	}
}

// TestFolderIsSafe: recipient addresses cannot steer a delivery out of
// the configured tree.
func TestFolderIsSafe(t *testing.T) {
	m := &Maildir{Path: "/var/mail/{domain}/{local}"}
	for addr, want := range map[string]string{
		"User@Example.COM":        "/var/mail/example.com/user",
		"../../etc@example.com":   "/var/mail/example.com/_.._etc",
		"a/b@x/../../y":           "/var/mail/x_.._.._y/a_b",
		"..@.":                    "/var/mail/_/_",
		"\"q u\"@example.com":     "/var/mail/example.com/_q_u_",
		"nul\x00byte@example.com": "/var/mail/example.com/nul_byte",
	} {
		if got := m.folder(addr); got != want {
			t.Errorf("folder(%q) = %q, want %q", addr, got, want)
		}
	}
}
