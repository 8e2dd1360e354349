package queue

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Queue administration: what Postfix's mailq, postqueue -f, postsuper -d
// and friends do, for the admin API (admin.api.smtp) and the
// smtp-queue command. Every operation is a function of the spool, whose
// updates and removals are serialized with the delivery runner's, so
// that deleting a message mid-delivery is safe and never undone; none
// needs a runner (a held queue has none).

// ErrNoSuchMessage is returned for a queue id that is not queued.
var ErrNoSuchMessage = errors.New("no such message in the queue")

// ErrNothingPending is returned when bouncing a message none of whose
// recipients is still to be delivered.
var ErrNothingPending = errors.New("message has no pending recipient")

// Filter selects messages in a listing; empty fields match all.
type Filter struct {
	// Sender matches the envelope sender, case-insensitively.
	Sender string
	// Recipient matches any recipient, case-insensitively.
	Recipient string
	// Domain matches the domain of any recipient.
	Domain string
}

func (f Filter) matches(env *spool.Envelope) bool {
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

// Entry is one message of a queue listing.
type Entry struct {
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

func entryOf(env *spool.Envelope) Entry {
	e := Entry{ID: env.ID, Server: env.Server, Sender: env.From, Recipients: env.Recipients,
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

// List lists queued messages, oldest first, that match filter: the page
// from offset of at most limit entries (limit 0: all), and the number of
// matches in all. active tells which are being delivered.
func List(sp *spool.Spool, filter Filter, offset, limit int, active func(id string) bool) ([]Entry, int, error) {
	ids, err := sp.IDs()
	if err != nil {
		return nil, 0, err
	}
	var out []Entry
	total := 0
	for _, id := range ids {
		env, err := sp.Load(id)
		if err != nil {
			continue // delivered meanwhile, or unreadable (logged by the runner)
		}
		if !filter.matches(env) {
			continue
		}
		if total >= offset && (limit <= 0 || len(out) < limit) {
			e := entryOf(env)
			e.Active = active(id)
			out = append(out, e)
		}
		total++
	}
	return out, total, nil
}

// Show returns one message's entry and its header section.
func Show(sp *spool.Spool, id string, active func(id string) bool) (Entry, string, error) {
	env, err := sp.Load(id)
	if errors.Is(err, spool.ErrNotFound) {
		return Entry{}, "", ErrNoSuchMessage
	}
	if err != nil {
		return Entry{}, "", err
	}
	hdr, err := readHeader(sp, id, maxShownHeader)
	if err != nil {
		return Entry{}, "", err
	}
	e := entryOf(env)
	e.Active = active(id)
	return e, hdr, nil
}

// maxShownHeader bounds the header section Show returns.
const maxShownHeader = 1 << 20

// readHeader returns the header section of a stored message as it is
// (copyHeaders), from the first limit bytes of the message; a record
// that cannot be opened is ErrNoSuchMessage (removed meanwhile).
func readHeader(sp *spool.Spool, id string, limit int64) (string, error) {
	f, err := sp.OpenMessage(id)
	if err != nil {
		return "", ErrNoSuchMessage
	}
	defer f.Close()
	var hdr strings.Builder
	if err := copyHeaders(&hdr, io.LimitReader(f, limit)); err != nil {
		return "", fmt.Errorf("reading the header of %s: %w", id, err)
	}
	return hdr.String(), nil
}

// Flush makes deferred recipients due now, for one message or (id "")
// all: postqueue -f / -i. It returns how many messages it looked at,
// and the ids whose waits it cut short, for the runner to be told.
func Flush(sp *spool.Spool, id string) (n int, due []string, err error) {
	ids := []string{id}
	if id == "" {
		if ids, err = sp.IDs(); err != nil {
			return 0, nil, err
		}
	}
	for _, qid := range ids {
		err := sp.Modify(qid, func(env *spool.Envelope) (bool, error) {
			n++
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
				return 0, nil, ErrNoSuchMessage
			}
			continue
		}
		due = append(due, qid)
	}
	return n, due, nil
}

// Delete removes messages without notice to anyone (postsuper -d). A
// message being delivered is removed all the same; its delivery may
// still complete, but the record does not come back. It returns the ids
// it removed.
func Delete(sp *spool.Spool, ids []string, logger *zap.Logger) ([]string, error) {
	var done []string
	for _, id := range ids {
		if err := sp.Remove(id); err != nil {
			if errors.Is(err, spool.ErrNotFound) {
				continue
			}
			return done, err
		}
		done = append(done, id)
		maillog.New(logger).Removed(id, "removed by administrator")
	}
	return done, nil
}

// BounceNow fails every pending recipient of a message now and queues a
// bounce to its sender (Postfix's "bounce now"), from the server whose
// name hostname gives. It logs and counts each recipient as a delivery
// attempt by "admin", and returns the bounce's queue id ("" when none is
// due) for the runner to be told.
func BounceNow(sp *spool.Spool, id string, hostname func(server string) (string, bool), logger *zap.Logger, m Metrics) (string, error) {
	var bounceID string
	err := sp.Modify(id, func(env *spool.Envelope) (bool, error) {
		var failed []*spool.Recipient
		for _, rc := range env.Recipients {
			if !rc.Pending() {
				continue
			}
			rc.Status, rc.Done, rc.Code = spool.StatusBounced, time.Now().UTC(), "5.0.0"
			rc.LastError = "returned to sender by the administrator"
			failed = append(failed, rc)
			logAttempt(maillog.New(logger), m, env, rc, delivery.Result{Status: delivery.Bounced, Code: "5.0.0", Reply: rc.LastError, Via: "admin"}, time.Now())
		}
		if len(failed) == 0 {
			return false, ErrNothingPending
		}
		name, _ := hostname(env.Server)
		id, n, err := Bounce(sp, name, env, failed)
		maillog.New(logger).Bounce(env, id, n, len(failed), err)
		bounceID = id
		return !anyPending(env), nil
	})
	if errors.Is(err, spool.ErrNotFound) {
		return "", ErrNoSuchMessage
	}
	return bounceID, err
}
