package smtptest

// Helpers for tests of the queue as an operator sees it: a gateway that
// relays to upstreams by domain, mail submitted to it, and its queue
// watched through the log and the admin API.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Greylisted is a temporary refusal (451 4.7.1), for an upstream that
// defers every recipient (UpstreamOpts.RcptErr).
var Greylisted = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try again later"}

// FreeAddr returns a loopback address ("127.0.0.1:port") on a port from
// FreePort: for something to listen on later, or for nothing at all.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// NamedMessage is a small message in DATA form, end-of-data line
// included, told apart by name: its Subject is name, its Message-ID
// <name@example.test> and its body "body of name".
func NamedMessage(name string) string {
	return fmt.Sprintf("Subject: %s\r\nMessage-ID: <%s@example.test>\r\n\r\nbody of %s\r\n.\r\n", name, name, name)
}

// DomainRelayRoute is a route of the recipient domain ("*" for any) to
// the relay at addr, in plaintext.
func DomainRelayRoute(domain, addr string) map[string]any {
	return map[string]any{"domains": []string{domain}, "deliver": map[string]any{
		"via": "relay", "addresses": []string{addr}, "tls": map[string]any{"level": "none"}}}
}

// LoadRelayGateway loads a Caddy whose smtp app has one server, "gw"
// (hostname gw.example.test, on a free port, without TLS), that relays
// mail from loopback clients along routes, in order, and whose queue
// delivers (see DeliveringApp: deferred mail waits an hour). It returns
// the server's address.
func (e *Env) LoadRelayGateway(routes ...map[string]any) string {
	e.t.Helper()
	rs := make([]any, len(routes))
	for i, r := range routes {
		rs[i] = r
	}
	s, addr := ServerConfig(e.t, map[string]any{
		"hostname":       "gw.example.test",
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes":         rs,
	})
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, nil), nil)
	return addr
}

// LoadPlainServer loads a Caddy whose smtp app has one server, "mx" (see
// ServerConfig, without TLS), and the harness's default queue, which is
// on hold: what it accepts stays queued. It returns the server's address.
func (e *Env) LoadPlainServer() string {
	e.t.Helper()
	s, addr := ServerConfig(e.t, map[string]any{"tls": map[string]any{"level": "none"}})
	e.Load(App(map[string]any{"mx": s}), nil)
	return addr
}

// SubmitToAll sends one message to every recipient in to, in one
// plaintext transaction after "EHLO client.test", and returns its queue
// id; it fails the test unless the message is queued.
func SubmitToAll(t testing.TB, addr, from string, to []string, body string) string {
	t.Helper()
	c := Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<%s>", from)
	for _, rcpt := range to {
		c.Expect("250", "RCPT TO:<%s>", rcpt)
	}
	c.Expect("354", "DATA")
	c.Conn.Write([]byte(body))
	code, msg := c.Read()
	id, ok := strings.CutPrefix(msg, "2.0.0 OK: queued as ")
	if code != 250 || !ok {
		t.Fatalf("DATA: %d %s", code, msg)
	}
	c.Cmd("QUIT")
	return id
}

// ExpectContains reports an error, and lets the test go on, for each of
// wants that data does not contain; what names data in the report.
func ExpectContains(t testing.TB, what string, data []byte, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("%s has no %q:\n%s", what, want, data)
		}
	}
}

// ExpectDeferred waits for the delivery log line of each queue id (see
// DeliveryLine) and fails the test unless it is a deferral.
func (e *Env) ExpectDeferred(t testing.TB, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if l := e.DeliveryLine(t, id); l["status"] != "deferred" {
			t.Fatalf("%s: %v", id, l)
		}
	}
}

// QueueListing is the admin API's queue listing (GET /smtp/queue) as far
// as waiting on the queue needs it. admin.QueueListResponse is the whole
// of it, which this package cannot use: package admin imports smtpapp,
// whose tests import this package.
type QueueListing struct {
	// Total counts the messages that match, on this page or not.
	Total int `json:"total"`
	// Messages are the page's messages, oldest first.
	Messages []QueuedMessage `json:"messages"`
}

// QueuedMessage is one message of a QueueListing.
type QueuedMessage struct {
	// ID is the queue id.
	ID string `json:"id"`
	// Recipients are the message's recipients with their states.
	Recipients []*spool.Recipient `json:"recipients"`
}

// IDs returns the queue ids of the listing's messages, in its order.
func (l QueueListing) IDs() []string {
	var ids []string
	for _, m := range l.Messages {
		ids = append(ids, m.ID)
	}
	return ids
}

// AllDeferred reports whether every recipient of every message listed
// has been tried n times and is deferred with a next attempt recorded.
func (l QueueListing) AllDeferred(n int) bool {
	for _, m := range l.Messages {
		for _, r := range m.Recipients {
			if r.Attempts != n || r.Status != spool.StatusDeferred || r.NextAttempt.IsZero() {
				return false
			}
		}
	}
	return true
}

// ListQueue reads the queue listing from the admin API, failing the test
// unless it answers 200 with one.
func (e *Env) ListQueue(t testing.TB) QueueListing {
	t.Helper()
	resp, err := http.Get("http://" + e.Admin + "/smtp/queue")
	if err != nil {
		t.Fatalf("GET /smtp/queue: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /smtp/queue: %d %s, want %d", resp.StatusCode, body, http.StatusOK)
	}
	var l QueueListing
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatalf("GET /smtp/queue: %v: %s", err, body)
	}
	return l
}

// WaitQueue polls the queue listing (ListQueue) until cond holds, and
// returns the listing that satisfied it.
func (e *Env) WaitQueue(t testing.TB, what string, cond func(QueueListing) bool) QueueListing {
	t.Helper()
	var l QueueListing
	WaitFor(t, what, func() bool {
		l = e.ListQueue(t)
		return cond(l)
	})
	return l
}
