package smtpapp

import (
	"context"
	"io"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Replies of the content checks.
var (
	errCheckTempfail = reply(451, 4, 7, 1, "Message could not be checked, try again later")
)

// runChecks runs the server's content checks on a message written to
// draft, before it is committed. It returns nil to go on, or the reply
// that ends the transaction: a refusal (550 5.7.1, 451 4.7.1), or a 250
// for a discarded message (nothing is queued: the caller aborts the
// draft).
func (ss *session) runChecks(draft *spool.Draft, rcpts []string) error {
	srv := ss.srv
	remote := ss.conn.remote
	if len(srv.checks) == 0 || (srv.SkipRelayNetworks && srv.relay.MayRelay(remote.Addr())) {
		return nil
	}
	// Flushed here, on the session's goroutine: a check's goroutine
	// that outlives its timeout must never touch the draft's writer
	// (Commit uses it next).
	if err := draft.Flush(); err != nil {
		return ss.spoolFailed(err)
	}
	msg := &checks.Message{
		QueueID: draft.ID(), Server: srv.name, Hostname: srv.Hostname,
		ClientIP: remote.Addr(), ClientPort: remote.Port(), Helo: ss.helo,
		From: ss.from, Rcpts: rcpts, TLS: ss.tlsState(), Auth: ss.authID,
		Size: draft.Size(), Open: func() (io.Reader, error) { return draft.Reader(), nil },
	}
	v, outs := checks.Run(context.Background(), srv.checks, srv.checkNames, msg)
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
		return reply(550, 5, 7, 1, text)
	case checks.Tempfail:
		srv.reject("check")
		if v.Reply != "" {
			return reply(451, 4, 7, 1, v.Reply)
		}
		return errCheckTempfail
	case checks.Discard:
		srv.maillog.Refused("message discarded by a check", remote.Addr(), zap.String(maillog.FieldQueueID, draft.ID()))
		return reply(250, 2, 0, 0, "OK: queued as "+draft.ID())
	}
	return nil
}
