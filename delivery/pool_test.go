package delivery_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// poolRig is an upstream with STARTTLS (a certificate of a test CA the
// client does not trust) and a level-may policy.
type poolRig struct {
	u      *st.Upstream
	hop    delivery.Hop
	policy *delivery.ClientTLS
}

func newPoolRig(t *testing.T) *poolRig {
	ca := st.NewCA(t, "Pool CA")
	u := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "upstream.test", "upstream.test"))})
	policy := &delivery.ClientTLS{Level: "may"}
	if err := policy.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	return &poolRig{u: u, hop: delivery.Hop{Host: "upstream.test", Addr: u.Addr}, policy: policy}
}

func poolJob(id string, requireTLS bool) *delivery.Job {
	body := "Subject: " + id + "\r\n\r\nhello\r\n"
	return &delivery.Job{
		Envelope:   &spool.Envelope{ID: id, From: "a@example.test", Size: int64(len(body)), RequireTLS: requireTLS, Received: time.Now()},
		Recipients: []*spool.Recipient{{Address: "b@upstream.test", Status: spool.StatusQueued}},
		Open: func() (io.ReadSeekCloser, error) {
			return nopCloser{strings.NewReader(body)}, nil
		},
		Hostname: "gw.example.test",
		Logger:   zap.NewNop(),
	}
}

// send delivers one job and fails the test unless it was sent over TLS;
// it returns the transaction's number on its connection.
func (r *poolRig) send(t *testing.T, pool *delivery.Pool, id string) int {
	t.Helper()
	res, _ := delivery.SendSMTP(context.Background(), poolJob(id, false), r.hop, r.policy, nil, pool)
	if res[0].Status != delivery.Sent || res[0].TLSVersion == "" {
		t.Fatalf("%s: %+v", id, res[0])
	}
	return res[0].ConnUse
}

// TestPoolReuse: with a pool, twenty messages to one next hop take one
// connection (one handshake), and every result still carries the TLS
// facts of the session; without a pool each takes its own.
func TestPoolReuse(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	for i := 0; i < 20; i++ {
		if use := r.send(t, pool, "pooled"); use != i+1 {
			t.Fatalf("message %d: conn_use %d", i+1, use)
		}
	}
	if n := r.u.Connections(); n != 1 {
		t.Fatalf("20 messages with a pool took %d connections, want 1", n)
	}
	if got := len(r.u.WaitMessages(t, 20, 5*time.Second)); got != 20 {
		t.Fatalf("upstream got %d messages", got)
	}
	for i := 0; i < 3; i++ {
		r.send(t, nil, "unpooled")
	}
	if n := r.u.Connections(); n != 4 {
		t.Fatalf("3 messages without a pool: %d connections in all, want 1+3", n)
	}
}

