// Package queue delivers what the spool holds: a scheduler that knows
// when each record is next due, a fixed pool of workers that run one
// attempt at a time per record through the delivery target of the
// accepting server's route, exponential backoff, expiry, loop
// detection, DSN bounces, and the queue operations of the admin API.
//
// The queue knows the app only through Router (a server's hostname and
// its routes) and Metrics; the spool is its storage and its lock.
package queue

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Queue defaults.
const (
	DefaultMaxAge            = 5 * 24 * time.Hour
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

// Router is what the queue needs of the app: the servers that accept
// mail, by name, as the spool records name them.
type Router interface {
	// Hostname is the name of the server, for bounces; ok is false when
	// the server is no longer configured.
	Hostname(server string) (name string, ok bool)
	// Route is the route of the server for a recipient: route tells the
	// server's routes apart (its index), target delivers, via names the
	// target's type for logs and metrics. route is -1 when no route
	// matches, or there is no such server.
	Route(server, rcpt string) (route int, target delivery.Deliverer, via string)
}

// Metrics is what the queue counts.
type Metrics interface {
	// Attempt counts one recipient's delivery attempt; delay is since
	// the message was accepted.
	Attempt(server string, res delivery.Result, delay time.Duration)
	// Handshake counts an outbound TLS handshake: its version, and ok or
	// failed.
	Handshake(server, version, result string)
}

// Options configure a Runner.
type Options struct {
	Spool   *spool.Spool
	Router  Router
	Metrics Metrics
	Logger  *zap.Logger

	MaxAge            time.Duration // 0: DefaultMaxAge
	MinRetryInterval  time.Duration // 0: DefaultMinRetryInterval
	MaxRetryInterval  time.Duration // 0: DefaultMaxRetryInterval
	MaxPerDestination int           // 0: DefaultMaxPerDestination
	StopGrace         time.Duration // 0: DefaultStopGrace
}

// Runner delivers the messages of a spool: a scheduler that knows when
// each record is next due, and a fixed pool of workers. It is the only
// deliverer of its spool while it holds the spool lock.
type Runner struct {
	router  Router
	metrics Metrics
	spool   *spool.Spool
	logger  *zap.Logger
	maillog maillog.Log

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
	pred      atomic.Pointer[Runner]
	succ      atomic.Pointer[Runner]
	stopping  atomic.Bool

	stopSched context.CancelFunc // ends dispatching
	cancel    context.CancelFunc // cuts the deliveries under way
	lockMu    sync.Mutex
	unlock    func()        // the spool lock, while held
	handed    func()        // the spool lock, handed over by the predecessor
	waiting   bool          // Start waits for the lock, and takes a handed one
	handoff   chan struct{} // a lock was handed over
	idle      chan struct{} // closed when no worker is left
	done      chan struct{}
}

// New makes a runner; Start starts it.
func New(o Options) *Runner {
	or := func(d, def time.Duration) time.Duration {
		if d == 0 {
			return def
		}
		return d
	}
	perDest := o.MaxPerDestination
	if perDest == 0 {
		perDest = DefaultMaxPerDestination
	}
	logger := o.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Runner{
		router:   o.Router,
		metrics:  o.Metrics,
		spool:    o.Spool,
		logger:   logger,
		maillog:  maillog.New(logger),
		maxAge:   or(o.MaxAge, DefaultMaxAge),
		minRetry: or(o.MinRetryInterval, DefaultMinRetryInterval),
		maxRetry: or(o.MaxRetryInterval, DefaultMaxRetryInterval),
		perDest:  perDest,
		notify:   make(chan string, 4096),
		wake:     make(chan struct{}, 1),
		work:     make(chan string),
		due:      make(map[string]time.Time),
		inflight: make(map[string]bool),
		destSem:  make(map[string]chan struct{}),
		idle:     make(chan struct{}),
		done:     make(chan struct{}),
		handoff:  make(chan struct{}, 1),
		waiting:  true,

		stopGrace: or(o.StopGrace, DefaultStopGrace),
	}
}

// Start launches the runner with that many workers; it waits for the
// spool lock first.
func (r *Runner) Start(workers int) {
	ctx, cancel := context.WithCancel(context.Background())
	sched, stopSched := context.WithCancel(ctx)
	r.cancel, r.stopSched = cancel, stopSched
	go func() {
		defer close(r.done)
		defer r.releaseLock()
		unlock, err := r.acquireLock(sched)
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
						next.Enqueue(id) // its turn now
					}
				}
			}()
		}
		r.schedule(sched)
		close(r.work)
		if next := r.succ.Load(); next != nil {
			// The next runner knows what is still under way here: it
			// gets the lock itself, so that no other process (waiting
			// for the same spool) can take it in between.
			r.lockMu.Lock()
			u := r.unlock
			r.unlock = nil
			r.lockMu.Unlock()
			if u != nil {
				next.takeLock(u)
			}
		}
		wg.Wait()
		close(r.idle)
	}()
}

