// Package maillog writes the gateway's mail log: the events a mail
// administrator follows a message by, as in Postfix's maillog (a
// connection closed, a message accepted or refused, each delivery
// attempt, a bounce), into Caddy's structured log, with one set of field
// names. It is the one place those lines are built, as chasquid's
// maillog package is; other log lines (start, errors of the gateway
// itself) stay with the code they concern.
package maillog

import (
	"crypto/tls"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Field names shared by every event.
const (
	FieldQueueID  = "queue_id"
	FieldRemoteIP = "remote_ip"
	FieldFrom     = "from"
	FieldTo       = "to"
)

// Log writes mail log events to a logger. The zero value writes
// nowhere.
type Log struct{ l *zap.Logger }

// New returns a mail log that writes to l (nil: nowhere).
func New(l *zap.Logger) Log {
	if l == nil {
		l = zap.NewNop()
	}
	return Log{l}
}

// Logger is the logger beneath, for the lines that are not mail log
// events.
func (m Log) Logger() *zap.Logger {
	if m.l == nil {
		return zap.NewNop()
	}
	return m.l
}

// TLSFields describe a TLS session of a connection we accepted, in the
// spirit of Postfix's "Trusted/Untrusted/Anonymous TLS connection
// established" (nil: no TLS).
func TLSFields(cs *tls.ConnectionState, peerVerified bool) []zap.Field {
	if cs == nil {
		return []zap.Field{zap.Bool("tls", false)}
	}
	f := []zap.Field{
		zap.Bool("tls", true),
		zap.String("tls_version", tls.VersionName(cs.Version)),
		zap.String("tls_cipher", tls.CipherSuiteName(cs.CipherSuite)),
		zap.String("tls_server_name", cs.ServerName),
		zap.Bool("tls_resumed", cs.DidResume),
	}
	if len(cs.PeerCertificates) > 0 {
		f = append(f,
			zap.String("client_cert_subject", cs.PeerCertificates[0].Subject.String()),
			zap.Bool("client_cert_verified", peerVerified))
	}
	return f
}

// ConnectionClosed is the one line of a connection we accepted, at its
// end.
func (m Log) ConnectionClosed(remote netip.AddrPort, took time.Duration, messages int, cs *tls.ConnectionState, peerVerified bool) {
	fields := []zap.Field{
		zap.String(FieldRemoteIP, remote.Addr().String()),
		zap.Uint16("remote_port", remote.Port()),
		zap.Duration("duration", took),
		zap.Int("messages", messages),
	}
	m.Logger().Info("connection closed", append(fields, TLSFields(cs, peerVerified)...)...)
}

// Refused is a connection, command or message we refused; what says
// which and why, as a lowercase phrase ("recipient refused: no route").
func (m Log) Refused(what string, remote netip.Addr, fields ...zap.Field) {
	m.Logger().Info(what, append([]zap.Field{zap.String(FieldRemoteIP, remote.String())}, fields...)...)
}

// Check is one content check's line for a message: "check accept",
// "check reject", "check skipped", "check error" (then on_error says
// what applied).
func (m Log) Check(verdict string, remote netip.Addr, fields ...zap.Field) {
	m.Logger().Info("check "+verdict, append([]zap.Field{zap.String(FieldRemoteIP, remote.String())}, fields...)...)
}

// ConnectionRefused is a connection refused at the greeting because of
// a limit (a warning: the administrator may want to raise it).
func (m Log) ConnectionRefused(reason string, remote netip.Addr, fields ...zap.Field) {
	m.Logger().Warn("connection refused: "+reason, append([]zap.Field{zap.String(FieldRemoteIP, remote.String())}, fields...)...)
}

// Accepted is a message we acknowledged with 250.
type Accepted struct {
	ID       string
	Remote   netip.Addr
	From     string
	To       []string
	Size     int64
	Protocol string // RFC 3848 "with" keyword
	Took     time.Duration
	TLS      *tls.ConnectionState
}

// MessageAccepted is the line of a message acknowledged with 250.
func (m Log) MessageAccepted(a Accepted) {
	fields := []zap.Field{
		zap.String(FieldQueueID, a.ID),
		zap.String(FieldRemoteIP, a.Remote.String()),
		zap.String(FieldFrom, a.From),
		zap.Strings(FieldTo, a.To),
		zap.Int64("size", a.Size),
		zap.String("protocol", a.Protocol),
		zap.Duration("duration", a.Took),
	}
	if a.TLS != nil {
		fields = append(fields,
			zap.String("tls_version", tls.VersionName(a.TLS.Version)),
			zap.String("tls_cipher", tls.CipherSuiteName(a.TLS.CipherSuite)))
	}
	m.Logger().Info("message accepted", fields...)
}

// Quarantined is the line of a message acknowledged with 250 and kept
// in the quarantine by a check.
func (m Log) Quarantined(env *spool.Envelope, remote netip.Addr, took time.Duration) {
	to := make([]string, len(env.Recipients))
	for i, r := range env.Recipients {
		to[i] = r.Address
	}
	m.Logger().Warn("message quarantined",
		zap.String(FieldQueueID, env.ID),
		zap.String(FieldRemoteIP, remote.String()),
		zap.String(FieldFrom, env.From),
		zap.Strings(FieldTo, to),
		zap.Int64("size", env.Size),
		zap.String("check", env.Quarantine.Check),
		zap.String("reason", env.Quarantine.Reason),
		zap.Duration("duration", took))
}

// Delivery is the line of one recipient's delivery attempt, with the
// facts of Postfix's "to=<...>, relay=..., delay=..., status=..." line:
// "delivery sent", "delivery deferred" or "delivery bounced".
func (m Log) Delivery(env *spool.Envelope, rc *spool.Recipient, res delivery.Result, started time.Time) {
	fields := []zap.Field{
		zap.String(FieldQueueID, env.ID),
		zap.String(FieldFrom, env.From),
		zap.String(FieldTo, rc.Address),
		zap.String("relay", res.Remote),
		zap.Duration("delay", time.Since(env.Received)),
		zap.Duration("attempt_duration", time.Since(started)),
		zap.Int("attempts", rc.Attempts),
		zap.String("status", res.Status.String()),
		zap.String("dsn", res.Code),
		zap.String("reply", res.Reply),
		zap.Bool("tls", res.TLSVersion != ""),
	}
	if res.TLSPolicy != "" {
		fields = append(fields, zap.String("tls_policy", res.TLSPolicy))
	}
	if res.TLSVersion != "" {
		fields = append(fields, zap.String("tls_version", res.TLSVersion),
			zap.String("tls_cipher", res.TLSCipher), zap.Bool("tls_verified", res.TLSVerified))
		if res.TLSMatch != "" {
			fields = append(fields, zap.String("tls_match", res.TLSMatch))
		}
	}
	if res.ConnUse > 1 {
		// As Postfix: only a reused connection says so.
		fields = append(fields, zap.Int("conn_use", res.ConnUse))
	}
	if res.Status == delivery.Deferred {
		fields = append(fields, zap.Time("next_attempt", rc.NextAttempt))
	}
	m.Logger().Info("delivery "+res.Status.String(), fields...)
}

// Bounce is what became of a bounce for failed recipients of env: queued
// as bounceID reporting reported recipients, not due (bounceID ""), or
// not queued (err).
func (m Log) Bounce(env *spool.Envelope, bounceID string, reported, failed int, err error) {
	switch {
	case err != nil:
		m.Logger().Error("cannot queue bounce", zap.String(FieldQueueID, env.ID), zap.Error(err))
	case bounceID == "":
		m.Logger().Info("no bounce sent", zap.String(FieldQueueID, env.ID),
			zap.Bool("null_sender", env.From == ""), zap.Int("failed", failed))
	default:
		m.Logger().Info("bounce queued", zap.String(FieldQueueID, env.ID), zap.String("bounce_id", bounceID),
			zap.String(FieldTo, env.From), zap.Int("recipients", reported))
	}
}

// Removed is a record leaving the queue: delivered to every recipient
// (how "removed"), or deleted by the administrator.
func (m Log) Removed(id, how string) {
	m.Logger().Info(how, zap.String(FieldQueueID, id))
}