// TestPoolStaleSession: a next hop that dropped the idle connection, or
// answers the next MAIL with 421, costs the attempt nothing: it goes on
// over a new connection at once.
func TestPoolStaleSession(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	r.send(t, pool, "first")
	if n := r.u.DropConnections(); n != 1 {
		t.Fatalf("dropped %d connections, want the idle one", n)
	}
	if use := r.send(t, pool, "after-drop"); use != 1 {
		t.Fatalf("after a drop: conn_use %d, want 1 (a new connection)", use)
	}
	if n := r.u.Connections(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	r.u.FailNextMail(&smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "idle too long"})
	r.send(t, pool, "after-421")
	if n := r.u.Connections(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
	if got := len(r.u.WaitMessages(t, 3, 5*time.Second)); got != 3 {
		t.Fatalf("upstream got %d messages, want 3", got)
	}
}

// TestPoolReplyKeepsSession: a refusal of the message by the next hop
// (a 5xx at MAIL, answered by RSET) leaves the session usable.
func TestPoolReplyKeepsSession(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	r.send(t, pool, "first")
	r.u.FailNextMail(&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender refused"})
	res, _ := delivery.SendSMTP(context.Background(), poolJob("refused", false), r.hop, r.policy, nil, pool)
	if res[0].Status != delivery.Bounced || !strings.Contains(res[0].Reply, "sender refused") {
		t.Fatalf("refused: %+v", res[0])
	}
	r.send(t, pool, "third")
	if n := r.u.Connections(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// TestPoolLimits: a session carries at most MaxUses messages, and an
// idle one is closed after IdleTimeout; Close closes what is idle.
func TestPoolLimits(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPoolWithLimits(delivery.PoolLimits{MaxUses: 3, IdleTimeout: 300 * time.Millisecond})
	defer pool.Close()
	for i := 0; i < 7; i++ {
		r.send(t, pool, "limited")
	}
	if n := r.u.Connections(); n != 3 {
		t.Fatalf("7 messages at 3 per session: %d connections, want 3", n)
	}
	waitOpen(t, r.u, 0, 5*time.Second)
	if pool.Idle() != 0 {
		t.Fatalf("%d sessions idle after the idle timeout", pool.Idle())
	}

	other := delivery.NewPool()
	r.send(t, other, "before-close")
	waitOpen(t, r.u, 1, time.Second)
	other.Close()
	waitOpen(t, r.u, 0, 5*time.Second)
	if other.Idle() != 0 {
		t.Fatal("sessions kept after Close")
	}
}

func waitOpen(t *testing.T, u *st.Upstream, want int, within time.Duration) {
	t.Helper()
	if !st.Eventually(within, func() bool { return u.OpenConnections() == want }) {
		t.Fatalf("%d connections open at the upstream, want %d", u.OpenConnections(), want)
	}
}

// TestPoolKeysApart: a REQUIRETLS message needs a verified session, so
// it never rides the unverified one a level-may message left in the
// pool: it opens its own, which fails verification, and is deferred.
func TestPoolKeysApart(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	r.send(t, pool, "may")
	res, _ := delivery.SendSMTP(context.Background(), poolJob("requiretls", true), r.hop, r.policy, nil, pool)
	if res[0].Status != delivery.Deferred || !strings.Contains(res[0].Reply, "certificate not verified") {
		t.Fatalf("REQUIRETLS over an unverified next hop: %+v", res[0])
	}
	if n := r.u.Connections(); n != 2 {
		t.Fatalf("%d connections greeted, want 2 (its own, which said EHLO before STARTTLS)", n)
	}
	if pool.Idle() != 1 {
		t.Fatalf("%d sessions idle, want the level-may one", pool.Idle())
	}
}

// TestPoolConcurrent: many deliveries at once share the pool safely
// and every message arrives once.
func TestPoolConcurrent(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	const workers, each = 10, 20
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				res, _ := delivery.SendSMTP(context.Background(), poolJob("c", false), r.hop, r.policy, nil, pool)
				if res[0].Status != delivery.Sent {
					t.Errorf("%+v", res[0])
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := len(r.u.WaitMessages(t, workers*each, 10*time.Second)); got != workers*each {
		t.Fatalf("upstream got %d messages, want %d", got, workers*each)
	}
	if n := r.u.Connections(); n > workers {
		t.Fatalf("%d connections for %d concurrent senders", n, workers)
	}
	t.Logf("%d messages over %d connections", workers*each, r.u.Connections())
}

// TestPoolIdleGoodbye: a next hop that says goodbye to an idle session
// as MAIL arrives ("451 timeout", then it hangs up) costs the attempt
// nothing: the reply is not taken for an answer to MAIL, and the
// message goes over a new connection.
func TestPoolIdleGoodbye(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	r.send(t, pool, "first")
	r.u.HangUpAtNextMail(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "timeout"})
	if use := r.send(t, pool, "second"); use != 1 {
		t.Fatalf("conn_use %d, want 1 (a new connection)", use)
	}
	if n := r.u.Connections(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestSpoolReadErrorSendsNothing: when the queued message cannot be read
// to its end, the next hop never gets an end of data, so it cannot
// accept a cut-off message; the attempt is deferred and the session is
// not kept.
func TestSpoolReadErrorSendsNothing(t *testing.T) {
	r := newPoolRig(t)
	pool := delivery.NewPool()
	defer pool.Close()
	job := poolJob("broken", false)
	job.Open = func() (io.ReadSeekCloser, error) {
		return brokenReader{strings.NewReader("Subject: broken\r\n\r\n" + strings.Repeat("xxxxxxxxx\r\n", 500))}, nil
	}
	res, _ := delivery.SendSMTP(context.Background(), job, r.hop, r.policy, nil, pool)
	if res[0].Status != delivery.Deferred || !strings.Contains(res[0].Reply, "while sending message") {
		t.Fatalf("%+v", res[0])
	}
	if pool.Idle() != 0 {
		t.Fatal("the session of a broken transfer was kept")
	}
	r.send(t, pool, "after")
	if got := r.u.WaitMessages(t, 1, 5*time.Second); len(got) != 1 || !strings.Contains(string(got[0].Data), "Subject: after") {
		t.Fatalf("upstream got %d messages, the first %.40q", len(got), got[0].Data)
	}
}

// brokenReader fails after 1000 bytes, like a spool file on a failing
// disk. (A field, not embedded: io.Copy must not find a WriteTo.)
type brokenReader struct{ r *strings.Reader }

func (b brokenReader) Read(p []byte) (int, error) {
	if b.r.Size()-int64(b.r.Len()) >= 1000 {
		return 0, errors.New("read spool: input/output error")
	}
	if len(p) > 100 {
		p = p[:100]
	}
	return b.r.Read(p)
}

func (b brokenReader) Seek(off int64, whence int) (int64, error) { return b.r.Seek(off, whence) }
func (b brokenReader) Close() error                              { return nil }

// TestPoolMaxIdleTotal: across next hops the pool keeps at most
// MaxIdleTotal idle sessions, and closes the rest; the count stays
// right as sessions expire and come back.
func TestPoolMaxIdleTotal(t *testing.T) {
	rigs := []*poolRig{newPoolRig(t), newPoolRig(t), newPoolRig(t)}
	pool := delivery.NewPoolWithLimits(delivery.PoolLimits{MaxIdleTotal: 2, IdleTimeout: 300 * time.Millisecond})
	defer pool.Close()
	for round := 0; round < 2; round++ {
		for _, r := range rigs {
			r.send(t, pool, "total")
		}
		if n := pool.Idle(); n != 2 {
			t.Fatalf("round %d: %d idle sessions, want 2", round, n)
		}
		waitOpen(t, rigs[2].u, 0, 5*time.Second) // the third was not kept
		for _, r := range rigs {
			waitOpen(t, r.u, 0, 5*time.Second) // all expire
		}
		if n := pool.Idle(); n != 0 {
			t.Fatalf("round %d: %d idle after expiry", round, n)
		}
	}
}
