// Package spool is the durable message store of caddy-smtp: every message
// the gateway acknowledges is a record here before its 250 is sent.
//
// A record is two files in one directory, named by the queue id:
//
//	ID.eml   the message as received, with our Received: header first;
//	         written once, never changed.
//	ID.json  the envelope (sender, recipients and their delivery state,
//	         client facts); replaced atomically on every update.
//
// The envelope file is the commit point: it is written last, after the
// message file is on disk, so a record either exists whole or not at all.
// A message file without an envelope is debris from a crash before the
// 250 and is removed when the spool is opened.
package spool

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	dataExt     = ".eml"
	envelopeExt = ".json"
	tempPrefix  = ".tmp-"

	// debrisAge is how old an orphaned file must be before Open removes
	// it; a younger one may belong to a writer in another app instance
	// (the old config during a reload) that is about to commit it.
	debrisAge = time.Hour
)

// ErrNotFound is returned for a queue id with no record.
var ErrNotFound = errors.New("spool: no such record")

// Spool is a directory of durable message records. It is safe for
// concurrent use, also by several Spool values on the same directory.
type Spool struct {
	dir string

	// Updates and removals of records are serialized, in this process
	// by mu and across processes (or the two app instances of a config
	// reload) by a flock on recordsLock, so that an update never brings
	// back a record that was just removed.
	mu          sync.Mutex
	recordsLock *os.File
}

// Open prepares dir (creating it with mode 0700 if needed), checks that
// records can be written there, and removes debris of earlier crashes.
func Open(dir string) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating spool directory: %w", err)
	}
	probe, err := os.CreateTemp(dir, tempPrefix+"probe-*")
	if err != nil {
		return nil, fmt.Errorf("spool directory %s is not writable: %w", dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	lock, err := os.OpenFile(filepath.Join(dir, ".records.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening spool records lock: %w", err)
	}
	s := &Spool{dir: dir, recordsLock: lock}
	if err := s.removeDebris(time.Now().Add(-debrisAge)); err != nil {
		return nil, err
	}
	return s, nil
}

// Close releases the spool's files.
func (s *Spool) Close() error { return s.recordsLock.Close() }

// lockRecords takes the records lock for one update or removal.
func (s *Spool) lockRecords() (unlock func()) {
	s.mu.Lock()
	syscall.Flock(int(s.recordsLock.Fd()), syscall.LOCK_EX)
	return func() {
		syscall.Flock(int(s.recordsLock.Fd()), syscall.LOCK_UN)
		s.mu.Unlock()
	}
}

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.dir }

func (s *Spool) removeDebris(olderThan time.Time) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("reading spool directory: %w", err)
	}
	envelopes := make(map[string]bool)
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), envelopeExt); ok && !strings.HasPrefix(id, tempPrefix) {
			envelopes[id] = true
		}
	}
	for _, e := range entries {
		name := e.Name()
		orphan := strings.HasPrefix(name, tempPrefix)
		if id, ok := strings.CutSuffix(name, dataExt); ok && !orphan {
			orphan = !envelopes[id]
		}
		if !orphan {
			continue
		}
		info, err := e.Info()
		if err != nil || info.ModTime().After(olderThan) {
			continue
		}
		os.Remove(filepath.Join(s.dir, name))
	}
	return nil
}

// NewID returns a new queue id: the time in milliseconds and 32 random
// bits, in upper-case hex like Postfix's, so ids sort by arrival.
func NewID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%011X%08X", time.Now().UnixMilli(), binary.BigEndian.Uint32(b[:]))
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *Spool) dataPath(id string) string     { return filepath.Join(s.dir, id+dataExt) }
func (s *Spool) envelopePath(id string) string { return filepath.Join(s.dir, id+envelopeExt) }

// Draft is a record being received. Write the message into it, then
// Commit it with its envelope, or Abort it.
type Draft struct {
	spool *Spool
	id    string
	file  *os.File
	buf   *bufio.Writer
	size  int64
	done  bool
}

// Create starts a new record with a fresh queue id.
func (s *Spool) Create() (*Draft, error) {
	id := NewID()
	f, err := os.CreateTemp(s.dir, tempPrefix+id+dataExt+"-*")
	if err != nil {
		return nil, fmt.Errorf("creating message file: %w", err)
	}
	return &Draft{spool: s, id: id, file: f, buf: bufio.NewWriterSize(f, 64<<10)}, nil
}

// ID returns the queue id the record will have.
func (d *Draft) ID() string { return d.id }

// Size returns the number of message bytes written so far.
func (d *Draft) Size() int64 { return d.size }