// acquireLock waits for the spool lock, or for the predecessor to hand
// its own over (takeLock), whichever comes first.
func (r *Runner) acquireLock(ctx context.Context) (func(), error) {
	lctx, cancel := context.WithCancel(ctx)
	type locked struct {
		unlock func()
		err    error
	}
	own := make(chan locked, 1)
	go func() {
		u, err := r.spool.Lock(lctx)
		own <- locked{u, err}
	}()
	var got locked
	select {
	case got = <-own:
	case <-r.handoff:
		cancel()
		if l := <-own; l.err == nil {
			l.unlock() // not possible while the handed lock is held; harmless
		}
	}
	cancel()
	r.lockMu.Lock()
	r.waiting = false
	handed := r.handed
	r.handed = nil
	r.lockMu.Unlock()
	switch {
	case handed != nil && got.err == nil && got.unlock != nil:
		handed() // both: keep ours (cannot happen: the handed one excludes ours)
		return got.unlock, nil
	case handed != nil:
		if ctx.Err() != nil {
			r.passLock(handed) // stopped before it could deliver
			return nil, ctx.Err()
		}
		return handed, nil
	}
	return got.unlock, got.err
}

// takeLock is the predecessor handing its spool lock over. A runner no
// longer waiting for the lock passes it on to its own successor, or
// lets go of it.
func (r *Runner) takeLock(u func()) {
	r.lockMu.Lock()
	if !r.waiting {
		r.lockMu.Unlock()
		r.passLock(u)
		return
	}
	r.handed = u
	r.lockMu.Unlock()
	select {
	case r.handoff <- struct{}{}:
	default:
	}
}

// passLock gives a lock this runner will not use to its successor, or
// lets go of it.
func (r *Runner) passLock(u func()) {
	if next := r.succ.Load(); next != nil {
		next.takeLock(u)
		return
	}
	u()
}

// releaseLock lets go of the spool lock, once.
func (r *Runner) releaseLock() {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	if r.unlock != nil {
		r.unlock()
		r.unlock = nil
	}
}

// Stop ends dispatching and gives the deliveries under way stopGrace to
// finish; then it cuts them (they stay queued: delivery is at least
// once), logging each, and waits for the runner to let go of the spool.
// next, if not nil, is the runner of the config that replaces this one
// on the same spool: it starts delivering at once, and leaves alone
// what this one still has under way.
func (r *Runner) Stop(next *Runner) {
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
		// What this runner's own predecessor still delivers stays off
		// limits for next (a second reload within the grace period).
		next.pred.CompareAndSwap(r, r.pred.Load())
	}
}

// Enqueue tells the runner about a record just committed; it never
// blocks a session (the rescan finds what does not fit).
func (r *Runner) Enqueue(id string) {
	if r.stopping.Load() {
		if next := r.succ.Load(); next != nil {
			next.Enqueue(id)
		}
		return
	}
	select {
	case r.notify <- id:
	default:
	}
}

// schedule hands due records to the workers until ctx ends.
func (r *Runner) schedule(ctx context.Context) {
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
func (r *Runner) rescan() {
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
func (r *Runner) dispatch(ctx context.Context) time.Time {
	now := time.Now()
	r.mu.Lock()
	var ready []string
	var next time.Time
	pred := r.pred.Load()
	for id, at := range r.due {
		if r.inflight[id] || (pred != nil && pred.Active(id)) {
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

// Reschedule records when a record is next due (the zero time: now),
// and wakes the scheduler so that an earlier time is not missed.
func (r *Runner) Reschedule(id string, at time.Time) {
	r.mu.Lock()
	r.due[id] = at
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Active reports whether a record is being delivered right now, by
// this runner or one of an earlier config that is finishing.
func (r *Runner) Active(id string) bool {
	r.mu.Lock()
	busy := r.inflight[id]
	r.mu.Unlock()
	if p := r.pred.Load(); !busy && p != nil {
		return p.Active(id)
	}
	return busy
}
