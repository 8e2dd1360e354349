// Package delivery is the sending side of caddy-smtp: the interface that
// delivery targets (Caddy modules in the namespace smtp.delivery)
// implement, the client TLS security levels, and an SMTP client
// transaction shared by the relay and mx targets.
package delivery

import (
	"context"
	"io"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Deliverer is a delivery target: a Caddy module in the namespace
// `smtp.delivery` (inline key `via`) that sends messages onward.
type Deliverer interface {
	// Destination names the next hop for recipients in domain; the
	// queue puts recipients with the same route and destination into
	// one transaction, and limits concurrency per destination.
	Destination(domain string) string

	// Deliver attempts job once and returns one Result per recipient,
	// in order. It must honour ctx. It never retries: the queue does.
	Deliver(ctx context.Context, job *Job) []Result
}

// Job is one delivery attempt of one message to some of its recipients.
type Job struct {
	// Envelope of the message (sender, DSN and SMTPUTF8 parameters).
	Envelope *spool.Envelope
	// Recipients to deliver to in this attempt; all share a destination.
	Recipients []*spool.Recipient
	// Open returns the message, from its first byte.
	Open func() (io.ReadSeekCloser, error)
	// Hostname is our name, for EHLO and for headers we add.
	Hostname string
	// Logger for the attempt's log line.
	Logger *zap.Logger
}

// Status is the outcome of a delivery attempt for one recipient.
type Status int

// Outcomes.
const (
	// Sent: the next hop took responsibility for the message.
	Sent Status = iota
	// Deferred: a temporary failure; try again later.
	Deferred
	// Bounced: a permanent failure; tell the sender.
	Bounced
)

func (s Status) String() string {
	switch s {
	case Sent:
		return "sent"
	case Deferred:
		return "deferred"
	}
	return "bounced"
}

// Result is what happened to one recipient.
type Result struct {
	// Status: sent, deferred or bounced.
	Status Status
	// Code is the enhanced status code ("2.0.0", "4.4.1", "5.1.1").
	Code string
	// Reply is the remote server's reply, or our reason.
	Reply string
	// Remote is the next hop, "host[ip]:port", or a path for maildir.
	Remote string
	// TLSVersion and TLSCipher describe the TLS session, if any.
	TLSVersion, TLSCipher string
	// TLSVerified says whether the next hop's certificate verified.
	TLSVerified bool
	// TLSMatch is what the certificate matched when it verified: a host
	// name, or "fingerprint <hex>".
	TLSMatch string
	// TLSPolicy is the client TLS level in force and its source, as the
	// log says it: "may route", "verify requiretls".
	TLSPolicy string
	// TLSSource is where the level in force came from, one word or two,
	// for metrics: route, requiretls, dane, mta-sts enforce, mta-sts
	// testing ("" for targets without TLS, such as maildir).
	TLSSource string
	// TLSFailed says the attempt failed for want of TLS: STARTTLS not
	// offered or refused where the level needs it, a failed handshake,
	// a certificate that did not verify.
	TLSFailed bool
	// ConnUse is the number of this transaction on its connection: 1 on
	// a new connection, more on a reused one (Postfix's conn_use); 0
	// when no SMTP session was reached.
	ConnUse int
	// Via is the type of target that produced the result (relay, mx,
	// maildir...); the queue sets it.
	Via string
}

// TLSOutcome is what TLS an attempt had, for logs and metrics.
type TLSOutcome string

// TLS outcomes.
const (
	TLSNone      TLSOutcome = "none"      // no TLS, and none needed
	TLSUntrusted TLSOutcome = "untrusted" // TLS; the certificate did not verify, or was not checked
	TLSVerified  TLSOutcome = "verified"  // TLS with a verified certificate
	TLSFailure   TLSOutcome = "failed"    // TLS was needed and failed (TLSFailed)
)

// TLSOutcome tells the attempt's TLS outcome from its facts.
func (r Result) TLSOutcome() TLSOutcome {
	switch {
	case r.TLSVersion != "" && r.TLSVerified:
		return TLSVerified
	case r.TLSVersion != "":
		return TLSUntrusted
	case r.TLSFailed:
		return TLSFailure
	}
	return TLSNone
}

// Temporary makes a deferred result with our own reason.
func Temporary(code, reason string) Result {
	return Result{Status: Deferred, Code: code, Reply: reason}
}

// Permanent makes a bounced result with our own reason.
func Permanent(code, reason string) Result {
	return Result{Status: Bounced, Code: code, Reply: reason}
}

// All returns n copies of r, for a failure that concerns every recipient.
func All(r Result, n int) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}