// Write appends message bytes.
func (d *Draft) Write(p []byte) (int, error) {
	n, err := d.buf.Write(p)
	d.size += int64(n)
	return n, err
}

// WriteString appends message bytes.
func (d *Draft) WriteString(s string) (int, error) {
	n, err := d.buf.WriteString(s)
	d.size += int64(n)
	return n, err
}

// Commit makes the record durable: the message file is flushed, fsynced
// and renamed into place, then the envelope is written the same way and
// the directory is fsynced. Only after Commit returns nil may the server
// acknowledge the message. env.ID and env.Size are set by Commit.
func (d *Draft) Commit(env *Envelope) error {
	if d.done {
		return errors.New("spool: draft already finished")
	}
	d.done = true
	tmpName := d.file.Name()
	fail := func(err error) error {
		d.file.Close()
		os.Remove(tmpName)
		return err
	}
	if err := d.buf.Flush(); err != nil {
		return fail(fmt.Errorf("writing message file: %w", err))
	}
	if err := d.file.Sync(); err != nil {
		return fail(fmt.Errorf("syncing message file: %w", err))
	}
	if err := d.file.Close(); err != nil {
		return fail(fmt.Errorf("closing message file: %w", err))
	}
	if err := os.Rename(tmpName, d.spool.dataPath(d.id)); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("renaming message file: %w", err)
	}
	env.ID = d.id
	env.Size = d.size
	if env.Version == 0 {
		env.Version = EnvelopeVersion
	}
	// writeFileDurably fsyncs the directory after the envelope's rename,
	// which also makes the message file's rename above durable.
	if err := d.spool.writeEnvelope(env); err != nil {
		os.Remove(d.spool.dataPath(d.id))
		return err
	}
	return nil
}

// Abort discards the draft.
func (d *Draft) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.file.Close()
	os.Remove(d.file.Name())
}

func (s *Spool) writeEnvelope(env *Envelope) error {
	data, err := json.Marshal(env)
	if err != nil {
		return fmt.Errorf("encoding envelope: %w", err)
	}
	if err := writeFileDurably(s.envelopePath(env.ID), data, 0o600); err != nil {
		return fmt.Errorf("writing envelope: %w", err)
	}
	return nil
}

// IDs lists the queue ids of all committed records, oldest first.
func (s *Spool) IDs() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("reading spool directory: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), envelopeExt); ok && validID(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Load reads the envelope of a record.
func (s *Spool) Load(id string) (*Envelope, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	data, err := os.ReadFile(s.envelopePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading envelope %s: %w", id, err)
	}
	return DecodeEnvelope(data)
}

// OpenMessage opens the message of a record for reading.
func (s *Spool) OpenMessage(id string) (*os.File, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	f, err := os.Open(s.dataPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	return f, err
}

// Update durably replaces the envelope of an existing record, for
// delivery state changes.
func (s *Spool) Update(env *Envelope) error {
	if !validID(env.ID) {
		return ErrNotFound
	}
	defer s.lockRecords()()
	if _, err := os.Stat(s.envelopePath(env.ID)); err != nil {
		return ErrNotFound
	}
	return s.writeEnvelope(env)
}

// ErrUnchanged, returned by a Modify function, leaves the record as it
// is; Modify then returns nil.
var ErrUnchanged = errors.New("spool: record unchanged")

// Modify reads a record's current envelope, lets fn change it, and
// writes it back (or, when fn says so, removes the record), all under
// the records lock: changes made meanwhile by others (the delivery
// runner, an administrator) are never overwritten with a stale copy,
// and a removed record is never brought back. It returns ErrNotFound
// for a record that is gone, and fn's error otherwise.
func (s *Spool) Modify(id string, fn func(env *Envelope) (remove bool, err error)) error {
	if !validID(id) {
		return ErrNotFound
	}
	defer s.lockRecords()()
	env, err := s.Load(id)
	if err != nil {
		return err
	}
	remove, err := fn(env)
	switch {
	case errors.Is(err, ErrUnchanged):
		return nil
	case err != nil:
		return err
	case remove:
		return s.removeLocked(id)
	}
	return s.writeEnvelope(env)
}

// Remove deletes a record: the envelope first, so that a crash half-way
// leaves only debris and never a record without its message.
func (s *Spool) Remove(id string) error {
	if !validID(id) {
		return ErrNotFound
	}
	defer s.lockRecords()()
	return s.removeLocked(id)
}

func (s *Spool) removeLocked(id string) error {
	if err := os.Remove(s.envelopePath(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return fmt.Errorf("removing envelope %s: %w", id, err)
	}
	if err := os.Remove(s.dataPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing message %s: %w", id, err)
	}
	return syncDir(s.dir)
}
