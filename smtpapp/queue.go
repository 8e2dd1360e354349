package smtpapp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/textproto"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Queue defaults.
const (
	DefaultWorkers           = 16
	DefaultMaxPerDestination = 10
	DefaultMinRetryInterval  = 5 * time.Minute
	DefaultMaxRetryInterval  = time.Hour
	DefaultStopGrace         = 30 * time.Second

	// MaxReceivedHeaders is the hop count past which a message is taken
	// to be looping and bounced with 5.4.6 (RFC 5321 6.3 suggests 100 at
	// the most; Postfix uses 50, we follow the 30).
	MaxReceivedHeaders = 30

	// rescanInterval is how often the spool directory is listed to find
	// records written by others (the old config's sessions during a
	// reload), on top of the notifications of our own sessions.
	rescanInterval = 5 * time.Second
)

// runner delivers the messages of a spool: a scheduler that knows when
// each record is next due, and a fixed pool of workers. It is the only
// deliverer of its spool while it holds the spool lock.
type runner struct {
	app    *App
	spool  *spool.Spool
	logger *zap.Logger

	maxAge, minRetry, maxRetry time.Duration
	perDest                    int

	notify chan string   // queue ids just committed
	wake   chan struct{} // a record's due time moved earlier
	work   chan string

	mu       sync.Mutex
	due      map[string]time.Time // id -> next attempt
	inflight map[string]bool
	destSem  map[string]chan struct{}

	// A reload hands the spool from one runner to the next: the old one
	// stops dispatching, lets go of the spool lock, and finishes its
	// deliveries under way within stopGrace; the new one leaves those
	// ids alone (pred) and hears of each when it is done (succ).
	stopGrace time.Duration
	pred      atomic.Pointer[runner]
	succ      atomic.Pointer[runner]
	stopping  atomic.Bool

	stopSched context.CancelFunc // ends dispatching
	cancel    context.CancelFunc // cuts the deliveries under way
	lockMu    sync.Mutex
	unlock    func()        // the spool lock, while held
	idle      chan struct{} // closed when no worker is left
	done      chan struct{}
}

func newRunner(a *App) *runner {
	q := a.Queue
	return &runner{
		app:      a,
		spool:    a.spool,
		logger:   a.logger.Named("queue"),
		maxAge:   time.Duration(q.MaxAge),
		minRetry: durationOr(q.MinRetryInterval, DefaultMinRetryInterval),
		maxRetry: durationOr(q.MaxRetryInterval, DefaultMaxRetryInterval),
		perDest:  q.MaxPerDestination,
		notify:   make(chan string, 4096),
		wake:     make(chan struct{}, 1),
		work:     make(chan string),
		due:      make(map[string]time.Time),
		inflight: make(map[string]bool),
		destSem:  make(map[string]chan struct{}),
		idle:     make(chan struct{}),
		done:     make(chan struct{}),

		stopGrace: durationOr(q.StopGrace, DefaultStopGrace),
	}
}

// start launches the runner; it waits for the spool lock first.
func (r *runner) start(workers int) {
	ctx, cancel := context.WithCancel(context.Background())
	sched, stopSched := context.WithCancel(ctx)
	r.cancel, r.stopSched = cancel, stopSched
	go func() {
		defer close(r.done)
		defer r.releaseLock()
		unlock, err := r.spool.Lock(sched)
		if err != nil {
			close(r.idle)
			if !errors.Is(err, context.Canceled) {
				r.logger.Error("cannot lock spool; not delivering", zap.Error(err))
			}
			return
		}
		r.lockMu.Lock()
		r.unlock = unlock
		r.lockMu.Unlock()
		var wg sync.WaitGroup
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for id := range r.work {
					r.attempt(ctx, id)
					r.mu.Lock()
					delete(r.inflight, id)
					r.mu.Unlock()
					if next := r.succ.Load(); next != nil {
						next.enqueue(id) // its turn now
					}
				}
			}()
		}
		r.schedule(sched)
		close(r.work)
		if r.succ.Load() != nil {
			// The next runner knows what is still under way here.
			r.releaseLock()
		}
		wg.Wait()
		close(r.idle)
	}()
}

// releaseLock lets go of the spool lock, once.
func (r *runner) releaseLock() {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	if r.unlock != nil {
		r.unlock()
		r.unlock = nil
	}
}

