// Package maildir is the smtp.delivery.maildir module: final delivery
// into Maildir folders.
package maildir

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
)

func init() {
	caddy.RegisterModule(Maildir{})
}

// Maildir stores each recipient's copy of a message in a Maildir
// (https://cr.yp.to/proto/maildir.html): written to tmp/, fsynced,
// renamed into new/ under a unique name, and the directory fsynced, so
// a delivery reported as sent survives a crash.
type Maildir struct {
	// The Maildir folder. `{local}` and `{domain}` are replaced by the
	// recipient's local part and domain (made safe for a path), for a
	// folder per mailbox: `/var/mail/{domain}/{local}`. Created if
	// missing.
	Path string `json:"path,omitempty"`

	hostname string
	counter  *atomic.Uint64
}

// CaddyModule returns the Caddy module information.
func (Maildir) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.delivery.maildir",
		New: func() caddy.Module { return new(Maildir) },
	}
}

// Provision checks the path.
func (m *Maildir) Provision(caddy.Context) error {
	if m.Path == "" {
		return fmt.Errorf("maildir: path is required")
	}
	m.counter = new(atomic.Uint64)
	m.hostname, _ = os.Hostname()
	m.hostname = strings.NewReplacer("/", "_", ":", "_").Replace(m.hostname)
	return nil
}

// Destination is the folder template: every recipient of the route can
// be handled by one job.
func (m *Maildir) Destination(string) string { return "maildir:" + m.Path }

// Deliver writes one copy per recipient.
func (m *Maildir) Deliver(ctx context.Context, job *delivery.Job) []delivery.Result {
	results := make([]delivery.Result, len(job.Recipients))
	for i, r := range job.Recipients {
		dir := m.folder(r.Address)
		if err := m.store(job, r.Address, dir); err != nil {
			results[i] = delivery.Temporary("4.3.0", fmt.Sprintf("maildir %s: %v", dir, err))
			results[i].Remote = dir
			continue
		}
		results[i] = delivery.Result{Status: delivery.Sent, Code: "2.0.0", Reply: "delivered to maildir", Remote: dir}
	}
	return results
}

// folder expands the path template for a recipient.
func (m *Maildir) folder(addr string) string {
	local, domain := address.Split(addr)
	return strings.NewReplacer("{local}", safe(local), "{domain}", safe(domain)).Replace(m.Path)
}

// safe maps a local part or domain to one harmless path element: no
// separators, no leading dot, nothing outside a small alphabet.
func safe(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '+' || c == '.') {
			b[i] = '_'
		}
	}
	out := strings.TrimLeft(string(b), ".")
	if out == "" {
		return "_"
	}
	return out
}

func (m *Maildir) store(job *delivery.Job, rcpt, dir string) error {
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	now := time.Now()
	name := fmt.Sprintf("%d.M%dP%dQ%dR%s.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(),
		m.counter.Add(1), hex.EncodeToString(rnd[:]), m.hostname)
	tmp := filepath.Join(dir, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The delivery headers a local delivery agent adds (RFC 5321 4.4).
	// Maildir files hold the message with LF line ends, as Postfix's
	// local and virtual agents write them and Dovecot expects.
	if _, err := fmt.Fprintf(f, "Return-Path: <%s>\nDelivered-To: %s\n", job.Envelope.From, rcpt); err != nil {
		return err
	}
	msg, err := job.Open()
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	_, err = io.Copy(&lfWriter{w: w}, msg)
	msg.Close()
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, "new", name)); err != nil {
		return err
	}
	ok = true
	d, err := os.Open(filepath.Join(dir, "new"))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// lfWriter turns CRLF line ends into LF. The spool holds messages with
// CRLF only (bare CR and LF are refused or normalized on receipt), so a
// CR is dropped exactly when an LF follows; a CR at the end of one write
// is held until the next.
type lfWriter struct {
	w      *bufio.Writer
	heldCR bool
}

func (l *lfWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if l.heldCR {
			l.heldCR = false
			if b != '\n' {
				l.w.WriteByte('\r')
			}
		}
		if b == '\r' {
			l.heldCR = true
			continue
		}
		if err := l.w.WriteByte(b); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// UnmarshalCaddyfile parses:
//
//	maildir <path>
func (m *Maildir) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "maildir"
	if !d.Args(&m.Path) {
		return d.Err("maildir needs a path")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Err("maildir takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Maildir)(nil)
	_ delivery.Deliverer    = (*Maildir)(nil)
	_ caddyfile.Unmarshaler = (*Maildir)(nil)
)
