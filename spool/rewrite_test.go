package spool

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRewrite replaces a draft's message; a failed rewrite leaves it as
// it was; the committed record is the rewritten one, and no temp file
// is left.
func TestRewrite(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := s.Create()
	d.WriteString("Subject: old\r\n\r\nbody\r\n")
	d.Flush()
	before := d.Reader()
	if err := d.Rewrite(func(w io.Writer, old io.Reader) error {
		io.WriteString(w, "half")
		return errors.New("engine said no")
	}); err == nil {
		t.Fatal("a failed rewrite reported success")
	}
	if got, _ := io.ReadAll(d.Reader()); string(got) != "Subject: old\r\n\r\nbody\r\n" {
		t.Fatalf("after a failed rewrite: %q", got)
	}
	if err := d.Rewrite(func(w io.Writer, old io.Reader) error {
		b, _ := io.ReadAll(old)
		_, err := io.WriteString(w, "X-New: 1\r\n"+string(b))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(before); err == nil {
		t.Error("a reader of the old text still reads after the rewrite closed it")
	}
	want := "X-New: 1\r\nSubject: old\r\n\r\nbody\r\n"
	// Before any commit: the next check reads the new text whole.
	if got, _ := io.ReadAll(d.Reader()); string(got) != want {
		t.Fatalf("read after the rewrite: %q", got)
	}
	if d.Size() != int64(len(want)) {
		t.Errorf("size %d, want %d", d.Size(), len(want))
	}
	d.WriteString("more\r\n")
	want += "more\r\n"
	if err := d.Commit(&Envelope{From: "a@b.test", Recipients: []*Recipient{{Address: "c@d.test", Status: StatusQueued}}}); err != nil {
		t.Fatal(err)
	}
	env, msg, err := Peek(dir, d.ID())
	if err != nil || string(msg) != want || env.Size != int64(len(want)) {
		t.Fatalf("committed: %q size %v %v", msg, env, err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

// TestCommitToAndMoveTo: a draft committed into a second spool (the
// quarantine) is not in the first; moving it back carries the changed
// envelope, and leaves nothing behind.
func TestCommitToAndMoveTo(t *testing.T) {
	dir := t.TempDir()
	main, _ := Open(dir)
	q, err := Open(filepath.Join(dir, "quarantine"))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := main.Create()
	d.WriteString("Subject: x\r\n\r\nvirus\r\n")
	env := &Envelope{From: "a@b.test", Recipients: []*Recipient{{Address: "c@d.test", Status: StatusQueued}},
		Quarantine: &Quarantine{Check: "clamav", Reason: "Eicar"}}
	if err := d.CommitTo(q, env); err != nil {
		t.Fatal(err)
	}
	if ids, _ := main.IDs(); len(ids) != 0 {
		t.Fatalf("the main spool has %v", ids)
	}
	if ids, _ := q.IDs(); len(ids) != 1 || ids[0] != env.ID {
		t.Fatalf("the quarantine has %v", ids)
	}
	if err := q.MoveTo(env.ID, main, func(e *Envelope) error { e.Quarantine = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	if ids, _ := q.IDs(); len(ids) != 0 {
		t.Fatalf("the quarantine still has %v", ids)
	}
	got, msg, err := Peek(dir, env.ID)
	if err != nil || got.Quarantine != nil || string(msg) != "Subject: x\r\n\r\nvirus\r\n" {
		t.Fatalf("moved: %+v %q %v", got, msg, err)
	}
	if err := q.MoveTo(env.ID, main, func(*Envelope) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("moving a record that is gone: %v", err)
	}
}
