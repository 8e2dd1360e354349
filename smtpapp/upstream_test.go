package smtpapp

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// upstream is a real SMTP server (go-smtp) that the gateway delivers
// to in tests; it records what it receives.
type upstream struct {
	addr string
	srv  *smtp.Server

	mu       sync.Mutex
	helos    []string // every HELO/EHLO name, before and after STARTTLS
	messages []upstreamMessage
	rcptErr  *smtp.SMTPError // returned for every RCPT, if set
	dataWait time.Duration   // delay before answering DATA
	authUser string          // if set, AUTH PLAIN is offered and required
	authPass string
	authed   []string // identities that authenticated

	active, maxActive int // sessions in DATA at once, and the most seen
}

type upstreamMessage struct {
	From string
	To   []string
	Data []byte
	TLS  bool
}

// upstreamOpts configures a test upstream.
type upstreamOpts struct {
	tls        *tls.Config // nil: no STARTTLS
	brokenTLS  bool        // advertise STARTTLS, fail every handshake
	rcptErr    *smtp.SMTPError
	dataWait   time.Duration
	listenAddr string
	authUser   string
	authPass   string
}

func newUpstream(t testing.TB, o upstreamOpts) *upstream {
	t.Helper()
	u := &upstream{rcptErr: o.rcptErr, dataWait: o.dataWait, authUser: o.authUser, authPass: o.authPass}
	s := smtp.NewServer(u)
	s.Domain = "upstream.test"
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	s.EnableDSN, s.EnableSMTPUTF8 = true, true
	s.ErrorLog = nopLogger{}
	switch {
	case o.brokenTLS:
		s.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("no certificate today")
		}}
	case o.tls != nil:
		s.TLSConfig = o.tls
	}
	addr := o.listenAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u.addr, u.srv = ln.Addr().String(), s
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return u
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

func (u *upstream) NewSession(c *smtp.Conn) (smtp.Session, error) {
	u.mu.Lock()
	u.helos = append(u.helos, c.Hostname())
	u.mu.Unlock()
	_, isTLS := c.TLSConnectionState()
	return &upstreamSession{u: u, tls: isTLS}, nil
}

func (u *upstream) received() []upstreamMessage {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upstreamMessage(nil), u.messages...)
}

func (u *upstream) helloNames() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.helos...)
}

// waitMessages waits until n messages arrived.
func (u *upstream) waitMessages(t testing.TB, n int, within time.Duration) []upstreamMessage {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := u.received(); len(m) >= n {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("upstream %s: %d messages after %s, want %d", u.addr, len(u.received()), within, n)
	return nil
}

type upstreamSession struct {
	u      *upstream
	tls    bool
	msg    upstreamMessage
	from   bool
	authed bool
}

func (s *upstreamSession) Reset()        { s.msg, s.from = upstreamMessage{}, false }
func (s *upstreamSession) Logout() error { return nil }
func (s *upstreamSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.u.authUser != "" && !s.authed {
		return smtp.ErrAuthRequired
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
		s.u.mu.Lock()
		s.u.authed = append(s.u.authed, user)
		s.u.mu.Unlock()
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
	s.u.mu.Lock()
	s.u.active++
	s.u.maxActive = max(s.u.maxActive, s.u.active)
	s.u.mu.Unlock()
	if s.u.dataWait > 0 {
		time.Sleep(s.u.dataWait)
	}
	s.u.mu.Lock()
	s.u.active--
	s.u.mu.Unlock()
	s.msg.Data, s.msg.TLS = data, s.tls
	s.u.mu.Lock()
	s.u.messages = append(s.u.messages, s.msg)
	s.u.mu.Unlock()
	return nil
}

// relayRoute is a route of every domain to a relay with a TLS policy.
func relayRoute(addr string, tlsPolicy map[string]any) []any {
	deliver := map[string]any{"via": "relay", "addresses": []string{addr}}
	if tlsPolicy != nil {
		deliver["tls"] = tlsPolicy
	}
	return []any{map[string]any{"domains": []string{"*"}, "deliver": deliver}}
}

// deliveringApp is an smtp app whose queue delivers, retrying deferred
// mail only after an hour unless told otherwise.
func (e *testEnv) deliveringApp(servers map[string]any, queue map[string]any) map[string]any {
	q := map[string]any{"path": e.spoolDir(), "min_retry_interval": "1h"}
	for k, v := range queue {
		q[k] = v
	}
	return map[string]any{"queue": q, "servers": servers}
}

// deliveryLine waits for the delivery log line of a queue id.
func (e *testEnv) deliveryLine(t testing.TB, id string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, status := range []string{"sent", "deferred", "bounced"} {
			for _, l := range e.logLines("delivery " + status) {
				if l["queue_id"] == id {
					return l
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no delivery log line for %s", id)
	return nil
}

// submit sends one message to a gateway in plaintext and returns its
// queue id.
func submit(t testing.TB, addr, from, to, body string) string {
	t.Helper()
	c := dial(t, addr)
	c.expect("250", "EHLO client.test")
	got := c.send(from, to, body)
	var id string
	if _, err := fmt.Sscanf(got, "250 2.0.0 OK: queued as %s", &id); err != nil {
		t.Fatalf("submit: %q", got)
	}
	c.cmd("QUIT")
	return id
}
