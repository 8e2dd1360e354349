package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// These tests run the runner against a fake delivery target and a real
// spool in a temporary directory, without Caddy.

// target is a fake delivery target: each Deliver call asks answer for
// the results (one per recipient) and records the call.
type target struct {
	mu     sync.Mutex
	calls  []call
	answer func(n int, rcpts []string) []delivery.Result // n: the call's number, from 1
	hold   chan struct{}                                 // if set, Deliver waits for it (or ctx)
	inside chan string                                   // if set, gets each job's queue id on entry
}

type call struct {
	id    string
	from  string
	rcpts []string
	body  string
}

func (f *target) Destination(domain string) string { return "fake:" + domain }

func (f *target) Deliver(ctx context.Context, job *delivery.Job) []delivery.Result {
	var rcpts []string
	for _, r := range job.Recipients {
		rcpts = append(rcpts, r.Address)
	}
	var body string
	if m, err := job.Open(); err == nil {
		b, _ := io.ReadAll(m)
		m.Close()
		body = string(b)
	}
	f.mu.Lock()
	f.calls = append(f.calls, call{job.Envelope.ID, job.Envelope.From, rcpts, body})
	n := len(f.calls)
	f.mu.Unlock()
	if f.inside != nil {
		f.inside <- job.Envelope.ID
	}
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return delivery.All(delivery.Temporary("4.4.2", "cut"), len(rcpts))
		}
	}
	return f.answer(n, rcpts)
}

// callsOf counts the attempts of one record.
func (f *target) callsOf(id string) int {
	n := 0
	for _, c := range f.Calls() {
		if c.id == id {
			n++
		}
	}
	return n
}

func (f *target) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// router routes every recipient of server "mx" to one target.
type router struct{ t *target }

func (r router) Hostname(server string) (string, bool) { return "mx.example.test", server == "mx" }
func (r router) Route(server, rcpt string) (int, delivery.Deliverer, string) {
	if server != "mx" {
		return -1, nil, ""
	}
	return 0, r.t, "fake"
}

// counts is a fake Metrics.
type counts struct {
	mu       sync.Mutex
	attempts map[string]int // status
}

func (c *counts) Attempt(server string, res delivery.Result, delay time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.attempts == nil {
		c.attempts = map[string]int{}
	}
	c.attempts[res.Status.String()]++
}
func (c *counts) Handshake(server, version, result string) {}

type rig struct {
	sp *spool.Spool
	t  *target
	m  *counts
	r  *Runner
}

func newRig(t *testing.T, answer func(n int, rcpts []string) []delivery.Result, o Options) *rig {
	t.Helper()
	sp, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	g := &rig{sp: sp, t: &target{answer: answer}, m: &counts{}}
	o.Spool, o.Router, o.Metrics = sp, router{g.t}, g.m
	if o.MinRetryInterval == 0 {
		o.MinRetryInterval, o.MaxRetryInterval = 20*time.Millisecond, 40*time.Millisecond
	}
	if o.StopGrace == 0 {
		o.StopGrace = 5 * time.Second
	}
	g.r = New(o)
	return g
}

func (g *rig) start(t *testing.T) {
	g.r.Start(4)
	t.Cleanup(func() { g.r.Stop(nil) })
}

// commit queues a message from sender to rcpts, accepted at received.
func (g *rig) commit(t *testing.T, from string, rcpts []string, headers string, received time.Time) string {
	t.Helper()
	d, err := g.sp.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, headers+"Subject: test\r\n\r\nbody\r\n")
	env := &spool.Envelope{Server: "mx", From: from, Received: received.UTC(),
		Client: spool.Client{IP: "192.0.2.1", Helo: "client.test", Protocol: "ESMTP"}}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, &spool.Recipient{Address: r, Status: spool.StatusQueued})
	}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	g.r.Enqueue(env.ID)
	return env.ID
}

// wait waits for cond, polling.
func wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (g *rig) gone(id string) bool {
	_, err := g.sp.Load(id)
	return errors.Is(err, spool.ErrNotFound)
}

