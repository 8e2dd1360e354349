package smtpapp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/message"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Replies of the content checks.
var (
	errCheckTempfail = reply(451, 4, 7, 1, "Message could not be checked, try again later")
)

// checked is what the checks left of a message's envelope, and whether
// it goes to the quarantine.
type checked struct {
	from       string
	rcpts      []*spool.Recipient
	quarantine *spool.Quarantine
}

// runChecks runs the server's content checks on a message written to
// draft, before it is committed, applying the changes they ask for to
// the draft and the envelope. It returns the envelope to commit, or the
// reply that ends the transaction: a refusal (550 5.7.1, 451 4.7.1), or
// a 250 for a discarded message (nothing is queued: the caller aborts
// the draft).
func (ss *session) runChecks(draft *spool.Draft, rcpts []*spool.Recipient) (checked, error) {
	srv := ss.srv
	remote := ss.conn.remote
	res := checked{from: ss.from, rcpts: rcpts}
	if len(srv.checks) == 0 || (srv.SkipRelayNetworks && srv.relay.MayRelay(remote.Addr())) {
		return res, nil
	}
	// Flushed here, on the session's goroutine: a check's goroutine
	// that outlives its timeout must never touch the draft's writer
	// (Commit uses it next).
	if err := draft.Flush(); err != nil {
		return res, ss.spoolFailed(err)
	}
	msg := &checks.Message{
		QueueID: draft.ID(), Server: srv.name, Hostname: srv.Hostname,
		ClientIP: remote.Addr(), ClientPort: remote.Port(), Helo: ss.helo,
		From: ss.from, Rcpts: addresses(rcpts), TLS: ss.tlsState(), Auth: ss.authID, Relay: srv.relay.MayRelay(remote.Addr()),
		SMTPUTF8: ss.mailOpts.UTF8, Size: draft.Size(), Open: opener(draft),
	}
	apply := func(c *checks.Changes) error {
		if err := ss.applyChanges(draft, &res, c); err != nil {
			return err
		}
		msg.From, msg.Rcpts, msg.Size, msg.Open = res.from, addresses(res.rcpts), draft.Size(), opener(draft)
		return nil
	}
	v, outs := checks.Run(context.Background(), srv.checks, srv.checkNames, msg, apply)
	m := srv.app.metrics
	for _, o := range outs {
		verdict := o.Verdict.Action.String()
		fields := []zap.Field{zap.String(maillog.FieldQueueID, draft.ID()), zap.String("check", o.Name),
			zap.Duration("took", o.Took)}
		switch {
		case o.Skipped != "":
			verdict = "skipped"
			fields = append(fields, zap.String("skipped", o.Skipped))
		case o.Err != nil:
			fields = append(fields, zap.Error(o.Err), zap.String("on_error", verdict))
			verdict = "error"
		}
		if o.Verdict.Reason != "" {
			fields = append(fields, zap.String("reason", o.Verdict.Reason))
		}
		if o.Verdict.Score != 0 {
			fields = append(fields, zap.Float64("score", o.Verdict.Score))
		}
		if n := changeCount(&o.Verdict.Changes); n != "" {
			fields = append(fields, zap.String("changes", n))
		}
		srv.maillog.Check(verdict, remote.Addr(), fields...)
		m.Checks.WithLabelValues(srv.name, o.Name, verdict).Inc()
		if o.Skipped == "" {
			m.CheckLatency.WithLabelValues(srv.name, o.Name).Observe(o.Took.Seconds())
		}
	}
	switch v.Action {
	case checks.Reject:
		srv.reject("check")
		text := v.Reply
		if text == "" {
			text = "Message refused by content check"
		}
		return res, codedReply(550, 5, v.Code, text)
	case checks.Tempfail:
		srv.reject("check")
		if v.Reply != "" {
			return res, codedReply(451, 4, v.Code, v.Reply)
		}
		return res, errCheckTempfail
	case checks.Discard:
		srv.maillog.Refused("message discarded by a check", remote.Addr(), zap.String(maillog.FieldQueueID, draft.ID()))
		return res, reply(250, 2, 0, 0, "OK: queued as "+draft.ID())
	case checks.Quarantine:
		last := outs[len(outs)-1]
		var others []string
		for _, o := range outs[:len(outs)-1] {
			if o.Verdict.Reason != "" {
				others = append(others, o.Name+": "+o.Verdict.Reason)
			}
		}
		res.quarantine = &spool.Quarantine{Check: last.Name, Reason: v.Reason, Reasons: others, At: time.Now().UTC()}
	}
	if len(res.rcpts) == 0 {
		// Every recipient was taken away by a milter: nothing to queue.
		srv.maillog.Refused("message discarded: a check removed every recipient", remote.Addr(),
			zap.String(maillog.FieldQueueID, draft.ID()))
		return res, reply(250, 2, 0, 0, "OK: queued as "+draft.ID())
	}
	return res, nil
}

