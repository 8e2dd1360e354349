// Package checks is the contract of content checks: Caddy modules in the
// namespace smtp.checks that look at a message at the end of its data,
// before the gateway answers 250, so that a refusal is a reply to the
// sender and never a bounce of ours. A server runs its checks in order
// (Run); each says what its engine being down means (on_error), and the
// default never waives the check silently.
package checks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/message"
)

// Check is a content check.
type Check interface {
	// Check looks at a message and returns its verdict. An error means
	// the engine could not answer (down, slow, garbage): Run applies the
	// check's on_error.
	Check(ctx context.Context, m *Message) (Verdict, error)
	// CheckOptions returns the check's common options (embed Options).
	CheckOptions() *Options
}

// Message is what a check sees of a message.
type Message struct {
	QueueID    string
	Server     string // the smtp server's name
	Hostname   string // our hostname
	ClientIP   netip.Addr
	ClientPort uint16
	Helo       string
	From       string
	Rcpts      []string
	TLS        *tls.ConnectionState
	Auth       string // the authenticated identity, "" if none
	Relay      bool   // the client is in relay_networks
	SMTPUTF8   bool   // the sender used SMTPUTF8
	Size       int64
	// Open returns the message as it will be spooled (our Received:
	// header first, CRLF line ends), from its first byte; each call
	// reads it again.
	Open func() (io.Reader, error)
}

// Action is what a verdict does with a message.
type Action int

// Actions.
const (
	Accept     Action = iota // go on: the next check, then 250
	Reject                   // 550 5.7.1, with the engine's text
	Tempfail                 // 451 4.7.1
	Discard                  // 250, nothing queued, logged
	Quarantine               // 250, kept in the quarantine, not delivered
)

func (a Action) String() string {
	switch a {
	case Reject:
		return "reject"
	case Tempfail:
		return "tempfail"
	case Discard:
		return "discard"
	case Quarantine:
		return "quarantine"
	}
	return "accept"
}

// Verdict is a check's answer.
type Verdict struct {
	Action Action
	// Reply is the engine's text for a refusal ("" for ours).
	Reply string
	// Code is the enhanced status code of a refusal, "5.7.23" ("" for
	// 5.7.1 and 4.7.1); its class must match the action's.
	Code string
	// Reason names what was found (a virus signature, rspamd symbols).
	Reason string
	// Score, for engines that score.
	Score float64

	// Changes asked for, applied before the next check and before the
	// message is committed (so what is spooled is what is delivered),
	// for an accepted or quarantined message.
	Changes
}

// Changes are what a check asks to change in a message: its header,
// its body, its envelope (the milter protocol's modification actions).
type Changes struct {
	// Edits of the header, in order.
	Edits []message.HeaderEdit
	// Body, when not nil, replaces the body.
	Body []byte
	// From, when not nil, replaces the envelope sender ("" for <>).
	From *string
	// AddRcpts and DelRcpts add and remove envelope recipients.
	AddRcpts, DelRcpts []string
}

// Empty reports whether c changes nothing.
func (c *Changes) Empty() bool {
	return len(c.Edits) == 0 && c.Body == nil && c.From == nil && len(c.AddRcpts) == 0 && len(c.DelRcpts) == 0
}

// On-error choices.
const (
	OnErrorTempfail = "tempfail"
	OnErrorAccept   = "accept"
)

// Defaults of Options.
const (
	DefaultTimeout       = 30 * time.Second
	DefaultMaxSize       = 25 << 20
	DefaultMaxConcurrent = 16
)

// Options are what every check has.
type Options struct {
	// How long the engine may take for one message. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// What a down, slow or garbled engine means: `tempfail` (default:
	// 451 4.7.1, the sender tries again; losing scanning silently is the
	// worse failure) or `accept` (the message goes on unchecked, and
	// the log and metrics say so).
	OnError string `json:"on_error,omitempty"`

	// Messages larger than this skip the check (logged and counted),
	// and never time out the sender. Default: 25 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// How many messages this check looks at at once; more wait.
	// Default: 16.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	sem chan struct{}
}

// CheckOptions returns o, so that a check that embeds Options has the
// method.
func (o *Options) CheckOptions() *Options { return o }

// Provision validates the options and fills in the defaults; field
// names the check in errors.
func (o *Options) Provision(field string) error {
	switch o.OnError {
	case "":
		o.OnError = OnErrorTempfail
	case OnErrorTempfail, OnErrorAccept:
	default:
		return fmt.Errorf("%s.on_error: %q is not one of tempfail, accept", field, o.OnError)
	}
	if o.Timeout < 0 || o.MaxSize < 0 || o.MaxConcurrent < 0 {
		return fmt.Errorf("%s: timeout, max_size and max_concurrent must not be negative", field)
	}
	if o.Timeout == 0 {
		o.Timeout = caddy.Duration(DefaultTimeout)
	}
	if o.MaxSize == 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxConcurrent == 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	o.sem = make(chan struct{}, o.MaxConcurrent)
	return nil
}

// Outcome is one check's part in Run, for its log line and metrics.
type Outcome struct {
	Name    string        // the check's module name
	Verdict Verdict       // what applied
	Skipped string        // why the check did not run (too large)
	Err     error         // the engine's failure, when on_error applied
	Took    time.Duration // time taken
}

// SkipError is a check that could not look at this message for a reason
// that is the message's, not the engine's being down (clamd's stream
// limit): Run logs and counts it as skipped, as a message over max_size.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return e.Reason }

// ErrBusy is a check whose concurrency bound did not free up in time.
var ErrBusy = errors.New("too many messages being checked")