// bounces returns the bounces (null sender), queued or delivered, by
// recipient, and their bodies.
func (g *rig) bounces(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, c := range g.t.Calls() {
		if c.from == "" {
			out[c.rcpts[0]] = c.body
		}
	}
	ids, _ := g.sp.IDs()
	for _, id := range ids {
		env, err := g.sp.Load(id)
		if err != nil || env.From != "" {
			continue
		}
		m, err := g.sp.OpenMessage(id)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(m)
		m.Close()
		out[env.Recipients[0].Address] = string(b)
	}
	return out
}

func sent(n int) []delivery.Result {
	return delivery.All(delivery.Result{Status: delivery.Sent, Code: "2.0.0", Reply: "250 ok"}, n)
}

// TestBackoff: the wait doubles from the minimum, stops at the maximum,
// and is jittered by at most ±25%.
func TestBackoff(t *testing.T) {
	r := New(Options{MinRetryInterval: time.Minute, MaxRetryInterval: 16 * time.Minute})
	for attempts, base := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute,
		5: 16 * time.Minute, 9: 16 * time.Minute, 50: 16 * time.Minute} {
		lo, hi := base*3/4, base*5/4
		seen := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			d := r.backoff(attempts)
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", attempts, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 100 {
			t.Fatalf("backoff(%d): only %d distinct waits in 200: no jitter", attempts, len(seen))
		}
	}
}

// TestPartialDelivery: one recipient sent, one deferred: the record
// stays for the deferred one only, which is retried and sent; then the
// record is gone. The sent recipient is never sent twice.
func TestPartialDelivery(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result {
		var out []delivery.Result
		for _, r := range rcpts {
			if r == "later@example.test" && n == 1 {
				out = append(out, delivery.Temporary("4.2.0", "mailbox busy"))
			} else {
				out = append(out, sent(1)[0])
			}
		}
		return out
	}, Options{})
	g.start(t)
	id := g.commit(t, "a@sender.test", []string{"now@example.test", "later@example.test"}, "", time.Now())
	wait(t, "the record removed", func() bool { return g.gone(id) })
	calls := g.t.Calls()
	if len(calls) != 2 || strings.Join(calls[0].rcpts, ",") != "now@example.test,later@example.test" ||
		strings.Join(calls[1].rcpts, ",") != "later@example.test" {
		t.Fatalf("calls %+v, want both then the deferred one alone", calls)
	}
	if len(g.bounces(t)) != 0 {
		t.Fatal("a bounce for a partial delivery that succeeded")
	}
}

// TestDeferThenSend: 4xx, then 2xx on the retry; the deferral is
// recorded durably in between.
func TestDeferThenSend(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result {
		if n == 1 {
			return delivery.All(delivery.Result{Status: delivery.Deferred, Code: "4.4.1", Reply: "451 try later"}, len(rcpts))
		}
		return sent(len(rcpts))
	}, Options{MinRetryInterval: 300 * time.Millisecond, MaxRetryInterval: time.Second})
	g.start(t)
	id := g.commit(t, "a@sender.test", []string{"b@example.test"}, "", time.Now())
	wait(t, "the deferral recorded", func() bool {
		env, err := g.sp.Load(id)
		return err == nil && env.Recipients[0].Status == spool.StatusDeferred
	})
	env, _ := g.sp.Load(id)
	rc := env.Recipients[0]
	if rc.Attempts != 1 || rc.LastError != "451 try later" || rc.Code != "4.4.1" || time.Until(rc.NextAttempt) <= 0 {
		t.Fatalf("deferred recipient %+v", rc)
	}
	wait(t, "the record removed", func() bool { return g.gone(id) })
	if n := len(g.t.Calls()); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
	g.m.mu.Lock()
	defer g.m.mu.Unlock()
	if g.m.attempts["deferred"] != 1 || g.m.attempts["sent"] != 1 {
		t.Fatalf("metrics %v", g.m.attempts)
	}
}

