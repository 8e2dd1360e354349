// Package spool is the durable message store of caddy-smtp: every message
// the gateway acknowledges is a record here before its 250 is sent.
//
// A record is one file in one directory, named by the queue id:
//
//	ID.rec   the message as received (our Received: header first), then
//	         the envelope as accepted (sender, recipients, client facts)
//	         in JSON, then a fixed-size trailer giving both lengths.
//	         Written once, never changed.
//	ID.json  a newer envelope (delivery state), written only once the
//	         queue has something to record about the message: it
//	         overrides the one in ID.rec; replaced atomically.
//
// The rename of ID.rec into place is the commit point: a record either
// exists whole or not at all, and ID.rec decides whether it exists. One
// file per accepted message (rather than a message file and an envelope
// file) halves the files created, fsynced and renamed before the 250
// (see the README's Performance section); a message delivered at the
// first attempt never gets an ID.json.
//
// Temp files and an ID.json left without its ID.rec are debris from a
// crash and are removed when the spool is opened. Records of the
// earlier two-file layout (ID.eml and ID.json) are converted at Open.
package spool

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	recordExt   = ".rec"
	envelopeExt = ".json"
	tempPrefix  = ".tmp-"

	// legacyDataExt is the message file of the two-file layout that
	// Open converts.
	legacyDataExt = ".eml"

	// debrisAge is how old an orphaned file must be before Open removes
	// it; a younger one may belong to a writer in another app instance
	// (the old config during a reload) that is about to commit it.
	debrisAge = time.Hour

	// trailerMagic starts the trailer of a record file; the trailer is
	// "\n" + trailerMagic + " " + 16 hex digits of the message length +
	// " " + 16 hex digits of the envelope length + "\n".
	trailerMagic       = "caddy-smtp-record-v1"
	trailerLen   int64 = 1 + int64(len(trailerMagic)) + 1 + 16 + 1 + 16 + 1
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

	// dirSync shares the directory's fsyncs among concurrent commits.
	dirSync *groupSync
}

// Open prepares dir (creating it with mode 0700 if needed), checks that
// records can be written there, converts records of the two-file
// layout, and removes debris of earlier crashes.
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
	s := &Spool{dir: dir, recordsLock: lock, dirSync: new(groupSync)}
	if err := s.convertLegacy(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.removeDebris(time.Now().Add(-debrisAge)); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the spool's files. Drafts of sessions that outlive a
// config reload may still be committed afterwards.
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

// syncDir fsyncs the spool directory, so that the renames and unlinks
// in it are durable.
func (s *Spool) syncDir() error {
	if s.dirSync == nil { // a Spool made by Peek or ListIDs
		return syncDir(s.dir)
	}
	return s.dirSync.sync(func() error { return syncDir(s.dir) })
}

// removeDebris removes, once older than olderThan, temp files and files
// that belong to no record: an envelope without its record file (a
// crash during Remove), a legacy message file without an envelope.
func (s *Spool) removeDebris(olderThan time.Time) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("reading spool directory: %w", err)
	}
	records := make(map[string]bool)
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), recordExt); ok && !strings.HasPrefix(id, tempPrefix) {
			records[id] = true
		}
	}
	for _, e := range entries {
		name := e.Name()
		orphan := strings.HasPrefix(name, tempPrefix)
		for _, ext := range []string{envelopeExt, legacyDataExt} {
			if id, ok := strings.CutSuffix(name, ext); ok && !orphan {
				orphan = !records[id]
			}
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

// convertLegacy turns each record of the two-file layout (ID.eml and
// ID.json, no ID.rec) into an ID.rec; its ID.json stays as the newer
// envelope, so no delivery state is lost, and ID.eml goes once ID.rec
// is durable. A crash half-way leaves either the old record or both,
// and the next Open finishes the job.
func (s *Spool) convertLegacy() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("reading spool directory: %w", err)
	}
	names := make(map[string]bool, len(entries))
	for _, e := range entries {
		names[e.Name()] = true
	}
	for name := range names {
		id, ok := strings.CutSuffix(name, legacyDataExt)
		if !ok || !validID(id) || !names[id+envelopeExt] {
			continue
		}
		if names[id+recordExt] {
			// Converted before a crash that kept the unlink below.
			os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if err := s.convertOne(id); err != nil {
			return fmt.Errorf("converting record %s to the one-file layout: %w", id, err)
		}
	}
	return nil
}

func (s *Spool) convertOne(id string) error {
	data, err := os.ReadFile(s.envelopePath(id))
	if err != nil {
		return err
	}
	env, err := DecodeEnvelope(data)
	if err != nil {
		return err
	}
	msg, err := os.Open(filepath.Join(s.dir, id+legacyDataExt))
	if err != nil {
		return err
	}
	defer msg.Close()
	// A conversion cut short by a crash left its temp file; the id is
	// the legacy record's, so no other writer uses that name.
	os.Remove(filepath.Join(s.dir, tempPrefix+id+recordExt))
	d, err := s.create(id)
	if err != nil {
		return err
	}
	defer d.Abort()
	if _, err := io.Copy(d, msg); err != nil {
		return err
	}
	size := env.Size
	if err := d.Commit(env); err != nil {
		return err
	}
	if env.Size != size {
		return fmt.Errorf("message is %d bytes, envelope says %d", env.Size, size)
	}
	if err := os.Remove(filepath.Join(s.dir, id+legacyDataExt)); err != nil {
		return err
	}
	return s.syncDir()
}

// newID returns a new queue id: the time in milliseconds and 32 random
// bits, in upper-case hex like Postfix's, so ids sort by arrival.
func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%011X%08X", time.Now().UnixMilli(), binary.BigEndian.Uint32(b[:]))
}

