package queue

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/textproto"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// backoff is the wait before attempt n+1: exponential from the minimum
// retry interval, capped, with ±25% jitter so that a host coming back
// is not hit by every deferred message at once.
func (r *Runner) backoff(attempts int) time.Duration {
	d := r.minRetry
	for i := 1; i < attempts && d < r.maxRetry; i++ {
		d *= 2
	}
	if d > r.maxRetry {
		d = r.maxRetry
	}
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2))
}

// destSlot limits concurrent deliveries to one destination.
func (r *Runner) destSlot(ctx context.Context, dest string) (release func(), ok bool) {
	r.mu.Lock()
	sem, exists := r.destSem[dest]
	if !exists {
		sem = make(chan struct{}, r.perDest)
		r.destSem[dest] = sem
	}
	r.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, true
	case <-ctx.Done():
		return nil, false
	}
}

// attempt delivers one record's due recipients once, records every
// result durably, bounces what failed for good, and removes the record
// when nothing is left to do.
func (r *Runner) attempt(ctx context.Context, id string) {
	env, err := r.spool.Load(id)
	if errors.Is(err, spool.ErrNotFound) {
		return // delivered or deleted meanwhile
	}
	if err != nil {
		r.logger.Error("unreadable queue record; leaving it for an administrator", zap.String("queue_id", id), zap.Error(err))
		return
	}
	now := time.Now()
	var due []*spool.Recipient
	var next time.Time
	for _, rc := range env.Recipients {
		if !rc.Pending() {
			continue
		}
		if rc.Status == spool.StatusDeferred && rc.NextAttempt.After(now) {
			if next.IsZero() || rc.NextAttempt.Before(next) {
				next = rc.NextAttempt
			}
			continue
		}
		due = append(due, rc)
	}
	if len(due) == 0 {
		if next.IsZero() {
			r.finish(env)
		} else {
			r.Reschedule(id, next)
		}
		return
	}

	hostname, known := r.router.Hostname(env.Server)
	results := make(map[*spool.Recipient]delivery.Result, len(due))
	switch {
	case r.maxAge > 0 && now.Sub(env.Received) > r.maxAge:
		for _, rc := range due {
			reason := "message expired after " + r.maxAge.String() + " in the queue"
			if rc.LastError != "" {
				reason += "; last error: " + rc.LastError
			}
			results[rc] = delivery.Result{Status: delivery.Bounced, Code: "5.4.7", Reply: reason, Remote: rc.Remote}
		}
	case !known:
		for _, rc := range due {
			results[rc] = delivery.Temporary("4.3.5", "server "+env.Server+" that accepted the message is no longer configured")
		}
	case r.looping(id):
		for _, rc := range due {
			results[rc] = delivery.Permanent("5.4.6", "routing loop detected: more than "+strconv.Itoa(MaxReceivedHeaders)+" Received: headers")
		}
	default:
		r.deliver(ctx, hostname, env, due, results)
	}
	if ctx.Err() != nil {
		// Stopped mid-way: results may be partial; what was not
		// recorded is tried again by the next runner.
		if len(results) == 0 {
			return
		}
	}

	// The results go into the record as it is now, not into the copy
	// loaded before a delivery that may have taken minutes: a flush, a
	// bounce or a deletion by an administrator meanwhile stands.
	byAddr := make(map[string]delivery.Result, len(results))
	for rc, res := range results {
		byAddr[rc.Address] = res
	}
	var removed bool
	err = r.spool.Modify(id, func(fresh *spool.Envelope) (bool, error) {
		env = fresh
		var bounced []*spool.Recipient
		for _, rc := range fresh.Recipients {
			res, ok := byAddr[rc.Address]
			if !ok || !rc.Pending() {
				continue
			}
			rc.Attempts++
			rc.LastError, rc.Code, rc.Remote = res.Reply, res.Code, res.Remote
			switch res.Status {
			case delivery.Sent:
				rc.Status, rc.Done, rc.LastError = spool.StatusSent, time.Now().UTC(), ""
			case delivery.Bounced:
				rc.Status, rc.Done = spool.StatusBounced, time.Now().UTC()
				bounced = append(bounced, rc)
			default:
				rc.Status = spool.StatusDeferred
				rc.NextAttempt = time.Now().Add(r.backoff(rc.Attempts)).UTC()
			}
			r.logResult(fresh, rc, res, now)
		}
		// The bounce is committed before the failure is recorded: a
		// crash in between sends it twice rather than never.
		if len(bounced) > 0 {
			r.bounce(hostname, fresh, bounced)
		}
		removed = !anyPending(fresh)
		return removed, nil
	})
	switch {
	case errors.Is(err, spool.ErrNotFound):
		// Deleted by an administrator meanwhile: no bounce, no update,
		// but what happened on the wire is still logged.
		for rc, res := range results {
			r.logResult(env, rc, res, now)
		}
		r.logger.Info("record deleted during delivery", zap.String("queue_id", id))
		return
	case err != nil:
		r.logger.Error("recording delivery results", zap.String("queue_id", id), zap.Error(err))
		r.Reschedule(id, time.Now().Add(r.minRetry))
	case removed:
		r.maillog.Removed(id, "removed")
	default:
		r.Reschedule(id, earliestPending(env))
	}
}

