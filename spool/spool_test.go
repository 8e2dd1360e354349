package spool

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testEnvelope() *Envelope {
	return &Envelope{
		Server:     "mx",
		From:       "a@remote.test",
		Recipients: []*Recipient{{Address: "b@example.test", Status: StatusQueued}},
		Client:     Client{IP: "192.0.2.1", Helo: "client.test", Protocol: "ESMTPS", TLS: &TLSInfo{Version: "TLS 1.3", Cipher: "TLS_AES_128_GCM_SHA256"}},
		Received:   time.Now().UTC().Truncate(time.Second),
	}
}

func TestCommitLoadUpdateRemove(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Create()
	if err != nil {
		t.Fatal(err)
	}
	// Until Commit, the record does not exist.
	if ids, _ := s.IDs(); len(ids) != 0 {
		t.Fatalf("draft visible before commit: %v", ids)
	}
	io.WriteString(d, "Subject: x\r\n\r\nbody\r\n")
	env := testEnvelope()
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	if env.ID != d.ID() || env.Size != int64(len("Subject: x\r\n\r\nbody\r\n")) {
		t.Fatalf("commit did not fill id/size: %+v", env)
	}
	ids, _ := s.IDs()
	if len(ids) != 1 || ids[0] != env.ID {
		t.Fatalf("IDs: %v", ids)
	}
	got, err := s.Load(env.ID)
	if err != nil || got.From != env.From || got.Client.TLS.Version != "TLS 1.3" || !got.Received.Equal(env.Received) {
		t.Fatalf("Load: %+v %v", got, err)
	}
	f, err := s.OpenMessage(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(f)
	f.Close()
	if string(body) != "Subject: x\r\n\r\nbody\r\n" {
		t.Fatalf("message: %q", body)
	}
	if err := s.Modify(env.ID, func(e *Envelope) (bool, error) {
		e.Recipients[0].Status = StatusDeferred
		e.Recipients[0].Attempts = 1
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	again, _ := s.Load(env.ID)
	if again.Recipients[0].Status != StatusDeferred || again.Recipients[0].Attempts != 1 {
		t.Fatalf("update lost: %+v", again.Recipients[0])
	}
	if err := s.Remove(env.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(env.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load after Remove: %v", err)
	}
	if err := s.Modify(env.ID, func(*Envelope) (bool, error) { return false, nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Modify after Remove resurrected the record: %v", err)
	}
	if entries := records(t, s.Dir()); len(entries) != 0 {
		t.Fatalf("files left after Remove: %v", entries)
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	s, _ := Open(t.TempDir())
	d, _ := s.Create()
	io.WriteString(d, "data")
	d.Abort()
	if entries := records(t, s.Dir()); len(entries) != 0 {
		t.Fatalf("files left after Abort: %v", entries)
	}
}

// TestDebrisRemoved: what a crash before the commit point leaves (a
// temp file), or during a removal (an envelope without its record), or
// the two-file layout's message without envelope, is cleaned up at
// Open once old enough, and never listed as a record.
func TestDebrisRemoved(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	d, _ := s.Create()
	io.WriteString(d, "x")
	d.Commit(testEnvelope())
	old := time.Now().Add(-2 * debrisAge)
	for _, name := range []string{".tmp-ABC.rec", "0000000000000000000.json", "0000000000000000001.eml", ".tmp-DEF.json-9"} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("debris"), 0o600)
		os.Chtimes(p, old, old)
	}
	young := filepath.Join(dir, ".tmp-1111111111111111111.rec") // a writer in flight
	os.WriteFile(young, []byte("in flight"), 0o600)
	if ids, _ := s.IDs(); len(ids) != 1 {
		t.Fatalf("debris listed as records: %v", ids)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	names := records(t, dir)
	if len(names) != 2 || !strings.Contains(strings.Join(names, " "), ".tmp-1111111111111111111.rec") {
		t.Fatalf("after Open: %v", names)
	}
}

// TestOneFile: a record accepted and delivered at once is one file
// from its commit to its removal; the first update adds the envelope
// file, which Load prefers and Remove takes along.
func TestOneFile(t *testing.T) {
	s, env := commitOne(t, "Subject: x\r\n\r\nbody\r\n")
	if names := records(t, s.Dir()); len(names) != 1 || names[0] != env.ID+".rec" {
		t.Fatalf("after Commit: %v", names)
	}
	if err := s.Modify(env.ID, func(e *Envelope) (bool, error) {
		e.Recipients[0].Status = StatusDeferred
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	if names := records(t, s.Dir()); len(names) != 2 {
		t.Fatalf("after Modify: %v", names)
	}
	got, err := s.Load(env.ID)
	if err != nil || got.Recipients[0].Status != StatusDeferred {
		t.Fatalf("Load after Update: %+v %v", got, err)
	}
	m, _ := s.OpenMessage(env.ID)
	body, _ := io.ReadAll(m)
	m.Close()
	if string(body) != "Subject: x\r\n\r\nbody\r\n" {
		t.Fatalf("message after Update: %q", body)
	}
	if err := s.Remove(env.ID); err != nil {
		t.Fatal(err)
	}
	if names := records(t, s.Dir()); len(names) != 0 {
		t.Fatalf("after Remove: %v", names)
	}
}

// TestCorruptRecord: a record file whose trailer does not add up is an
// error naming the record, never a message with part of its envelope.
func TestCorruptRecord(t *testing.T) {
	s, env := commitOne(t, "body\r\n")
	path := filepath.Join(s.Dir(), env.ID+".rec")
	data, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"truncated":    data[:len(data)-1],
		"extended":     append(append([]byte{}, data...), 'x'),
		"short":        []byte("x"),
		"wrong-length": []byte(strings.Replace(string(data), "caddy-smtp-record-v1 0000000000000006", "caddy-smtp-record-v1 0000000000000005", 1)),
	} {
		os.WriteFile(path, bad, 0o600)
		if _, err := s.Load(env.ID); err == nil || !strings.Contains(err.Error(), env.ID) {
			t.Errorf("%s: Load: %v", name, err)
		}
		if _, err := s.OpenMessage(env.ID); err == nil {
			t.Errorf("%s: OpenMessage succeeded", name)
		}
	}
}

// TestLegacyConverted: a record of the two-file layout (ID.eml and
// ID.json, as written before the one-file layout) is converted at Open
// with its delivery state, and nothing is left of the old files but the
// envelope, which stays the newer one.
func TestLegacyConverted(t *testing.T) {
	dir := t.TempDir()
	env := testEnvelope()
	env.ID, env.Version, env.Size = "1A21C9A91BFF0E40124", EnvelopeVersion, 6
	env.Recipients[0].Status, env.Recipients[0].Attempts = StatusDeferred, 3
	data, _ := json.Marshal(env)
	os.WriteFile(filepath.Join(dir, env.ID+".json"), data, 0o600)
	os.WriteFile(filepath.Join(dir, env.ID+".eml"), []byte("body\r\n"), 0o600)
	// A conversion of it cut short by a crash.
	os.WriteFile(filepath.Join(dir, ".tmp-"+env.ID+".rec"), []byte("body"), 0o600)
	// A half-converted one: its record file exists already.
	env2 := *env
	env2.ID = "1A21C9A91BFF0E40125"
	s0, _ := Open(t.TempDir())
	d, _ := s0.create(env2.ID)
	io.WriteString(d, "two\r\n")
	d.Commit(&env2)
	rec, _ := os.ReadFile(filepath.Join(s0.Dir(), env2.ID+".rec"))
	os.WriteFile(filepath.Join(dir, env2.ID+".rec"), rec, 0o600)
	os.WriteFile(filepath.Join(dir, env2.ID+".eml"), []byte("two\r\n"), 0o600)
	os.WriteFile(filepath.Join(dir, env2.ID+".json"), rec[5:len(rec)-int(trailerLen)], 0o600)

	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := records(t, dir)
	if strings.Contains(strings.Join(names, " "), ".eml") || len(names) != 4 {
		t.Fatalf("after Open: %v", names)
	}
	for id, body := range map[string]string{env.ID: "body\r\n", env2.ID: "two\r\n"} {
		got, err := s.Load(id)
		if err != nil || got.Recipients[0].Attempts != 3 {
			t.Fatalf("Load %s: %+v %v", id, got, err)
		}
		m, err := s.OpenMessage(id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(m)
		m.Close()
		if string(b) != body {
			t.Fatalf("message %s: %q", id, b)
		}
	}
}

func TestOpenUnwritable(t *testing.T) {
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o600)
	if _, err := Open(filepath.Join(blocker, "queue")); err == nil {
		t.Fatal("Open under a file succeeded")
	}
}

func TestDecodeEnvelopeRejects(t *testing.T) {
	for _, bad := range []string{
		``, `{}`, `{"version":2,"id":"A","recipients":[{"address":"x"}]}`,
		`{"version":1,"id":"../etc","recipients":[{"address":"x"}]}`,
		`{"version":1,"id":"A","recipients":[]}`, `not json`,
		`{"version":1,"id":"A","recipients":[null]}`, // found by FuzzDecodeEnvelope
		`{"version":1,"id":"A","recipients":[{"address":""}]}`,
	} {
		if _, err := DecodeEnvelope([]byte(bad)); err == nil {
			t.Errorf("DecodeEnvelope(%q) accepted", bad)
		}
	}
	for _, id := range []string{"", "../x", "a/b", "a.json", strings.Repeat("A", 65)} {
		if validID(id) {
			t.Errorf("validID(%q)", id)
		}
	}
}

func TestIDsSortByTime(t *testing.T) {
	a := newID()
	time.Sleep(2 * time.Millisecond) // a sleep: ids sort by their millisecond, so let the clock move on
	b := newID()
	if !(a < b) || !validID(a) {
		t.Fatalf("ids %s %s", a, b)
	}
}

// commitOne opens a spool in a temp directory and commits one record
// with the given message.
func commitOne(t *testing.T, message string) (*Spool, *Envelope) {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, message)
	env := testEnvelope()
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	return s, env
}

// records lists the files of a spool directory but its lock files.
func records(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			names = append(names, e.Name())
		}
	}
	return names
}