// applyChanges applies a check's changes: the header and body to the
// draft (rewritten whole, so what is spooled is what is delivered), the
// envelope to res. Addresses a check gives must be valid, as the
// sender's are.
func (ss *session) applyChanges(draft *spool.Draft, res *checked, c *checks.Changes) error {
	rewrite := c.Body != nil
	if !rewrite && len(c.Edits) > 0 {
		// Most checks remove fields a message does not have (rspamd's
		// X-Spam): no rewrite for those.
		changes, err := message.EditsChange(draft.Reader(), c.Edits)
		if err != nil {
			return err
		}
		rewrite = changes
	}
	if rewrite {
		var body io.Reader
		if c.Body != nil {
			var nb bytes.Buffer
			message.Copy(&nb, bytes.NewReader(c.Body), true) // CRLF line ends; cannot fail
			body = &nb
		}
		if err := draft.Rewrite(func(w io.Writer, old io.Reader) error {
			return message.EditHeader(w, old, c.Edits, body)
		}); err != nil {
			return err
		}
	}
	if c.From != nil {
		res.from = *c.From
	}
	for _, a := range c.DelRcpts {
		kept := res.rcpts[:0:0]
		for _, r := range res.rcpts {
			if !strings.EqualFold(r.Address, a) {
				kept = append(kept, r)
			}
		}
		res.rcpts = kept
	}
	for _, a := range c.AddRcpts {
		dup := false
		for _, r := range res.rcpts {
			dup = dup || strings.EqualFold(r.Address, a)
		}
		if !dup { // a recipient added twice gets the message once
			res.rcpts = append(res.rcpts, &spool.Recipient{Address: a, Status: spool.StatusQueued})
		}
	}
	return nil
}

// opener opens the draft as it is now, for a check: a later rewrite
// does not change what it reads.
func opener(draft *spool.Draft) func() (io.Reader, error) {
	ra, n := draft.ReaderAt()
	return func() (io.Reader, error) { return io.NewSectionReader(ra, 0, n), nil }
}

// codedReply is a check's refusal: code with the enhanced status code
// the check gave when it is of the right class ("5.7.23"), else x.7.1.
func codedReply(code, class int, enhanced, text string) *smtp.SMTPError {
	var c, sub, det int
	if n, err := fmt.Sscanf(enhanced, "%d.%d.%d", &c, &sub, &det); n != 3 || err != nil || c != class ||
		sub < 0 || sub > 999 || det < 0 || det > 999 {
		sub, det = 7, 1
	}
	return reply(code, class, sub, det, checks.OneLine(text))
}

// changeCount says what a check changed, for its log line.
func changeCount(c *checks.Changes) string {
	var parts []string
	if n := len(c.Edits); n > 0 {
		parts = append(parts, strconv.Itoa(n)+" header")
	}
	if c.Body != nil {
		parts = append(parts, "body")
	}
	if c.From != nil {
		parts = append(parts, "sender")
	}
	if n := len(c.AddRcpts) + len(c.DelRcpts); n > 0 {
		parts = append(parts, strconv.Itoa(n)+" recipient")
	}
	return strings.Join(parts, ", ")
}

func addresses(rcpts []*spool.Recipient) []string {
	out := make([]string, len(rcpts))
	for i, r := range rcpts {
		out[i] = r.Address
	}
	return out
}
