package queue

import (
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Quarantine administration: the messages a content check quarantined
// are listed, shown, released into the queue or deleted, as Postfix's
// hold queue is with mailq, postcat, postsuper -H / -r and postsuper -d.
// Each operation is a function of the quarantine's spool (and, for a
// release, the queue's), whose updates are serialized with the
// expiry's: releasing or deleting a message the expiry removes meanwhile
// is ErrNoSuchMessage, never an error of the spool.

// maxSubjectHeader bounds what a quarantine listing reads of each
// message to find its Subject: a Subject after the first 64 KiB of the
// header section is not shown.
const maxSubjectHeader = 64 << 10

// QuarantineEntry is one message of a quarantine listing.
type QuarantineEntry struct {
	// ID is the queue id; a released message keeps it in the queue.
	ID string `json:"id"`
	// Server is the name of the smtp server that accepted the message.
	Server string `json:"server"`
	// From is the envelope sender; empty for the null sender.
	From string `json:"from"`
	// To are the envelope recipients' addresses.
	To []string `json:"to"`
	// Subject is the message's Subject, RFC 2047 encoded words
	// decoded (left as they are in a charset Go does not know),
	// unfolded; empty when it has none.
	Subject string `json:"subject"`
	// Check is the name of the check that quarantined the message
	// (clamav, rspamd, milter).
	Check string `json:"check"`
	// Reason is what that check found: a virus signature, rspamd's
	// symbols, a milter's reason.
	Reason string `json:"reason"`
	// Reasons are the other checks' findings on the message, one line
	// each, in the order they ran.
	Reasons []string `json:"reasons"`
	// Size of the stored message in bytes, our Received: header
	// included.
	Size int64 `json:"size"`
	// Received is when the message was accepted.
	Received time.Time `json:"received"`
	// QuarantinedAt is when the check quarantined it.
	QuarantinedAt time.Time `json:"quarantined_at"`
	// Client is who handed the message to us.
	Client spool.Client `json:"client"`
}

func quarantineEntryOf(env *spool.Envelope, header string) QuarantineEntry {
	e := QuarantineEntry{ID: env.ID, Server: env.Server, From: env.From, To: make([]string, len(env.Recipients)),
		Subject: subject(header), Reasons: []string{}, Size: env.Size, Received: env.Received, Client: env.Client}
	for i, r := range env.Recipients {
		e.To[i] = r.Address
	}
	if q := env.Quarantine; q != nil {
		e.Check, e.Reason, e.QuarantinedAt = q.Check, q.Reason, q.At
		if q.Reasons != nil {
			e.Reasons = q.Reasons
		}
	}
	return e
}

// QuarantineList lists the quarantine q, oldest first, as List lists
// the queue: the messages that match filter, the page from offset of at
// most limit entries (limit 0: all), and the number of matches in all.
// Only the page's messages are opened, for their Subject.
func QuarantineList(q *spool.Spool, filter Filter, offset, limit int) ([]QuarantineEntry, int, error) {
	ids, err := q.IDs()
	if err != nil {
		return nil, 0, fmt.Errorf("listing the quarantine: %w", err)
	}
	var out []QuarantineEntry
	total := 0
	for _, id := range ids {
		env, err := q.Load(id)
		if err != nil {
			continue // released, deleted or expired meanwhile, or unreadable
		}
		if !filter.matches(env) {
			continue
		}
		if total >= offset && (limit <= 0 || len(out) < limit) {
			hdr, err := readHeader(q, id, maxSubjectHeader)
			if errors.Is(err, ErrNoSuchMessage) {
				continue // gone since Load: not counted either
			}
			if err != nil {
				return nil, 0, err
			}
			out = append(out, quarantineEntryOf(env, hdr))
		}
		total++
	}
	return out, total, nil
}

// QuarantineShow returns one quarantined message's entry and its header
// section, as Show does for the queue.
func QuarantineShow(q *spool.Spool, id string) (QuarantineEntry, string, error) {
	env, err := q.Load(id)
	if errors.Is(err, spool.ErrNotFound) {
		return QuarantineEntry{}, "", ErrNoSuchMessage
	}
	if err != nil {
		return QuarantineEntry{}, "", fmt.Errorf("reading quarantined message %s: %w", id, err)
	}
	hdr, err := readHeader(q, id, maxShownHeader)
	if err != nil {
		return QuarantineEntry{}, "", err
	}
	return quarantineEntryOf(env, hdr), hdr, nil
}

// QuarantineRelease moves a message from the quarantine q into the
// queue sp, durably (spool.MoveTo), for the caller to tell the delivery
// runner. Its quarantine record is cleared, and its arrival time becomes
// the release's, as postsuper -r does for mail kept on hold: max_age
// counts from the release, so a message quarantined for longer than
// max_age is delivered, not bounced as expired before its first
// attempt. It returns ErrNoSuchMessage when id is not quarantined.
func QuarantineRelease(q, sp *spool.Spool, id string, logger *zap.Logger) error {
	err := q.MoveTo(id, sp, func(env *spool.Envelope) error {
		env.Quarantine = nil
		env.Received = time.Now().UTC()
		return nil
	})
	if errors.Is(err, spool.ErrNotFound) {
		return ErrNoSuchMessage
	}
	if err != nil {
		return fmt.Errorf("releasing %s from the quarantine: %w", id, err)
	}
	maillog.New(logger).Removed(id, "released from the quarantine by administrator")
	return nil
}

// QuarantineDelete removes a message from the quarantine q without
// notice to anyone. It returns ErrNoSuchMessage when id is not
// quarantined.
func QuarantineDelete(q *spool.Spool, id string, logger *zap.Logger) error {
	err := q.Remove(id)
	if errors.Is(err, spool.ErrNotFound) {
		return ErrNoSuchMessage
	}
	if err != nil {
		return fmt.Errorf("deleting %s from the quarantine: %w", id, err)
	}
	maillog.New(logger).Removed(id, "removed from the quarantine by administrator")
	return nil
}

// subject returns the first Subject field of a header section (as
// readHeader returns it), unfolded, its runs of white space made one
// space, and its RFC 2047 encoded words decoded; encoded words in a
// charset the decoder does not know are left as they are. It returns ""
// when there is no Subject field.
func subject(header string) string {
	var raw strings.Builder
	found := false
	for line := range strings.Lines(header) {
		if found {
			if line[0] != ' ' && line[0] != '\t' {
				break
			}
			raw.WriteString(line) // a continuation line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimRight(name, " \t"), "Subject") {
			raw.WriteString(value)
			found = true
		}
	}
	s := strings.Join(strings.Fields(raw.String()), " ")
	if dec, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
		s = dec
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
