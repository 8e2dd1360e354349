package message

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadHeader(t *testing.T) {
	msg := "Received: from a\r\n\tby b\r\nSubject:  two spaces\r\nX-Empty:\r\nnot a field\r\nTo: c\r\n\r\nbody\r\n"
	br := bufio.NewReader(strings.NewReader(msg))
	fields, first, err := ReadHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ name, value string }{{"Received", "from a\r\n\tby b\r\n"}, {"Subject", " two spaces\r\n"}, {"X-Empty", "\r\n"}}
	if len(fields) != len(want) {
		t.Fatalf("fields %q", fields)
	}
	for i, w := range want {
		if fields[i].Name != w.name || fields[i].Value() != w.value {
			t.Errorf("field %d: %q %q, want %q", i, fields[i].Name, fields[i].Value(), w)
		}
	}
	rest, _ := io.ReadAll(br)
	if body := first + string(rest); body != "not a field\r\nTo: c\r\n\r\nbody\r\n" {
		t.Errorf("body %q", body)
	}
	fields, first, err = ReadHeader(bufio.NewReader(strings.NewReader("A: b\r\n\r\nbody\r\n")))
	if err != nil || len(fields) != 1 || first != "" {
		t.Errorf("plain: %q %q %v", fields, first, err)
	}
	// RFC 5322 4.5.3: spaces before the colon are still a field.
	fields, first, err = ReadHeader(bufio.NewReader(strings.NewReader("Subject : hi\r\nFrom: a\r\n\r\nx\r\n")))
	if err != nil || len(fields) != 2 || first != "" || fields[0].Name != "Subject" || fields[0].Value() != "hi\r\n" ||
		fields[0].Raw != "Subject : hi\r\n" {
		t.Errorf("space before the colon: %q %q %v", fields, first, err)
	}
	// A long folded field is read whole (in linear time: a quadratic
	// reader took minutes for this).
	long := "X-Long: a\r\n" + strings.Repeat(" b\r\n", 1<<19) + "\r\n"
	fields, _, err = ReadHeader(bufio.NewReader(strings.NewReader(long)))
	if err != nil || len(fields) != 1 || len(fields[0].Raw) != len(long)-2 {
		t.Errorf("long field: %d fields, %v", len(fields), err)
	}
}

