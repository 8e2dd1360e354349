package milter

import (
	"bufio"
	"io"
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

func TestReadHeader(t *testing.T) {
	msg := "Received: from a\r\n\tby b\r\nSubject:  two spaces\r\nX-Empty:\r\nnot a field\r\nTo: c\r\n\r\nbody\r\n"
	br := bufio.NewReader(strings.NewReader(msg))
	fields, first, err := readHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	want := []field{{"Received", "from a\r\n\tby b\r\n"}, {"Subject", " two spaces\r\n"}, {"X-Empty", "\r\n"}}
	if len(fields) != len(want) {
		t.Fatalf("fields %q", fields)
	}
	for i := range want {
		if fields[i] != want[i] {
			t.Errorf("field %d: %q, want %q", i, fields[i], want[i])
		}
	}
	rest, _ := io.ReadAll(br)
	if body := first + string(rest); body != "not a field\r\nTo: c\r\n\r\nbody\r\n" {
		t.Errorf("body %q", body)
	}
	fields, first, err = readHeader(bufio.NewReader(strings.NewReader("A: b\r\n\r\nbody\r\n")))
	if err != nil || len(fields) != 1 || first != "" {
		t.Errorf("plain: %q %q %v", fields, first, err)
	}
}
