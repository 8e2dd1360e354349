package smtpcmd

import "testing"

// TestPrintable: text from mail cannot drive the admin's terminal.
func TestPrintable(t *testing.T) {
	if got := oneLine("a\x1b]0;owned\x07b \u009b2J\tc\r\nd"); got != "a?]0;owned?b ?2J c? d" {
		t.Errorf("oneLine: %q", got)
	}
	if got := printable("X: \x1b[31mred\n"); got != "X: ?[31mred\n" {
		t.Errorf("printable: %q", got)
	}
}