// IDTime is when a record with this queue id was created (newID puts
// the millisecond first), for counts and ages that need no envelope;
// false for an id of another form.
func IDTime(id string) (time.Time, bool) {
	if len(id) < 11 {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(id[:11], 16, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
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

func (s *Spool) recordPath(id string) string   { return filepath.Join(s.dir, id+recordExt) }
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

	rewrites int // temp files made by Rewrite, for their names
}

// Create starts a new record with a fresh queue id.
func (s *Spool) Create() (*Draft, error) {
	return s.create(newID())
}

func (s *Spool) create(id string) (*Draft, error) {
	// The id is unique (milliseconds and 32 random bits), so the temp
	// name needs no random part of its own: O_EXCL catches the
	// impossible.
	f, err := os.OpenFile(filepath.Join(s.dir, tempPrefix+id+recordExt), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating record file: %w", err)
	}
	return &Draft{spool: s, id: id, file: f, buf: bufio.NewWriterSize(f, 64<<10)}, nil
}

// ID returns the queue id the record will have.
func (d *Draft) ID() string { return d.id }

// Size returns the number of message bytes written so far.
func (d *Draft) Size() int64 { return d.size }

// Flush writes out what is buffered, so that Reader sees it all. Only
// the writer of the draft may call it.
func (d *Draft) Flush() error {
	if err := d.buf.Flush(); err != nil {
		return fmt.Errorf("writing record file: %w", err)
	}
	return nil
}

// Reader returns the message as written up to the last Flush, from its
// first byte; safe to use from other goroutines, also while the draft
// is committed (it reads with pread, within the size it had).
func (d *Draft) Reader() io.Reader {
	return io.NewSectionReader(d.file, 0, d.size)
}

// ReaderAt returns the message as written up to the last Flush, as a
// ReaderAt and its size, fixed at the call: a later Rewrite does not
// change what it reads (it gets an error once the old file is closed).
func (d *Draft) ReaderAt() (io.ReaderAt, int64) { return d.file, d.size }

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

// Rewrite replaces the message written so far with what fn writes,
// given the message as it is: a content check's header changes. The
// new text goes to a new temp file, which takes the old one's place
// only when fn succeeds; on failure the draft is as it was. A reader
// from Reader before the call keeps reading the old text until the old
// file is closed here, then gets an error.
func (d *Draft) Rewrite(fn func(w io.Writer, old io.Reader) error) error {
	if d.done {
		return errors.New("spool: draft already finished")
	}
	if err := d.Flush(); err != nil {
		return err
	}
	d.rewrites++
	name := filepath.Join(d.spool.dir, fmt.Sprintf("%s%s-%d%s", tempPrefix, d.id, d.rewrites, recordExt))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating record file: %w", err)
	}
	nd := &Draft{file: f, buf: bufio.NewWriterSize(f, 64<<10)}
	err = fn(nd, d.Reader())
	if err == nil {
		// Flushed before the swap: Reader must see the new text whole.
		err = nd.Flush()
	}
	if err != nil {
		f.Close()
		os.Remove(name)
		return err
	}
	old := d.file
	d.file, d.buf, d.size = f, nd.buf, nd.size
	old.Close()
	os.Remove(old.Name())
	return nil
}

// Commit makes the record durable: the envelope and the trailer are
// appended to the message, the file is flushed, fsynced and renamed
// into place, and the directory is fsynced. Only after Commit returns
// nil may the server acknowledge the message. env.ID and env.Size are
// set by Commit.
func (d *Draft) Commit(env *Envelope) error {
	return d.CommitTo(d.spool, env)
}

// CommitTo commits the record, as Commit does, into another spool on
// the same file system (a subdirectory of the draft's: the quarantine).
func (d *Draft) CommitTo(s *Spool, env *Envelope) error {
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
	env.ID = d.id
	env.Size = d.size
	if env.Version == 0 {
		env.Version = EnvelopeVersion
	}
	data, err := json.Marshal(env)
	if err != nil {
		return fail(fmt.Errorf("encoding envelope: %w", err))
	}
	d.buf.Write(data)
	fmt.Fprintf(d.buf, "\n%s %016x %016x\n", trailerMagic, d.size, len(data))
	if err := d.buf.Flush(); err != nil {
		return fail(fmt.Errorf("writing record file: %w", err))
	}
	if err := d.file.Sync(); err != nil {
		return fail(fmt.Errorf("syncing record file: %w", err))
	}
	if err := d.file.Close(); err != nil {
		return fail(fmt.Errorf("closing record file: %w", err))
	}
	if err := os.Rename(tmpName, s.recordPath(d.id)); err != nil {
		os.Remove(tmpName)
		return fmt.Errorf("renaming record file: %w", err)
	}
	if err := s.syncDir(); err != nil {
		// The rename may or may not survive a crash: the message must
		// not be acknowledged, and must not be delivered either.
		os.Remove(s.recordPath(d.id))
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

// IDs lists the queue ids of all committed records, oldest first.
func (s *Spool) IDs() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("reading spool directory: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), recordExt); ok && validID(id) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// layout is where the parts of a record file are.
type layout struct {
	msgLen, envLen int64
}

// readLayout reads and checks the trailer of a record file.
func readLayout(f *os.File) (layout, error) {
	info, err := f.Stat()
	if err != nil {
		return layout{}, err
	}
	size := info.Size()
	if size < trailerLen {
		return layout{}, errors.New("record file too short for its trailer")
	}
	var t [trailerLen]byte
	if _, err := f.ReadAt(t[:], size-trailerLen); err != nil {
		return layout{}, fmt.Errorf("reading trailer: %w", err)
	}
	fields := strings.Fields(string(t[:]))
	if t[0] != '\n' || t[trailerLen-1] != '\n' || len(fields) != 3 || fields[0] != trailerMagic {
		return layout{}, errors.New("record file has no valid trailer")
	}
	msgLen, err1 := strconv.ParseInt(fields[1], 16, 64)
	envLen, err2 := strconv.ParseInt(fields[2], 16, 64)
	if err1 != nil || err2 != nil || msgLen < 0 || envLen <= 0 || msgLen+envLen+trailerLen != size {
		return layout{}, errors.New("record file trailer does not match its size")
	}
	return layout{msgLen: msgLen, envLen: envLen}, nil
}

// Load reads the envelope of a record: the newer one (ID.json) if the
// queue has written one, else the one the record was accepted with.
// Outside Modify it is a snapshot: racing a removal it may return the
// envelope the record was accepted with, for a record that is gone;
// whatever acts on a record does so through Modify, under the lock.
func (s *Spool) Load(id string) (*Envelope, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	f, err := os.Open(s.recordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("opening record %s: %w", id, err)
	}
	defer f.Close()
	data, err := os.ReadFile(s.envelopePath(id))
	switch {
	case err == nil:
		return DecodeEnvelope(data)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading envelope %s: %w", id, err)
	}
	l, err := readLayout(f)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", id, err)
	}
	if l.envLen > maxEnvelopeSize {
		return nil, fmt.Errorf("record %s: envelope of %d bytes", id, l.envLen)
	}
	data = make([]byte, l.envLen)
	if _, err := f.ReadAt(data, l.msgLen); err != nil {
		return nil, fmt.Errorf("record %s: reading envelope: %w", id, err)
	}
	return DecodeEnvelope(data)
}

// maxEnvelopeSize bounds what Load reads as an envelope: far above the
// largest a server with max_recipients in the thousands writes.
const maxEnvelopeSize = 64 << 20

// Message is the stored message of a record, from its first byte to its
// last (the envelope after it is not part of it).
type Message struct {
	*io.SectionReader
	f *os.File
}

// Close closes the record file.
func (m *Message) Close() error { return m.f.Close() }

// OpenMessage opens the message of a record for reading.
func (s *Spool) OpenMessage(id string) (*Message, error) {
	if !validID(id) {
		return nil, ErrNotFound
	}
	f, err := os.Open(s.recordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("opening record %s: %w", id, err)
	}
	l, err := readLayout(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("record %s: %w", id, err)
	}
	return &Message{SectionReader: io.NewSectionReader(f, 0, l.msgLen), f: f}, nil
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

// MoveTo moves a record into another spool on the same file system
// (out of the quarantine), under both spools' records locks, letting fn
// change its envelope on the way. The new envelope is written first,
// durably, beside where the record goes, then the record file is
// renamed: a crash in between leaves the record where it was, and an
// envelope without a record in dst, which is debris.
func (s *Spool) MoveTo(id string, dst *Spool, fn func(env *Envelope) error) error {
	if !validID(id) {
		return ErrNotFound
	}
	defer s.lockRecords()()
	defer dst.lockRecords()()
	env, err := s.Load(id)
	if err != nil {
		return err
	}
	if err := fn(env); err != nil {
		return err
	}
	if err := dst.writeEnvelope(env); err != nil {
		return err
	}
	if err := os.Rename(s.recordPath(id), dst.recordPath(id)); err != nil {
		os.Remove(dst.envelopePath(id))
		return fmt.Errorf("moving record %s: %w", id, err)
	}
	if err := dst.syncDir(); err != nil {
		return err
	}
	if err := s.syncDir(); err != nil {
		return err
	}
	if err := os.Remove(s.envelopePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing envelope %s: %w", id, err)
	}
	return nil
}

// Remove deletes a record: the record file first, durably, then its
// newer envelope if it has one, so that a crash half-way leaves only an
// envelope without a record, which is debris, and never a record with
// an older envelope than the one written last.
func (s *Spool) Remove(id string) error {
	if !validID(id) {
		return ErrNotFound
	}
	defer s.lockRecords()()
	return s.removeLocked(id)
}

func (s *Spool) removeLocked(id string) error {
	_, err := os.Lstat(s.envelopePath(id))
	hasEnvelope := err == nil
	if err := os.Remove(s.recordPath(id)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		return fmt.Errorf("removing record %s: %w", id, err)
	}
	if err := s.syncDir(); err != nil {
		return err
	}
	if hasEnvelope {
		// Only now that the record file's removal is on disk: a file
		// system may write two unlinks in either order (ext4 without a
		// journal does), and a crash must never bring the record back
		// with the envelope it was accepted with. A newer envelope left
		// by a crash here is debris (removeDebris).
		if err := os.Remove(s.envelopePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing envelope %s: %w", id, err)
		}
	}
	return nil
}

// Peek reads a record of the spool in dir without opening the spool,
// for tools and tests: its current envelope and its message.
func Peek(dir, id string) (*Envelope, []byte, error) {
	s := &Spool{dir: dir}
	env, err := s.Load(id)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.OpenMessage(id)
	if err != nil {
		return nil, nil, err
	}
	defer m.Close()
	msg, err := io.ReadAll(m)
	if err != nil {
		return nil, nil, fmt.Errorf("reading message %s: %w", id, err)
	}
	return env, msg, nil
}

// ListIDs lists the queue ids of the records in the spool in dir
// without opening the spool, for tools and tests.
func ListIDs(dir string) ([]string, error) {
	return (&Spool{dir: dir}).IDs()
}
