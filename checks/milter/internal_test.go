package milter

import (
	"strings"
	"testing"
)

func TestReplyText(t *testing.T) {
	for in, want := range map[string]string{
		"550 5.7.1 Virus found: X":              "Virus found: X",
		"550-5.7.1 first\r\n550 5.7.1 second":   "first",
		"451 4.7.1 Try later":                   "Try later",
		"554 rejected":                          "rejected",
		"550 5.7.1 a\x00b\x7fc":                 "a b c",
		"550 5.7.1 " + strings.Repeat("x", 300): strings.Repeat("x", 200),
	} {
		if got := replyText(in); got != want {
			t.Errorf("replyText(%q) = %q, want %q", in, got, want)
		}
	}
}