// deliver groups the due recipients by route and destination and runs
// one job per group, each under its destination's concurrency limit.
func (r *Runner) deliver(ctx context.Context, hostname string, env *spool.Envelope, due []*spool.Recipient, results map[*spool.Recipient]delivery.Result) {
	type key struct {
		route int
		dest  string
	}
	type group struct {
		target delivery.Deliverer
		via    string
		rcpts  []*spool.Recipient
	}
	groups := make(map[key]*group)
	var order []key
	for _, rc := range due {
		i, target, via := r.router.Route(env.Server, rc.Address)
		if i < 0 {
			results[rc] = delivery.Temporary("4.3.5", "no route to the recipient's domain in the current configuration")
			continue
		}
		k := key{i, target.Destination(address.Domain(rc.Address))}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
			groups[k] = &group{target: target, via: via}
		}
		groups[k].rcpts = append(groups[k].rcpts, rc)
	}
	for _, k := range order {
		g := groups[k]
		rcpts := g.rcpts
		release, ok := r.destSlot(ctx, k.dest)
		if !ok {
			return
		}
		job := &delivery.Job{
			Envelope:   env,
			Recipients: rcpts,
			Open:       func() (io.ReadSeekCloser, error) { return r.spool.OpenMessage(env.ID) },
			Hostname:   hostname,
			Logger:     r.logger,
		}
		res := g.target.Deliver(ctx, job)
		release()
		via := g.via
		// One job is at most one new connection (or one per smarthost
		// tried): count its outbound handshake once, not once per
		// recipient, and not at all on a reused session.
		if len(res) > 0 && r.metrics != nil {
			switch res[0].TLSOutcome() {
			case delivery.TLSVerified, delivery.TLSUntrusted:
				if res[0].ConnUse <= 1 {
					r.metrics.Handshake(env.Server, res[0].TLSVersion, "ok")
				}
			case delivery.TLSFailure:
				r.metrics.Handshake(env.Server, "", "failed")
			}
		}
		if ctx.Err() != nil {
			return // an attempt cut short proves nothing; retry later
		}
		for i, rc := range rcpts {
			if i < len(res) {
				results[rc] = res[i]
			} else {
				results[rc] = delivery.Temporary("4.3.0", "delivery target returned no result")
			}
			r := results[rc]
			r.Via = via
			results[rc] = r
		}
	}
}

// looping counts the Received: headers of the stored message.
func (r *Runner) looping(id string) bool {
	f, err := r.spool.OpenMessage(id)
	if err != nil {
		return false
	}
	defer f.Close()
	// Header sections are bounded by max_message_size; reading at most
	// 1 MiB of them is plenty for 30 lines.
	tp := textproto.NewReader(bufio.NewReader(io.LimitReader(f, 1<<20)))
	hdr, _ := tp.ReadMIMEHeader()
	return len(hdr.Values("Received")) > MaxReceivedHeaders
}

// finish removes a record none of whose recipients is pending.
func (r *Runner) finish(env *spool.Envelope) {
	if err := r.spool.Remove(env.ID); err != nil && !errors.Is(err, spool.ErrNotFound) {
		r.logger.Error("removing delivered record", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	r.maillog.Removed(env.ID, "removed")
}

// logResult writes the attempt's line for one recipient and counts it.
func (r *Runner) logResult(env *spool.Envelope, rc *spool.Recipient, res delivery.Result, started time.Time) {
	logAttempt(r.maillog, r.metrics, env, rc, res, started)
}

// logAttempt is logResult for any mail log and metrics.
func logAttempt(ml maillog.Log, m Metrics, env *spool.Envelope, rc *spool.Recipient, res delivery.Result, started time.Time) {
	ml.Delivery(env, rc, res, started)
	if m != nil {
		m.Attempt(env.Server, res, time.Since(env.Received))
	}
}

func anyPending(env *spool.Envelope) bool {
	for _, rc := range env.Recipients {
		if rc.Pending() {
			return true
		}
	}
	return false
}

func earliestPending(env *spool.Envelope) time.Time {
	var t time.Time
	for _, rc := range env.Recipients {
		if rc.Pending() && (t.IsZero() || rc.NextAttempt.Before(t)) {
			t = rc.NextAttempt
		}
	}
	return t
}
