package queue

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// maxReturnedBody bounds the original message returned with RET=FULL.
const maxReturnedBody = 10 << 20

// Bounce queues a delivery status notification (RFC 3464) to the
// sender of env for the recipients that failed for good, from the
// server called hostname; it returns the bounce's queue id and how many
// recipients it reports, or "" when none is due: the null sender never gets one (RFC 5321 6.1: no bounce
// loops), nor do recipients whose NOTIFY excludes FAILURE (RFC 3461).
// The bounce is committed (fsynced) before Bounce returns; the caller
// tells the runner about it.
func Bounce(sp *spool.Spool, hostname string, env *spool.Envelope, failed []*spool.Recipient) (id string, reported int, err error) {
	var notify []*spool.Recipient
	for _, rc := range failed {
		if wantsFailureNotice(rc) {
			notify = append(notify, rc)
		}
	}
	if env.From == "" || len(notify) == 0 {
		return "", 0, nil
	}
	if hostname == "" {
		hostname = "localhost"
	}
	draft, err := sp.Create()
	if err != nil {
		return "", 0, fmt.Errorf("creating bounce: %w", err)
	}
	defer draft.Abort()
	orig, err := sp.OpenMessage(env.ID)
	if err != nil {
		return "", 0, fmt.Errorf("reading message to bounce: %w", err)
	}
	defer orig.Close()
	if err := writeDSN(draft, hostname, env, notify, orig, time.Now()); err != nil {
		return "", 0, fmt.Errorf("writing bounce: %w", err)
	}
	dsn := &spool.Envelope{
		Server:     env.Server,
		From:       "",
		Recipients: []*spool.Recipient{{Address: env.From, Status: spool.StatusQueued}},
		Client:     spool.Client{IP: "127.0.0.1", Helo: hostname, Protocol: "local"},
		Received:   time.Now().UTC(),
	}
	if err := draft.Commit(dsn); err != nil {
		return "", 0, fmt.Errorf("queueing bounce: %w", err)
	}
	return dsn.ID, len(notify), nil
}

// bounce is Bounce, logged, and the bounce scheduled.
func (r *Runner) bounce(hostname string, env *spool.Envelope, failed []*spool.Recipient) {
	id, n, err := Bounce(r.spool, hostname, env, failed)
	r.maillog.Bounce(env, id, n, len(failed), err)
	if id != "" {
		r.Reschedule(id, time.Time{})
	}
}

func wantsFailureNotice(rc *spool.Recipient) bool {
	if len(rc.Notify) == 0 {
		return true
	}
	for _, n := range rc.Notify {
		if strings.EqualFold(n, "FAILURE") {
			return true
		}
	}
	return false
}

// writeDSN writes a multipart/report bounce: a human-readable part, the
// machine-readable message/delivery-status, and the original headers
// (or, with RET=FULL, the original message).
func writeDSN(w io.Writer, hostname string, env *spool.Envelope, failed []*spool.Recipient, orig io.Reader, now time.Time) error {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	boundary := hex.EncodeToString(rnd[:])
	date := now.Format(time.RFC1123Z)
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format+"\r\n", args...) }

	p("From: Mail Delivery System <MAILER-DAEMON@%s>", hostname)
	p("To: <%s>", env.From)
	p("Subject: Undelivered Mail Returned to Sender")
	p("Date: %s", date)
	p("Message-ID: <%s.%s@%s>", env.ID, boundary[:8], hostname)
	p("Auto-Submitted: auto-replied")
	p("MIME-Version: 1.0")
	p("Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"", boundary)
	p("")
	p("This is a MIME-encapsulated message.")
	p("")
	p("--%s", boundary)
	p("Content-Type: text/plain; charset=utf-8")
	p("Content-Description: Notification")
	p("")
	p("This is the mail system at host %s.", hostname)
	p("")
	p("Your message could not be delivered to one or more recipients.")
	p("It is attached below. The reasons are:")
	p("")
	for _, rc := range failed {
		p("<%s>: %s", rc.Address, oneLine(rc.LastError))
	}
	p("")
	p("--%s", boundary)
	p("Content-Type: message/delivery-status")
	p("Content-Description: Delivery report")
	p("")
	p("Reporting-MTA: dns; %s", hostname)
	p("X-Queue-ID: %s", env.ID)
	if env.EnvID != "" {
		p("Original-Envelope-Id: %s", oneLine(env.EnvID))
	}
	p("Arrival-Date: %s", env.Received.Format(time.RFC1123Z))
	for _, rc := range failed {
		p("")
		p("Final-Recipient: rfc822; %s", rc.Address)
		if typ, addr, ok := strings.Cut(rc.ORcpt, ";"); ok {
			p("Original-Recipient: %s; %s", strings.ToLower(typ), addr)
		}
		p("Action: failed")
		code := rc.Code
		if code == "" || code[0] != '5' {
			code = "5.0.0"
		}
		p("Status: %s", code)
		if host, _, ok := strings.Cut(rc.Remote, "["); ok && host != "" {
			p("Remote-MTA: dns; %s", host)
		}
		if strings.HasPrefix(rc.LastError, "5") || strings.Contains(rc.LastError, ": 5") {
			p("Diagnostic-Code: smtp; %s", oneLine(rc.LastError))
		} else {
			p("Diagnostic-Code: X-caddy-smtp; %s", oneLine(rc.LastError))
		}
		if !rc.Done.IsZero() {
			p("Last-Attempt-Date: %s", rc.Done.Format(time.RFC1123Z))
		}
	}
	p("")
	p("--%s", boundary)
	full := strings.EqualFold(env.Ret, "FULL")
	if full {
		p("Content-Type: message/rfc822")
		p("Content-Description: Undelivered message")
	} else {
		p("Content-Type: text/rfc822-headers")
		p("Content-Description: Undelivered message headers")
	}
	p("")
	if err := bw.Flush(); err != nil {
		return err
	}
	if full {
		if _, err := io.Copy(w, io.LimitReader(orig, maxReturnedBody)); err != nil {
			return err
		}
	} else if err := copyHeaders(w, orig); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\r\n--%s--\r\n", boundary)
	return err
}

// copyHeaders copies the header section of a message as it is (folded
// lines stay folded), up to and without the blank line.
func copyHeaders(w io.Writer, r io.Reader) error {
	br := bufio.NewReader(io.LimitReader(r, 1<<20))
	for {
		line, err := br.ReadSlice('\n')
		if len(line) == 0 || string(line) == "\r\n" || string(line) == "\n" {
			return nil
		}
		if _, werr := w.Write(line); werr != nil {
			return werr
		}
		if err != nil && err != bufio.ErrBufferFull {
			return nil
		}
	}
}

// oneLine keeps a diagnostic on one header line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