// TestPermanentFailureBounces: 5xx bounces at once with a DSN to the
// sender; the null sender gets none.
func TestPermanentFailureBounces(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result {
		var out []delivery.Result
		for _, r := range rcpts {
			if strings.HasPrefix(r, "bounce") {
				out = append(out, delivery.Result{Status: delivery.Bounced, Code: "5.1.1", Reply: "550 5.1.1 no such user", Remote: "mx[192.0.2.9]:25"})
			} else {
				out = append(out, delivery.Result{Status: delivery.Deferred, Code: "4.0.0", Reply: "hold"})
			}
		}
		return out
	}, Options{MinRetryInterval: time.Hour, MaxRetryInterval: time.Hour})
	g.start(t)
	id := g.commit(t, "sender@sender.test", []string{"bounce@example.test"}, "", time.Now())
	wait(t, "the record removed", func() bool { return g.gone(id) })
	b := g.bounces(t)["sender@sender.test"]
	for _, want := range []string{"Final-Recipient: rfc822; bounce@example.test", "Status: 5.1.1",
		"Diagnostic-Code: smtp; 550 5.1.1 no such user", "Remote-MTA: dns; mx", "Reporting-MTA: dns; mx.example.test"} {
		if !strings.Contains(b, want) {
			t.Fatalf("bounce lacks %q:\n%s", want, b)
		}
	}
	// A bounce that bounces: no bounce of the bounce.
	id2 := g.commit(t, "", []string{"bounce2@example.test"}, "", time.Now())
	wait(t, "the null-sender record removed", func() bool { return g.gone(id2) })
	time.Sleep(50 * time.Millisecond) // a sleep: no bounce of it comes in this time
	if _, ok := g.bounces(t)[""]; ok {
		t.Fatal("a bounce to the null sender")
	}
	if ids, _ := g.sp.IDs(); len(ids) != 1 { // the first bounce, deferred
		t.Fatalf("records left: %v, want the first bounce only", ids)
	}
}

// TestExpiry: a message older than max_age bounces with 5.4.7 without
// another attempt, with the last error in the report.
func TestExpiry(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{MaxAge: time.Hour})
	d, _ := g.sp.Create()
	io.WriteString(d, "Subject: old\r\n\r\nbody\r\n")
	env := &spool.Envelope{Server: "mx", From: "s@sender.test", Received: time.Now().Add(-2 * time.Hour).UTC(),
		Recipients: []*spool.Recipient{{Address: "b@example.test", Status: spool.StatusDeferred, Attempts: 3, LastError: "451 still busy"}}}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	g.start(t)
	g.r.Enqueue(env.ID)
	wait(t, "the record removed", func() bool { return g.gone(env.ID) })
	if n := g.t.callsOf(env.ID); n != 0 {
		t.Fatalf("%d attempts of an expired message", n)
	}
	b := g.bounces(t)["s@sender.test"]
	if !strings.Contains(b, "Status: 5.4.7") || !strings.Contains(b, "last error: 451 still busy") {
		t.Fatalf("expiry bounce:\n%s", b)
	}
}

// TestLoopDetection: more than MaxReceivedHeaders Received: headers
// bounce with 5.4.6 without an attempt.
func TestLoopDetection(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{})
	g.start(t)
	var hdr strings.Builder
	for i := 0; i <= MaxReceivedHeaders; i++ {
		fmt.Fprintf(&hdr, "Received: from hop%d.test by hop%d.test; Tue, 1 Dec 2026 00:00:00 +0000\r\n", i, i+1)
	}
	id := g.commit(t, "s@sender.test", []string{"b@example.test"}, hdr.String(), time.Now())
	wait(t, "the record removed", func() bool { return g.gone(id) })
	if n := g.t.callsOf(id); n != 0 {
		t.Fatalf("%d attempts of a looping message", n)
	}
	if b := g.bounces(t)["s@sender.test"]; !strings.Contains(b, "Status: 5.4.6") {
		t.Fatalf("loop bounce:\n%s", b)
	}
	// Exactly MaxReceivedHeaders is no loop.
	var ok strings.Builder
	for i := 0; i < MaxReceivedHeaders; i++ {
		fmt.Fprintf(&ok, "Received: from hop%d.test; Tue, 1 Dec 2026 00:00:00 +0000\r\n", i)
	}
	id2 := g.commit(t, "s2@sender.test", []string{"b@example.test"}, ok.String(), time.Now())
	wait(t, "delivered", func() bool { return g.gone(id2) })
	if n := g.t.callsOf(id2); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