// stop ends dispatching and gives the deliveries under way stopGrace to
// finish; then it cuts them (they stay queued: delivery is at least
// once), logging each, and waits for the runner to let go of the spool.
// next, if not nil, is the runner of the config that replaces this one
// on the same spool: it starts delivering at once, and leaves alone
// what this one still has under way.
func (r *runner) stop(next *runner) {
	r.stopping.Store(true)
	if next != nil {
		next.pred.Store(r)
		r.succ.Store(next)
	}
	r.stopSched()
	grace := time.NewTimer(r.stopGrace)
	defer grace.Stop()
	select {
	case <-r.idle:
	case <-grace.C:
		r.mu.Lock()
		for id := range r.inflight {
			r.logger.Warn("delivery cut at config unload; it stays queued and is tried again",
				zap.String("queue_id", id), zap.Duration("stop_grace", r.stopGrace))
		}
		r.mu.Unlock()
	}
	r.cancel()
	<-r.done
	if next != nil {
		next.pred.CompareAndSwap(r, nil)
	}
}

// enqueue tells the runner about a record just committed; it never
// blocks a session (the rescan finds what does not fit).
func (r *runner) enqueue(id string) {
	if r.stopping.Load() {
		if next := r.succ.Load(); next != nil {
			next.enqueue(id)
		}
		return
	}
	select {
	case r.notify <- id:
	default:
	}
}

