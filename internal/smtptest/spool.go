package smtptest

import (
	"encoding/json"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// SpoolRecord reads a committed record of the env's spool: its current
// envelope as JSON (to unmarshal into whatever a test needs) and its
// message. It fails the test if the record is not there.
func (e *Env) SpoolRecord(id string) (envelope, message []byte) {
	e.t.Helper()
	return SpoolRecord(e.t, e.SpoolDir(), id)
}

// SpoolRecord reads a committed record of the spool in dir.
func SpoolRecord(t testing.TB, dir, id string) (envelope, message []byte) {
	t.Helper()
	env, msg, err := spool.Peek(dir, id)
	if err != nil {
		t.Fatalf("record %s: %v", id, err)
	}
	envelope, err = json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return envelope, msg
}

// SpoolIDs lists the committed records of the env's spool.
func (e *Env) SpoolIDs() []string {
	e.t.Helper()
	ids, err := spool.ListIDs(e.SpoolDir())
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}