// TestDeleteDuringAttempt: a record deleted while it is being delivered
// does not come back, and no bounce is sent for it, whatever the
// attempt's outcome.
func TestDeleteDuringAttempt(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result {
		return delivery.All(delivery.Result{Status: delivery.Bounced, Code: "5.0.0", Reply: "550 no"}, len(rcpts))
	}, Options{})
	g.t.hold, g.t.inside = make(chan struct{}), make(chan string, 1)
	g.start(t)
	id := g.commit(t, "s@sender.test", []string{"b@example.test"}, "", time.Now())
	<-g.t.inside
	if !g.r.Active(id) {
		t.Fatal("not active during its attempt")
	}
	if done, err := Delete(g.sp, []string{id}, g.r.logger); err != nil || len(done) != 1 {
		t.Fatalf("Delete: %v %v", done, err)
	}
	close(g.t.hold)
	wait(t, "the attempt over", func() bool { return !g.r.Active(id) })
	if !g.gone(id) {
		t.Fatal("deleted record came back")
	}
	if n := len(g.bounces(t)); n != 0 {
		t.Fatalf("%d bounces for a deleted message", n)
	}
}

// TestFlushDuringAttempt: a flush while an attempt is under way stands:
// the deferral the attempt records does not hide it, and the recipient
// is tried again at once, not after the backoff.
func TestFlushDuringAttempt(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result {
		if n == 1 {
			return delivery.All(delivery.Temporary("4.0.0", "busy"), len(rcpts))
		}
		return sent(len(rcpts))
	}, Options{MinRetryInterval: time.Hour, MaxRetryInterval: time.Hour})
	g.start(t)
	id := g.commit(t, "s@sender.test", []string{"b@example.test"}, "", time.Now())
	wait(t, "deferred for an hour", func() bool {
		env, err := g.sp.Load(id)
		return err == nil && env.Recipients[0].Status == spool.StatusDeferred
	})
	n, due, err := Flush(g.sp, id)
	if err != nil || n != 1 || len(due) != 1 {
		t.Fatalf("Flush: %d %v %v", n, due, err)
	}
	g.r.Reschedule(id, time.Time{})
	wait(t, "sent after the flush", func() bool { return g.gone(id) })
	if _, _, err := Flush(g.sp, id); !errors.Is(err, ErrNoSuchMessage) {
		t.Fatalf("Flush of a delivered message: %v", err)
	}
}

// TestBounceNowNeedsNoRunner: the admin's "bounce now" works on a held
// queue (no runner), and the bounce it queues is a record like any.
func TestBounceNowNeedsNoRunner(t *testing.T) {
	sp, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	d, _ := sp.Create()
	io.WriteString(d, "Subject: x\r\n\r\nbody\r\n")
	env := &spool.Envelope{Server: "mx", From: "s@sender.test", Received: time.Now().UTC(),
		Recipients: []*spool.Recipient{{Address: "b@example.test", Status: spool.StatusQueued}}}
	if err := d.Commit(env); err != nil {
		t.Fatal(err)
	}
	m := &counts{}
	hostname := func(string) (string, bool) { return "gw.example.test", true }
	bounceID, err := BounceNow(sp, env.ID, hostname, zapNop(), m)
	if err != nil || bounceID == "" {
		t.Fatalf("BounceNow: %q %v", bounceID, err)
	}
	if _, err := sp.Load(env.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Fatalf("bounced message still queued: %v", err)
	}
	b, err := sp.Load(bounceID)
	if err != nil || b.From != "" || b.Recipients[0].Address != "s@sender.test" {
		t.Fatalf("bounce record %+v %v", b, err)
	}
	if m.attempts["bounced"] != 1 {
		t.Fatalf("metrics %v", m.attempts)
	}
	if _, err := BounceNow(sp, env.ID, hostname, zapNop(), m); !errors.Is(err, ErrNoSuchMessage) {
		t.Fatalf("second BounceNow: %v", err)
	}
}