// Run runs checks in order until one refuses, discards or quarantines
// the message, and returns the verdict that applies and each check's
// outcome. A check's changes are handed to apply as soon as it answers,
// so that the next check sees the message changed; apply updates m. A
// change that would break the message is the engine's error (on_error
// applies); apply's own failure (the spool) is a tempfail.
func Run(ctx context.Context, list []Check, names []string, m *Message, apply func(*Changes) error) (Verdict, []Outcome) {
	var outs []Outcome
	for i, c := range list {
		o := c.CheckOptions()
		out := Outcome{Name: names[i]}
		start := time.Now()
		if m.Size > o.MaxSize {
			out.Skipped = fmt.Sprintf("message of %d bytes is over max_size %d", m.Size, o.MaxSize)
			outs = append(outs, out)
			continue
		}
		// Each check gets its own copy: one that outlives its timeout
		// must not see the next check's changes being made to m.
		mc := *m
		v, err := runOne(ctx, c, o, &mc)
		out.Took = time.Since(start)
		var skip *SkipError
		if errors.As(err, &skip) {
			out.Skipped = skip.Reason
			outs = append(outs, out)
			continue
		}
		if err == nil && (v.Action == Accept || v.Action == Quarantine) && !v.Changes.Empty() {
			if cerr := checkChanges(&v.Changes, m.SMTPUTF8); cerr != nil {
				if v.Action == Quarantine {
					// The verdict stands; only its changes are dropped.
					v.Changes = Changes{}
					v.Reason = strings.TrimSpace(v.Reason + " (its changes dropped: " + cerr.Error() + ")")
				} else {
					err = cerr
				}
			}
		}
		if err != nil {
			out.Err = err
			if o.OnError == OnErrorAccept {
				v = Verdict{Action: Accept}
			} else {
				v = Verdict{Action: Tempfail, Reason: "check unavailable"}
			}
		}
		if (v.Action == Accept || v.Action == Quarantine) && !v.Changes.Empty() {
			if err := apply(&v.Changes); err != nil {
				out.Err = fmt.Errorf("applying the check's changes: %w", err)
				v = Verdict{Action: Tempfail, Reason: "changes could not be applied"}
			}
		}
		out.Verdict = v
		outs = append(outs, out)
		if v.Action != Accept {
			return v, outs
		}
	}
	return Verdict{Action: Accept}, outs
}

// Bounds of a check's changes: engines' answers are untrusted input.
const (
	maxBody       = 64 << 20
	maxRcptChange = 1000
)

func checkChanges(c *Changes, smtputf8 bool) error {
	if err := message.CheckEdits(c.Edits); err != nil {
		return err
	}
	if c.From != nil && *c.From != "" && address.Check(*c.From, smtputf8) != address.OK {
		return fmt.Errorf("%w: new sender %q", message.ErrBadEdit, OneLine(*c.From))
	}
	for _, a := range c.AddRcpts {
		if address.Check(a, smtputf8) != address.OK {
			return fmt.Errorf("%w: new recipient %q", message.ErrBadEdit, OneLine(a))
		}
	}
	if len(c.Body) > maxBody {
		return fmt.Errorf("a new body of %d bytes", len(c.Body))
	}
	if len(c.AddRcpts)+len(c.DelRcpts) > maxRcptChange {
		return fmt.Errorf("%d recipient changes", len(c.AddRcpts)+len(c.DelRcpts))
	}
	return nil
}

func runOne(ctx context.Context, c Check, o *Options, m *Message) (Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(o.Timeout))
	defer cancel()
	select {
	case o.sem <- struct{}{}:
		defer func() { <-o.sem }()
	case <-ctx.Done():
		return Verdict{}, ErrBusy
	}
	type answer struct {
		v   Verdict
		err error
	}
	done := make(chan answer, 1)
	go func() {
		v, err := c.Check(ctx, m)
		done <- answer{v, err}
	}()
	select {
	case a := <-done:
		return a.v, a.err
	case <-ctx.Done():
		// The check must honour ctx; its goroutine ends when it does.
		return Verdict{}, fmt.Errorf("no answer within %s", time.Duration(o.Timeout))
	}
}

// ParseOption parses one of the options every check has, in a check's
// Caddyfile block: timeout, on_error, max_size, max_concurrent.
func ParseOption(d *caddyfile.Dispenser, o *Options) error {
	name := d.Val()
	var arg string
	if !d.AllArgs(&arg) {
		return d.ArgErr()
	}
	switch name {
	case "timeout":
		dur, err := caddy.ParseDuration(arg)
		if err != nil {
			return d.Errf("timeout: %v", err)
		}
		o.Timeout = caddy.Duration(dur)
	case "on_error":
		if arg != OnErrorTempfail && arg != OnErrorAccept {
			return d.Errf("on_error: %q is not one of tempfail, accept", arg)
		}
		o.OnError = arg
	case "max_size":
		n, err := humanize.ParseBytes(arg)
		if err != nil || n > 1<<40 {
			return d.Errf("max_size: %q is not a size", arg)
		}
		o.MaxSize = int64(n)
	case "max_concurrent":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 {
			return d.Errf("max_concurrent: %q is not a positive number", arg)
		}
		o.MaxConcurrent = n
	default:
		return d.Errf("unknown check directive %q", name)
	}
	return nil
}

// OneLine makes an engine's text fit an SMTP reply or a log field:
// printable ASCII (anything else becomes a space), one line, at most
// 200 bytes, trimmed. Engines' text is untrusted input.
func OneLine(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			c = ' '
		}
		if b.Len() >= 200 {
			break
		}
		b.WriteRune(c)
	}
	return strings.TrimSpace(b.String())
}
