package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// upstream is a real SMTP server (go-smtp) that the gateway delivers
// to in tests; it records what it receives.
type Upstream struct {
	// Addr is where it listens.
	Addr string
	srv  *smtp.Server

	// Mu guards the fields below.
	Mu       sync.Mutex
	helos    []string // every HELO/EHLO name, before and after STARTTLS
	messages []UpstreamMessage
	rcptErr  *smtp.SMTPError // returned for every RCPT, if set
	dataWait time.Duration   // delay before answering DATA
	authUser string          // if set, AUTH PLAIN is offered and required
	authPass string
	// Authed lists the identities that authenticated.
	Authed []string

	active int
	// MaxActive is the most sessions seen in DATA at once.
	MaxActive int

	conns    map[*smtp.Conn]bool // every connection that said HELO/EHLO
	failMail *smtp.SMTPError     // returned for the next MAIL only
	hangUp   bool                // and the connection closed after it
	ln       *trackingListener
}

// UpstreamMessage is one message an Upstream received.
type UpstreamMessage struct {
	From string
	To   []string
	Data []byte
	TLS  bool
}

// UpstreamOpts configures a test upstream.
type UpstreamOpts struct {
	TLS        *tls.Config // nil: no STARTTLS
	BrokenTLS  bool        // advertise STARTTLS, fail every handshake
	RcptErr    *smtp.SMTPError
	DataWait   time.Duration
	ListenAddr string
	AuthUser   string // if set, AUTH PLAIN is offered and required
	AuthPass   string
}

// NewUpstream starts an upstream on loopback, closed when the test ends.
func NewUpstream(t testing.TB, o UpstreamOpts) *Upstream {
	t.Helper()
	u := &Upstream{rcptErr: o.RcptErr, dataWait: o.DataWait, authUser: o.AuthUser, authPass: o.AuthPass}
	s := smtp.NewServer(u)
	s.Domain = "upstream.test"
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	s.EnableDSN, s.EnableSMTPUTF8 = true, true
	s.ErrorLog = nopLogger{}
	switch {
	case o.BrokenTLS:
		s.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("no certificate today")
		}}
	case o.TLS != nil:
		s.TLSConfig = o.TLS
	}
	addr := o.ListenAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tl := &trackingListener{Listener: ln, conns: make(map[net.Conn]bool)}
	u.Addr, u.srv, u.ln, u.conns = ln.Addr().String(), s, tl, make(map[*smtp.Conn]bool)
	go s.Serve(tl)
	t.Cleanup(func() { s.Close() })
	return u
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

// NewSession implements smtp.Backend.
func (u *Upstream) NewSession(c *smtp.Conn) (smtp.Session, error) {
	u.Mu.Lock()
	u.helos = append(u.helos, c.Hostname())
	u.conns[c] = true
	u.Mu.Unlock()
	_, isTLS := c.TLSConnectionState()
	return &upstreamSession{u: u, tls: isTLS, raw: trackedOf(c.Conn())}, nil
}

// Close stops the upstream: its listener and every connection.
func (u *Upstream) Close() { u.srv.Close() }

// Connections returns how many connections have greeted so far.
func (u *Upstream) Connections() int {
	u.Mu.Lock()
	defer u.Mu.Unlock()
	return len(u.conns)
}

// DropConnections closes every open connection without a word, as a
// next hop does with idle ones, and keeps listening. It returns how
// many it closed.
func (u *Upstream) DropConnections() int { return u.ln.closeAll() }

// OpenConnections returns how many accepted connections are still open.
func (u *Upstream) OpenConnections() int { return u.ln.open() }

// FailNextMail makes the next MAIL command, on any connection, get err.
func (u *Upstream) FailNextMail(err *smtp.SMTPError) {
	u.Mu.Lock()
	u.failMail, u.hangUp = err, false
	u.Mu.Unlock()
}

// HangUpAtNextMail makes the next MAIL command get err and closes its
// connection right after that reply, as a server does that says goodbye
// to an idle client ("451 timeout") while the client sends MAIL.
func (u *Upstream) HangUpAtNextMail(err *smtp.SMTPError) {
	u.Mu.Lock()
	u.failMail, u.hangUp = err, true
	u.Mu.Unlock()
}