// schedule hands due records to the workers until ctx ends.
func (r *runner) schedule(ctx context.Context) {
	r.rescan()
	rescan := time.NewTicker(rescanInterval)
	defer rescan.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next := r.dispatch(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := time.Until(next)
		if next.IsZero() || wait > rescanInterval {
			wait = rescanInterval
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case id := <-r.notify:
			r.mu.Lock()
			r.due[id] = time.Time{}
			r.mu.Unlock()
		case <-rescan.C:
			r.rescan()
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// rescan lists the spool and adds the records it does not know yet.
func (r *runner) rescan() {
	ids, err := r.spool.IDs()
	if err != nil {
		r.logger.Error("listing spool", zap.Error(err))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if _, ok := r.due[id]; !ok && !r.inflight[id] {
			r.due[id] = time.Time{} // unknown: look at it now
		}
	}
}

// dispatch sends every due record to a worker, oldest first, and
// returns when the next one is due.
func (r *runner) dispatch(ctx context.Context) time.Time {
	now := time.Now()
	r.mu.Lock()
	var ready []string
	var next time.Time
	pred := r.pred.Load()
	for id, at := range r.due {
		if r.inflight[id] || (pred != nil && pred.active(id)) {
			continue // the previous config's runner tells us when it is done
		}
		if !at.After(now) {
			ready = append(ready, id)
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	r.mu.Unlock()
	sort.Strings(ready) // ids sort by arrival
	for _, id := range ready {
		r.mu.Lock()
		r.inflight[id] = true
		delete(r.due, id)
		r.mu.Unlock()
		select {
		case r.work <- id:
		case <-ctx.Done():
			r.mu.Lock()
			delete(r.inflight, id)
			r.due[id] = time.Time{}
			r.mu.Unlock()
			return next
		}
	}
	return next
}

// reschedule records when a record is next due, and wakes the
// scheduler so that an earlier time is not missed.
func (r *runner) reschedule(id string, at time.Time) {
	r.mu.Lock()
	r.due[id] = at
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// backoff is the wait before attempt n+1: exponential from the minimum
// retry interval, capped, with ±25% jitter so that a host coming back
// is not hit by every deferred message at once.
func (r *runner) backoff(attempts int) time.Duration {
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
func (r *runner) destSlot(ctx context.Context, dest string) (release func(), ok bool) {
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
func (r *runner) attempt(ctx context.Context, id string) {
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
			r.reschedule(id, next)
		}
		return
	}

	srv := r.app.Servers[env.Server]
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
	case srv == nil:
		for _, rc := range due {
			results[rc] = delivery.Temporary("4.3.5", "server "+env.Server+" that accepted the message is no longer configured")
		}
	case r.looping(id):
		for _, rc := range due {
			results[rc] = delivery.Permanent("5.4.6", "routing loop detected: more than "+strconv.Itoa(MaxReceivedHeaders)+" Received: headers")
		}
	default:
		r.deliver(ctx, srv, env, due, results)
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
			r.bounce(srv, fresh, bounced)
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
		r.reschedule(id, time.Now().Add(r.minRetry))
	case removed:
		r.logger.Info("removed", zap.String("queue_id", id))
	default:
		r.reschedule(id, earliestPending(env))
	}
}

// active reports whether a record is being delivered right now, by
// this runner or one of an earlier config that is finishing.
func (r *runner) active(id string) bool {
	r.mu.Lock()
	busy := r.inflight[id]
	r.mu.Unlock()
	if p := r.pred.Load(); !busy && p != nil {
		return p.active(id)
	}
	return busy
}

// deliver groups the due recipients by route and destination and runs
// one job per group, each under its destination's concurrency limit.
func (r *runner) deliver(ctx context.Context, srv *Server, env *spool.Envelope, due []*spool.Recipient, results map[*spool.Recipient]delivery.Result) {
	type key struct {
		route int
		dest  string
	}
	groups := make(map[key][]*spool.Recipient)
	var order []key
	for _, rc := range due {
		i := srv.routeFor(rc.Address)
		if i < 0 {
			results[rc] = delivery.Temporary("4.3.5", "no route to the recipient's domain in the current configuration")
			continue
		}
		k := key{i, srv.Routes[i].deliverer.Destination(address.Domain(rc.Address))}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], rc)
	}
	for _, k := range order {
		rcpts := groups[k]
		release, ok := r.destSlot(ctx, k.dest)
		if !ok {
			return
		}
		job := &delivery.Job{
			Envelope:   env,
			Recipients: rcpts,
			Open:       func() (io.ReadSeekCloser, error) { return r.spool.OpenMessage(env.ID) },
			Hostname:   srv.Hostname,
			Logger:     r.logger,
		}
		res := srv.Routes[k.route].deliverer.Deliver(ctx, job)
		release()
		via := srv.Routes[k.route].via
		// One job is at most one new connection (or one per smarthost
		// tried): count its outbound handshake once, not once per
		// recipient, and not at all on a reused session.
		if len(res) > 0 {
			switch tlsOutcome(res[0].TLSVersion, res[0].TLSVerified, res[0].Reply) {
			case "verified", "untrusted":
				if res[0].ConnUse <= 1 {
					r.app.metrics.handshakes.WithLabelValues(env.Server, "out", res[0].TLSVersion, "ok").Inc()
				}
			case "failed":
				r.app.metrics.handshakes.WithLabelValues(env.Server, "out", "", "failed").Inc()
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
func (r *runner) looping(id string) bool {
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
func (r *runner) finish(env *spool.Envelope) {
	if err := r.spool.Remove(env.ID); err != nil && !errors.Is(err, spool.ErrNotFound) {
		r.logger.Error("removing delivered record", zap.String("queue_id", env.ID), zap.Error(err))
		return
	}
	r.logger.Info("removed", zap.String("queue_id", env.ID))
}

// logResult writes the attempt's line for one recipient, with the facts
// of Postfix's "to=<...>, relay=..., delay=..., status=..." line.
func (r *runner) logResult(env *spool.Envelope, rc *spool.Recipient, res delivery.Result, started time.Time) {
	fields := []zap.Field{
		zap.String("queue_id", env.ID),
		zap.String("from", env.From),
		zap.String("to", rc.Address),
		zap.String("relay", res.Remote),
		zap.Duration("delay", time.Since(env.Received)),
		zap.Duration("attempt_duration", time.Since(started)),
		zap.Int("attempts", rc.Attempts),
		zap.String("status", res.Status.String()),
		zap.String("dsn", res.Code),
		zap.String("reply", res.Reply),
		zap.Bool("tls", res.TLSVersion != ""),
	}
	if res.TLSVersion != "" {
		fields = append(fields, zap.String("tls_version", res.TLSVersion),
			zap.String("tls_cipher", res.TLSCipher), zap.Bool("tls_verified", res.TLSVerified))
	}
	if res.ConnUse > 1 {
		// As Postfix: only a reused connection says so.
		fields = append(fields, zap.Int("conn_use", res.ConnUse))
	}
	if res.Status == delivery.Deferred {
		fields = append(fields, zap.Time("next_attempt", rc.NextAttempt))
	}
	r.logger.Info("delivery "+res.Status.String(), fields...)

	m := r.app.metrics
	via := res.Via
	if via == "" {
		via = "none"
	}
	outcome := tlsOutcome(res.TLSVersion, res.TLSVerified, res.Reply)
	m.deliveries.WithLabelValues(env.Server, via, res.Status.String(), outcome).Inc()
	if res.Status != delivery.Deferred {
		m.deliveryDelay.WithLabelValues(env.Server, res.Status.String()).Observe(time.Since(env.Received).Seconds())
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