// TestEditHeader applies each kind of edit, with the milter protocol's
// meaning of its index, to a header with repeated fields.
func TestEditHeader(t *testing.T) {
	const msg = "Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\n\r\nbody\r\n.line\r\n"
	for _, tc := range []struct {
		name  string
		edits []HeaderEdit
		want  string
	}{
		{"add", []HeaderEdit{{Op: AddHeader, Name: "X-New", Value: "v"}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\nX-New: v\r\n\r\nbody\r\n.line\r\n"},
		{"insert first", []HeaderEdit{{Op: InsertHeader, Name: "X-New", Value: "v", Index: 0}},
			"X-New: v\r\nReceived: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\n\r\nbody\r\n.line\r\n"},
		{"insert after 2", []HeaderEdit{{Op: InsertHeader, Name: "X-New", Value: "v", Index: 2}},
			"Received: r1\r\nX-A: 1\r\nX-New: v\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\n\r\nbody\r\n.line\r\n"},
		{"insert past the end", []HeaderEdit{{Op: InsertHeader, Name: "X-New", Value: "v", Index: 99}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\nX-New: v\r\n\r\nbody\r\n.line\r\n"},
		{"change second of name, any case", []HeaderEdit{{Op: ChangeHeader, Name: "X-A", Value: "two", Index: 2}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: two\r\nX-A: 3\r\n\r\nbody\r\n.line\r\n"},
		{"delete last", []HeaderEdit{{Op: ChangeHeader, Name: "x-a", Index: -1}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\n\r\nbody\r\n.line\r\n"},
		{"delete all", []HeaderEdit{{Op: ChangeHeader, Name: "X-A"}},
			"Received: r1\r\nSubject: s\r\n\r\nbody\r\n.line\r\n"},
		{"change missing adds", []HeaderEdit{{Op: ChangeHeader, Name: "X-B", Value: "b", Index: 1}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\nX-B: b\r\n\r\nbody\r\n.line\r\n"},
		{"delete missing", []HeaderEdit{{Op: ChangeHeader, Name: "X-B", Index: 4}}, msg},
		{"folded value, LF", []HeaderEdit{{Op: AddHeader, Name: "X-F", Value: "a;\n\tb"}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\nX-F: a;\r\n\tb\r\n\r\nbody\r\n.line\r\n"},
		{"value with its own space", []HeaderEdit{{Op: AddHeader, Name: "X-S", Value: " v"}},
			"Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\nX-S: v\r\n\r\nbody\r\n.line\r\n"},
		{"in order", []HeaderEdit{{Op: ChangeHeader, Name: "X-A"}, {Op: AddHeader, Name: "X-A", Value: "only"}},
			"Received: r1\r\nSubject: s\r\nX-A: only\r\n\r\nbody\r\n.line\r\n"},
	} {
		var b strings.Builder
		if err := EditHeader(&b, strings.NewReader(msg), tc.edits, nil); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if b.String() != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, b.String(), tc.want)
		}
	}
	var b strings.Builder
	if err := EditHeader(&b, strings.NewReader(msg), nil, strings.NewReader("new\r\n")); err != nil || b.String() != "Received: r1\r\nX-A: 1\r\nSubject: s\r\nx-a: 2\r\nX-A: 3\r\n\r\nnew\r\n" {
		t.Errorf("new body: %q %v", b.String(), err)
	}
	// A header that ends at a malformed line keeps that line in the body.
	b.Reset()
	if err := EditHeader(&b, strings.NewReader("A: 1\r\nnot a field\r\nB: 2\r\n\r\nx\r\n"), []HeaderEdit{{Op: AddHeader, Name: "C", Value: "3"}}, nil); err != nil ||
		b.String() != "A: 1\r\nC: 3\r\n\r\nnot a field\r\nB: 2\r\n\r\nx\r\n" {
		t.Errorf("malformed: %q %v", b.String(), err)
	}
}

// TestCheckEdits refuses what would inject text into the message or
// break it: an engine's answer is untrusted.
func TestCheckEdits(t *testing.T) {
	for _, e := range []HeaderEdit{
		{Op: AddHeader, Name: "X-A", Value: "v\r\n\r\ninjected body"},
		{Op: AddHeader, Name: "X-A", Value: "v\r\nBcc: evil@example.test"},
		{Op: AddHeader, Name: "X-A", Value: "v\rw"},
		{Op: AddHeader, Name: "X-A", Value: "v\x00"},
		{Op: AddHeader, Name: "X-A", Value: "v\n \n"},
		{Op: AddHeader, Name: "X A", Value: "v"},
		{Op: AddHeader, Name: "X:A", Value: "v"},
		{Op: AddHeader, Name: "", Value: "v"},
		{Op: InsertHeader, Name: "X-A", Value: "v", Index: -1},
		{Op: EditOp(7), Name: "X-A", Value: "v"},
		{Op: AddHeader, Name: "X-A", Value: strings.Repeat("x", 65<<10)},
	} {
		if err := CheckEdits([]HeaderEdit{e}); !errors.Is(err, ErrBadEdit) {
			t.Errorf("%#v: %v, want ErrBadEdit", e, err)
		}
	}
	if err := CheckEdits(make([]HeaderEdit, 1001)); !errors.Is(err, ErrBadEdit) {
		t.Errorf("1001 edits: %v", err)
	}
	if err := CheckEdits([]HeaderEdit{{Op: AddHeader, Name: "X-A", Value: "a\r\n\tb\n c"}, {Op: ChangeHeader, Name: "X-B"}}); err != nil {
		t.Errorf("valid edits: %v", err)
	}
}

// TestEditsChange: deleting absent fields changes nothing; anything
// else that touches the header does.
func TestEditsChange(t *testing.T) {
	const msg = "Received: r1\r\nX-A: 1\r\n\r\nbody\r\n"
	for _, tc := range []struct {
		edits []HeaderEdit
		want  bool
	}{
		{[]HeaderEdit{{Op: ChangeHeader, Name: "X-Spam"}, {Op: ChangeHeader, Name: "X-Spam-Score", Index: 2}}, false},
		{[]HeaderEdit{{Op: ChangeHeader, Name: "x-a"}}, true},
		{[]HeaderEdit{{Op: ChangeHeader, Name: "X-A", Value: "1", Index: 1}}, false},
		{[]HeaderEdit{{Op: ChangeHeader, Name: "X-A", Value: "2", Index: 1}}, true},
		{[]HeaderEdit{{Op: AddHeader, Name: "X-B", Value: "b"}}, true},
		{nil, false},
	} {
		got, err := EditsChange(strings.NewReader(msg), tc.edits)
		if err != nil || got != tc.want {
			t.Errorf("%+v: %v %v, want %v", tc.edits, got, err, tc.want)
		}
	}
}
