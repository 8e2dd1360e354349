package delivery

import (
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Limits of connection reuse, after Postfix's connection cache
// (smtp_connection_cache_time_limit, smtp_connection_reuse_time_limit):
// an idle connection is kept a few seconds, and no connection is used
// for longer than a few minutes or for more than a number of messages.
const (
	PoolIdleTimeout = 5 * time.Second
	PoolMaxAge      = 5 * time.Minute
	PoolMaxUses     = 100
	// PoolMaxIdle bounds the idle connections kept per next hop; the
	// queue's per-destination limit bounds how many are busy.
	PoolMaxIdle = 32
	// PoolMaxIdleTotal bounds the idle connections kept in all, for a
	// target (mx) that talks to many next hops at once.
	PoolMaxIdleTotal = 256
)

// Pool keeps SMTP client sessions open between deliveries to the same
// next hop, so that a busy destination costs one TCP connection, one
// greeting, one STARTTLS handshake and one EHLO for many messages rather
// than for each. A session goes back into the pool only after a
// transaction that ended cleanly (the final reply to the message data,
// or an RSET answered 250), and a session taken from it that fails
// before the next hop accepted anything is replaced by a new connection
// in the same attempt, so reuse never costs a delivery.
//
// go-smtp's client has no pool, and neither does any well-kept Go
// library for SMTP, so it is written here. The zero value is not usable:
// call NewPool. A nil *Pool is valid and keeps nothing.
type Pool struct {
	limits PoolLimits

	mu     sync.Mutex
	idle   map[poolKey][]*clientSession
	total  int // sessions in idle
	closed bool
	reaper *time.Timer
}

// poolKey is what a session must match to be reused: the same next hop
// under the same TLS requirement, credentials and EHLO name. A session
// in plaintext (level may after a failed handshake, or level none) is
// never handed to an attempt that wants TLS.
type poolKey struct {
	addr, host string
	// nextHop is set when the level's certificate check depends on it
	// (secure; match nexthop): a session verified for one domain is not
	// one for another.
	nextHop  string
	level    Level
	wantTLS  bool
	policy   *ClientTLS
	creds    *Credentials
	hostname string
}

// clientSession is one open, greeted SMTP client connection.
type clientSession struct {
	c *smtp.Client
	// conn is the TCP connection beneath c, closed to abort an attempt.
	conn      net.Conn
	remote    string
	facts     tlsFacts
	created   time.Time
	idleSince time.Time
	uses      int
}

// PoolLimits bound how sessions are reused; zero fields take the
// defaults (PoolIdleTimeout, PoolMaxAge, PoolMaxUses, PoolMaxIdle,
// PoolMaxIdleTotal).
type PoolLimits struct {
	// IdleTimeout is how long a session waits in the pool for its next
	// transaction before it is closed.
	IdleTimeout time.Duration
	// MaxAge is how long after its connection a session is last reused.
	MaxAge time.Duration
	// MaxUses is how many transactions one session carries at most.
	MaxUses int
	// MaxIdle is how many idle sessions are kept per next hop.
	MaxIdle int
	// MaxIdleTotal is how many idle sessions are kept in all.
	MaxIdleTotal int
}

// NewPool returns an empty pool with the default limits.
func NewPool() *Pool { return NewPoolWithLimits(PoolLimits{}) }

// NewPoolWithLimits returns an empty pool with the given limits.
func NewPoolWithLimits(l PoolLimits) *Pool {
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = PoolIdleTimeout
	}
	if l.MaxAge <= 0 {
		l.MaxAge = PoolMaxAge
	}
	if l.MaxUses <= 0 {
		l.MaxUses = PoolMaxUses
	}
	if l.MaxIdle <= 0 {
		l.MaxIdle = PoolMaxIdle
	}
	if l.MaxIdleTotal <= 0 {
		l.MaxIdleTotal = PoolMaxIdleTotal
	}
	return &Pool{limits: l, idle: make(map[poolKey][]*clientSession)}
}

// get takes the most recently used idle session for k, if any is still
// young enough.
func (p *Pool) get(k poolKey) *clientSession {
	if p == nil {
		return nil
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[k]
	for len(list) > 0 {
		s := list[len(list)-1]
		list = list[:len(list)-1]
		if !p.expired(s, now) {
			p.setIdle(k, list)
			return s
		}
		go s.quit()
	}
	p.setIdle(k, list)
	return nil
}

// put returns a session after a clean transaction; it is closed instead
// when it has served its share or the pool is full or closed.
func (p *Pool) put(k poolKey, s *clientSession) {
	if p == nil {
		s.quit()
		return
	}
	s.uses++
	now := time.Now()
	if s.uses >= p.limits.MaxUses || now.Sub(s.created) >= p.limits.MaxAge {
		s.quit()
		return
	}
	s.idleSince = now
	p.mu.Lock()
	if p.closed || len(p.idle[k]) >= p.limits.MaxIdle || p.total >= p.limits.MaxIdleTotal {
		p.mu.Unlock()
		s.quit()
		return
	}
	p.setIdle(k, append(p.idle[k], s))
	if p.reaper == nil {
		p.reaper = time.AfterFunc(p.limits.IdleTimeout, p.reap)
	}
	p.mu.Unlock()
}

// expired says a session may no longer be used.
func (p *Pool) expired(s *clientSession, now time.Time) bool {
	return now.Sub(s.idleSince) >= p.limits.IdleTimeout || now.Sub(s.created) >= p.limits.MaxAge
}

func (p *Pool) setIdle(k poolKey, list []*clientSession) {
	p.total += len(list) - len(p.idle[k])
	if len(list) == 0 {
		delete(p.idle, k)
	} else {
		p.idle[k] = list
	}
}

// reap closes the sessions idle for too long; it runs while any session
// is idle.
func (p *Pool) reap() {
	now := time.Now()
	var expired []*clientSession
	p.mu.Lock()
	for k, list := range p.idle {
		kept := list[:0]
		for _, s := range list {
			if p.expired(s, now) {
				expired = append(expired, s)
			} else {
				kept = append(kept, s)
			}
		}
		p.setIdle(k, kept)
	}
	if len(p.idle) > 0 && !p.closed {
		p.reaper = time.AfterFunc(p.limits.IdleTimeout/2, p.reap)
	} else {
		p.reaper = nil
	}
	p.mu.Unlock()
	for _, s := range expired {
		s.quit()
	}
}

// Close says QUIT to every idle session and keeps no more; sessions in
// use are closed when their attempt ends.
func (p *Pool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	if p.reaper != nil {
		p.reaper.Stop()
		p.reaper = nil
	}
	var all []*clientSession
	for _, list := range p.idle {
		all = append(all, list...)
	}
	p.idle = make(map[poolKey][]*clientSession)
	p.total = 0
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.quit()
		}()
	}
	wg.Wait()
}

// Idle returns how many sessions the pool holds, for tests and metrics.
func (p *Pool) Idle() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// quitTimeout bounds the goodbye to a next hop.
const quitTimeout = 5 * time.Second

// quit says QUIT, briefly, and closes the connection.
func (s *clientSession) quit() {
	t := time.AfterFunc(quitTimeout, func() { s.c.Close() })
	s.c.Quit()
	t.Stop()
	s.c.Close()
}