// TestHandover: a runner stopped with a successor lets the successor
// deliver at once, leaves it the record it is still delivering, and
// finishes that record itself; nothing is delivered twice.
func TestHandover(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{})
	g.t.hold, g.t.inside = make(chan struct{}), make(chan string, 16)
	g.r.Start(4)
	slow := g.commit(t, "s@sender.test", []string{"slow@example.test"}, "", time.Now())
	<-g.t.inside
	next := New(Options{Spool: g.sp, Router: router{g.t}, Metrics: g.m, StopGrace: 5 * time.Second})
	next.Start(4)
	defer next.Stop(nil)
	stopped := make(chan struct{})
	go func() { g.r.Stop(next); close(stopped) }()
	wait(t, "the successor to know its predecessor", func() bool { return next.pred.Load() != nil })
	if !next.Active(slow) {
		t.Fatal("the successor does not see the predecessor's delivery as active")
	}
	// The successor delivers new mail while the old delivery goes on.
	fresh := g.commit(t, "s@sender.test", []string{"fresh@example.test"}, "", time.Now())
	next.Enqueue(fresh)
	if id := <-g.t.inside; id != fresh {
		t.Fatalf("successor delivered %s, want %s", id, fresh)
	}
	close(g.t.hold)
	<-stopped
	wait(t, "both delivered", func() bool { return g.gone(slow) && g.gone(fresh) })
	time.Sleep(50 * time.Millisecond) // a sleep: no further delivery comes in this time
	counts := map[string]int{}
	for _, c := range g.t.Calls() {
		counts[c.id]++
	}
	if counts[slow] != 1 || counts[fresh] != 1 {
		t.Fatalf("deliveries per record %v, want 1 each", counts)
	}
}

func zapNop() *zap.Logger { return zap.NewNop() }

// TestSecondHandoverDuringGrace: A hands over to B and is still
// delivering X in its grace period; B is stopped and hands over to C. C
// must not deliver X while A still is (found by review: B's Stop cleared
// C's view of A).
func TestSecondHandoverDuringGrace(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{})
	g.t.hold, g.t.inside = make(chan struct{}), make(chan string, 16)
	g.r.Start(4)
	x := g.commit(t, "s@sender.test", []string{"slow@example.test"}, "", time.Now())
	<-g.t.inside
	b := New(Options{Spool: g.sp, Router: router{g.t}, Metrics: g.m, StopGrace: 5 * time.Second})
	b.Start(4)
	aStopped := make(chan struct{})
	go func() { g.r.Stop(b); close(aStopped) }()
	wait(t, "b to know a", func() bool { return b.pred.Load() != nil })
	c := New(Options{Spool: g.sp, Router: router{g.t}, Metrics: g.m, StopGrace: 5 * time.Second})
	c.Start(4)
	defer c.Stop(nil)
	b.Stop(c) // at once: b has nothing in flight
	if !c.Active(x) {
		t.Fatal("after the second handover, c does not see x as under way")
	}
	c.Reschedule(x, time.Time{})
	select {
	case id := <-g.t.inside:
		t.Fatalf("c delivered %s while a was still delivering it", id)
	case <-time.After(300 * time.Millisecond): // a sleep: nothing may happen in this time
	}
	close(g.t.hold)
	<-aStopped
	wait(t, "x delivered", func() bool { return g.gone(x) })
	if n := g.t.callsOf(x); n != 1 {
		t.Fatalf("x delivered %d times", n)
	}
}

// TestLockNeverFree: during a handover the spool lock goes from runner
// to runner, never free, so another process waiting for the same spool
// cannot take it and deliver what the old runner is still delivering.
func TestLockNeverFree(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{})
	g.t.hold, g.t.inside = make(chan struct{}), make(chan string, 16)
	g.r.Start(4)
	g.commit(t, "s@sender.test", []string{"slow@example.test"}, "", time.Now())
	<-g.t.inside
	next := New(Options{Spool: g.sp, Router: router{g.t}, Metrics: g.m, StopGrace: 5 * time.Second})
	next.Start(4)
	stopped := make(chan struct{})
	go func() { g.r.Stop(next); close(stopped) }()
	wait(t, "the successor to know its predecessor", func() bool { return next.pred.Load() != nil })
	other, err := spool.Open(g.sp.Dir()) // another process's view of the spool
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if unlock, err := other.Lock(ctx); err == nil {
		unlock()
		t.Fatal("the spool lock was free during the handover")
	}
	close(g.t.hold)
	<-stopped
	next.Stop(nil)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	unlock, err := other.Lock(ctx2)
	if err != nil {
		t.Fatalf("the lock is not free after both stopped: %v", err)
	}
	unlock()
}