// trackedOf finds the trackedConn beneath a connection go-smtp holds (a
// *tls.Conn after STARTTLS).
func trackedOf(c net.Conn) *trackedConn {
	for {
		switch x := c.(type) {
		case *trackedConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// trackingListener remembers the connections it accepted.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = true
	l.mu.Unlock()
	return tc, nil
}

func (l *trackingListener) closeAll() int {
	l.mu.Lock()
	all := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		all = append(all, c)
	}
	l.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
	return len(all)
}

func (l *trackingListener) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// trackedConn leaves its listener's set when closed; it can close
// itself after its next write.
type trackedConn struct {
	net.Conn
	l            *trackingListener
	closeOnWrite atomic.Bool
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.closeOnWrite.Load() {
		c.Close()
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// Received returns the messages received so far.
func (u *Upstream) Received() []UpstreamMessage {
	u.Mu.Lock()
	defer u.Mu.Unlock()
	return append([]UpstreamMessage(nil), u.messages...)
}

// HelloNames returns every HELO/EHLO name clients gave.
func (u *Upstream) HelloNames() []string {
	u.Mu.Lock()
	defer u.Mu.Unlock()
	return append([]string(nil), u.helos...)
}

// waitMessages waits until n messages arrived.
func (u *Upstream) WaitMessages(t testing.TB, n int, within time.Duration) []UpstreamMessage {
	t.Helper()
	var m []UpstreamMessage
	if !Eventually(within, func() bool { m = u.Received(); return len(m) >= n }) {
		t.Fatalf("upstream %s: %d messages after %s, want %d", u.Addr, len(m), within, n)
	}
	return m
}

type upstreamSession struct {
	u      *Upstream
	raw    *trackedConn
	tls    bool
	msg    UpstreamMessage
	from   bool
	authed bool
}

func (s *upstreamSession) Reset()        { s.msg, s.from = UpstreamMessage{}, false }
func (s *upstreamSession) Logout() error { return nil }
func (s *upstreamSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.u.authUser != "" && !s.authed {
		return smtp.ErrAuthRequired
	}
	s.u.Mu.Lock()
	fail, hangUp := s.u.failMail, s.u.hangUp
	s.u.failMail, s.u.hangUp = nil, false
	s.u.Mu.Unlock()
	if fail != nil {
		if hangUp && s.raw != nil {
			s.raw.closeOnWrite.Store(true)
		}
		return fail
	}
	s.msg.From, s.from = from, true
	return nil
}

// AuthMechanisms implements smtp.AuthSession.
func (s *upstreamSession) AuthMechanisms() []string {
	if s.u.authUser == "" {
		return nil
	}
	return []string{sasl.Plain}
}

// Auth implements smtp.AuthSession.
func (s *upstreamSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != s.u.authUser || pass != s.u.authPass {
			return smtp.ErrAuthFailed
		}
		s.authed = true
		s.u.Mu.Lock()
		s.u.Authed = append(s.u.Authed, user)
		s.u.Mu.Unlock()
		return nil
	}), nil
}
func (s *upstreamSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.u.rcptErr != nil {
		return s.u.rcptErr
	}
	s.msg.To = append(s.msg.To, to)
	return nil
}
func (s *upstreamSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.u.Mu.Lock()
	s.u.active++
	s.u.MaxActive = max(s.u.MaxActive, s.u.active)
	s.u.Mu.Unlock()
	if s.u.dataWait > 0 {
		// A sleep: a slow next hop is what UpstreamOpts.DataWait asks for.
		time.Sleep(s.u.dataWait)
	}
	s.u.Mu.Lock()
	s.u.active--
	s.u.Mu.Unlock()
	s.msg.Data, s.msg.TLS = data, s.tls
	s.u.Mu.Lock()
	s.u.messages = append(s.u.messages, s.msg)
	s.u.Mu.Unlock()
	return nil
}

// RelayRoute is a route of every domain to a relay with a TLS policy.
func RelayRoute(addr string, tlsPolicy map[string]any) []any {
	deliver := map[string]any{"via": "relay", "addresses": []string{addr}}
	if tlsPolicy != nil {
		deliver["tls"] = tlsPolicy
	}
	return []any{map[string]any{"domains": []string{"*"}, "deliver": deliver}}
}

// deliveringApp is an smtp app whose queue delivers, retrying deferred
// mail only after an hour unless told otherwise.
func (e *Env) DeliveringApp(servers map[string]any, queue map[string]any) map[string]any {
	q := map[string]any{"path": e.SpoolDir(), "min_retry_interval": "1h"}
	for k, v := range queue {
		q[k] = v
	}
	return map[string]any{"queue": q, "servers": servers}
}

// deliveryLine waits for the delivery log line of a queue id.
func (e *Env) DeliveryLine(t testing.TB, id string) map[string]any {
	t.Helper()
	var line map[string]any
	found := Eventually(20*time.Second, func() bool {
		for _, status := range []string{"sent", "deferred", "bounced"} {
			for _, l := range e.LogLines("delivery " + status) {
				if l["queue_id"] == id {
					line = l
					return true
				}
			}
		}
		return false
	})
	if !found {
		t.Fatalf("no delivery log line for %s", id)
	}
	return line
}

// submit sends one message to a gateway in plaintext and returns its
// queue id.
func Submit(t testing.TB, addr, from, to, body string) string {
	t.Helper()
	c := Dial(t, addr)
	c.Expect("250", "EHLO Client.test")
	got := c.Send(from, to, body)
	var id string
	if _, err := fmt.Sscanf(got, "250 2.0.0 OK: queued as %s", &id); err != nil {
		t.Fatalf("submit: %q", got)
	}
	c.Cmd("QUIT")
	return id
}

// WaitBounce waits for a bounce (null sender) to rcpt that mentions
// msgID (a Message-ID or queue id), and returns it.
func (u *Upstream) WaitBounce(t testing.TB, rcpt, msgID string) UpstreamMessage {
	t.Helper()
	var bounce UpstreamMessage
	found := Eventually(20*time.Second, func() bool {
		for _, m := range u.Received() {
			if m.From == "" && len(m.To) == 1 && m.To[0] == rcpt && bytes.Contains(m.Data, []byte(msgID)) {
				bounce = m
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("no bounce to %s about %s", rcpt, msgID)
	}
	return bounce
}
