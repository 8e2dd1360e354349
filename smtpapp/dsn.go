package smtpapp

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// maxReturnedBody bounds the original message returned with RET=FULL.
const maxReturnedBody = 10 << 20

// bounce queues a delivery status notification (RFC 3464) to the
// sender of env for the recipients that failed for good. The null
// sender never gets one (RFC 5321 6.1: no bounce loops), nor do
// recipients whose NOTIFY excludes FAILURE (RFC 3461).
func (r *runner) bounce(srv *Server, env *spool.Envelope, failed []*spool.Recipient) {
	var notify []*spool.Recipient
	for _, rc := range failed {
		if wantsFailureNotice(rc) {
			notify = append(notify, rc)
		}
	}
	if env.From == "" || len(notify) == 0 {
		r.logger.Info("no bounce sent", zap.String("queue_id", env.ID),
			zap.Bool("null_sender", env.From == ""), zap.Int("failed", len(failed)))
		return
	}
	hostname := "localhost"
	server := env.Server
	if srv != nil {
		hostname = srv.Hostname
	}
	draft, err := r.spool.Create()
	if err != nil {
		r.logger.Error("cannot queue bounce", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	defer draft.Abort()
	orig, err := r.spool.OpenMessage(env.ID)
	if err != nil {
		r.logger.Error("cannot read message to bounce", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	defer orig.Close()
	if err := writeDSN(draft, hostname, env, notify, orig, time.Now()); err != nil {
		r.logger.Error("writing bounce", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	dsn := &spool.Envelope{
		Server:     server,
		From:       "",
		Recipients: []*spool.Recipient{{Address: env.From, Status: spool.StatusQueued}},
		Client:     spool.Client{IP: "127.0.0.1", Helo: hostname, Protocol: "local"},
		Received:   time.Now().UTC(),
	}
	if err := draft.Commit(dsn); err != nil {
		r.logger.Error("queueing bounce", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	r.logger.Info("bounce queued", zap.String("queue_id", env.ID), zap.String("bounce_id", dsn.ID),
		zap.String("to", env.From), zap.Int("recipients", len(notify)))
	r.reschedule(dsn.ID, time.Time{})
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
