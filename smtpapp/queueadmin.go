package smtpapp

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Queue administration: what Postfix's mailq, postqueue -f, postsuper -d
// and friends do, for the admin API (admin.api.smtp) and the
// smtp-queue command. Every operation goes through the spool, whose
// updates and removals are serialized with the delivery runner's, so
// that deleting a message mid-delivery is safe and never undone.

// ErrNoSuchMessage is returned for a queue id that is not queued.
var ErrNoSuchMessage = errors.New("no such message in the queue")

// ErrNothingPending is returned when bouncing a message none of whose
// recipients is still to be delivered.
var ErrNothingPending = errors.New("message has no pending recipient")

// QueueFilter selects messages in a listing; empty fields match all.
type QueueFilter struct {
	// Sender matches the envelope sender, case-insensitively.
	Sender string
	// Recipient matches any recipient, case-insensitively.
	Recipient string
	// Domain matches the domain of any recipient.
	Domain string
}

func (f QueueFilter) matches(env *spool.Envelope) bool {
	if f.Sender != "" && !strings.EqualFold(env.From, f.Sender) {
		return false
	}
	if f.Recipient == "" && f.Domain == "" {
		return true
	}
	for _, r := range env.Recipients {
		if (f.Recipient == "" || strings.EqualFold(r.Address, f.Recipient)) &&
			(f.Domain == "" || address.Domain(r.Address) == address.NormalizeDomain(f.Domain)) {
			return true
		}
	}
	return false
}

// QueueEntry is one message of a queue listing.
type QueueEntry struct {
	ID          string             `json:"id"`
	Server      string             `json:"server"`
	Sender      string             `json:"sender"`
	Recipients  []*spool.Recipient `json:"recipients"`
	Size        int64              `json:"size"`
	Received    time.Time          `json:"received"`
	AgeSeconds  float64            `json:"age_seconds"`
	Attempts    int                `json:"attempts"`
	LastError   string             `json:"last_error,omitempty"`
	NextAttempt *time.Time         `json:"next_attempt,omitempty"`
	Client      spool.Client       `json:"client"`
	// Active is set while the message is being delivered (Postfix's
	// mailq marks it with "*").
	Active   bool            `json:"active,omitempty"`
	Envelope *spool.Envelope `json:"-"`
}

func entryOf(env *spool.Envelope) QueueEntry {
	e := QueueEntry{ID: env.ID, Server: env.Server, Sender: env.From, Recipients: env.Recipients,
		Size: env.Size, Received: env.Received, AgeSeconds: time.Since(env.Received).Seconds(),
		Client: env.Client, Envelope: env}
	for _, r := range env.Recipients {
		e.Attempts = max(e.Attempts, r.Attempts)
		if r.LastError != "" && r.Pending() {
			e.LastError = r.LastError
		}
		if r.Status == spool.StatusDeferred && (e.NextAttempt == nil || r.NextAttempt.Before(*e.NextAttempt)) {
			t := r.NextAttempt
			e.NextAttempt = &t
		}
	}
	return e
}

// QueueList lists queued messages, oldest first, that match filter:
// the page from offset of at most limit entries (limit 0: all), and
// the number of matches in all.
func (a *App) QueueList(filter QueueFilter, offset, limit int) ([]QueueEntry, int, error) {
	ids, err := a.spool.IDs()
	if err != nil {
		return nil, 0, err
	}
	var out []QueueEntry
	total := 0
	for _, id := range ids {
		env, err := a.spool.Load(id)
		if err != nil {
			continue // delivered meanwhile, or unreadable (logged by the runner)
		}
		if !filter.matches(env) {
			continue
		}
		if total >= offset && (limit <= 0 || len(out) < limit) {
			e := entryOf(env)
			e.Active = a.isActive(id)
			out = append(out, e)
		}
		total++
	}
	return out, total, nil
}

// QueueShow returns one message's entry and its header section.
func (a *App) QueueShow(id string) (QueueEntry, string, error) {
	env, err := a.spool.Load(id)
	if errors.Is(err, spool.ErrNotFound) {
		return QueueEntry{}, "", ErrNoSuchMessage
	}
	if err != nil {
		return QueueEntry{}, "", err
	}
	f, err := a.spool.OpenMessage(id)
	if err != nil {
		return QueueEntry{}, "", ErrNoSuchMessage
	}
	defer f.Close()
	var hdr strings.Builder
	if err := copyHeaders(&hdr, bufio.NewReader(f)); err != nil && !errors.Is(err, io.EOF) {
		return QueueEntry{}, "", err
	}
	e := entryOf(env)
	e.Active = a.isActive(id)
	return e, hdr.String(), nil
}

func (a *App) isActive(id string) bool {
	r := a.runner.Load()
	return r != nil && r.active(id)
}

// QueueFlush makes deferred recipients due now and wakes delivery, for
// one message or (id "") all: postqueue -f / -i. It returns how many
// messages it flushed.
func (a *App) QueueFlush(id string) (int, error) {
	ids := []string{id}
	if id == "" {
		var err error
		if ids, err = a.spool.IDs(); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, qid := range ids {
		err := a.spool.Modify(qid, func(env *spool.Envelope) (bool, error) {
			n++ // woken below, written only if a wait is cut short
			changed := false
			for _, r := range env.Recipients {
				if r.Status == spool.StatusDeferred && !r.NextAttempt.IsZero() {
					r.NextAttempt, changed = time.Time{}, true
				}
			}
			if !changed {
				return false, spool.ErrUnchanged
			}
			return false, nil
		})
		if err != nil {
			if id != "" && errors.Is(err, spool.ErrNotFound) {
				return 0, ErrNoSuchMessage
			}
			continue
		}
		if r := a.runner.Load(); r != nil {
			r.reschedule(qid, time.Time{})
		}
	}
	a.logger.Info("queue flushed", zap.String("queue_id", id), zap.Int("messages", n))
	return n, nil
}

// QueueDelete removes messages without notice to anyone (postsuper -d).
// A message being delivered is removed all the same; its delivery may
// still complete, but the record does not come back. It returns the ids
// it removed.
func (a *App) QueueDelete(ids []string) ([]string, error) {
	var done []string
	for _, id := range ids {
		if err := a.spool.Remove(id); err != nil {
			if errors.Is(err, spool.ErrNotFound) {
				continue
			}
			return done, err
		}
		done = append(done, id)
		a.logger.Info("removed by administrator", zap.String("queue_id", id))
	}
	return done, nil
}

// QueueBounce fails every pending recipient of a message now and sends
// the sender a bounce (postsuper -r... then bounce; Postfix's "bounce
// now").
func (a *App) QueueBounce(id string) error {
	r := a.runner.Load()
	if r == nil {
		r = newRunner(a) // for its bounce logic; not started
	}
	err := a.spool.Modify(id, func(env *spool.Envelope) (bool, error) {
		var failed []*spool.Recipient
		for _, rc := range env.Recipients {
			if !rc.Pending() {
				continue
			}
			rc.Status, rc.Done, rc.Code = spool.StatusBounced, time.Now().UTC(), "5.0.0"
			rc.LastError = "returned to sender by the administrator"
			failed = append(failed, rc)
			r.logResult(env, rc, delivery.Result{Status: delivery.Bounced, Code: "5.0.0", Reply: rc.LastError, Via: "admin"}, time.Now())
		}
		if len(failed) == 0 {
			return false, ErrNothingPending
		}
		r.bounce(a.Servers[env.Server], env, failed)
		return !anyPending(env), nil
	})
	if errors.Is(err, spool.ErrNotFound) {
		return ErrNoSuchMessage
	}
	return err
}
