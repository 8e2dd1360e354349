// Package smtptest is the test harness of caddy-smtp: an in-process
// Caddy, a line-level SMTP client, upstream SMTP servers, and a test CA.
package smtptest

// Test harness: a real Caddy loaded in-process with caddy.Load, real TCP
// on loopback, real TLS. caddy.Load runs one config per process, so the
// tests that use it do not run in parallel.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/mx"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/relay"
)

// Env is one in-process Caddy with the smtp app.
type Env struct {
	t testing.TB
	// Dir holds the storage, the spool and the log.
	Dir string
	// Admin is the admin API address.
	Admin string
	// LogFile is where Caddy logs, as JSON lines.
	LogFile string
}

// handedOut remembers the ports FreePort gave, so that it never gives
// one twice: Caddy binds with SO_REUSEPORT, so two servers given the
// same port would both bind it and share its connections.
var handedOut sync.Map

// FreePort returns a loopback port that was free a moment ago and that
// no other caller got.
func FreePort(t testing.TB) int {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if _, dup := handedOut.LoadOrStore(port, true); !dup {
			return port
		}
	}
}

// NewEnv prepares a temp directory for one in-process Caddy, stopped
// and removed when the test ends (kept with KEEP_TEST_DIR=1 on failure).
func NewEnv(t testing.TB) *Env {
	t.Helper()
	// Not t.TempDir: certificate issuance may still be writing to
	// storage for a moment after caddy.Stop, which TempDir's cleanup
	// reports as an error.
	dir, err := os.MkdirTemp("", "caddy-smtp-test-")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{
		t:       t,
		Dir:     dir,
		Admin:   fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		LogFile: filepath.Join(dir, "caddy.log"),
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping caddy: %v", err)
		}
		if t.Failed() && os.Getenv("KEEP_TEST_DIR") != "" {
			t.Logf("test dir kept: %s", dir)
			return
		}
		Eventually(5*time.Second, func() bool { return os.RemoveAll(dir) == nil })
	})
	return e
}

// spoolDir is where the env's queue lives.
func (e *Env) SpoolDir() string { return filepath.Join(e.Dir, "queue") }

// config wraps the smtp app (and optional extra apps) into a whole Caddy
// config: admin on a free port, storage and logs in the temp dir, and
// Caddy's local CA kept out of the system trust store.
func (e *Env) Config(smtpApp map[string]any, extraApps map[string]any) []byte {
	if _, ok := smtpApp["queue"]; !ok {
		// Receiving tests look at the spool: keep what they send there.
		smtpApp["queue"] = map[string]any{"path": e.SpoolDir(), "hold": true}
	}
	apps := map[string]any{
		"smtp": smtpApp,
		"pki": map[string]any{"certificate_authorities": map[string]any{
			"local": map[string]any{"install_trust": false},
		}},
	}
	for k, v := range extraApps {
		apps[k] = v
	}
	cfg := map[string]any{
		"admin":   map[string]any{"listen": e.Admin, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(e.Dir, "storage")},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":   "DEBUG",
			"writer":  map[string]any{"output": "file", "filename": e.LogFile},
			"encoder": map[string]any{"format": "json"},
		}}},
		"apps": apps,
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// load runs a config in-process.
func (e *Env) Load(smtpApp map[string]any, extraApps map[string]any) {
	e.t.Helper()
	if err := caddy.Load(e.Config(smtpApp, extraApps), true); err != nil {
		e.t.Fatalf("loading config: %v", err)
	}
}

// loadErr loads a config expecting it to be refused.
func (e *Env) LoadErr(smtpApp map[string]any) error {
	return caddy.Load(e.Config(smtpApp, nil), true)
}

// postLoad replaces the running config through the admin API, as a
// user's reload does.
func (e *Env) PostLoad(smtpApp map[string]any, extraApps map[string]any) {
	e.t.Helper()
	resp, err := http.Post("http://"+e.Admin+"/load", "application/json", bytes.NewReader(e.Config(smtpApp, extraApps)))
	if err != nil {
		e.t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		e.t.Fatalf("POST /load: %s: %s", resp.Status, b.String())
	}
}

// logLines returns the log entries with the given message.
func (e *Env) LogLines(msg string) []map[string]any {
	data, _ := os.ReadFile(e.LogFile)
	var out []map[string]any
	for _, line := range bytes.Split(data, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitLog waits until an entry with msg is logged, and returns the last.
func (e *Env) WaitLog(msg string) map[string]any {
	e.t.Helper()
	var l []map[string]any
	if !Eventually(10*time.Second, func() bool { l = e.LogLines(msg); return len(l) > 0 }) {
		e.t.Fatalf("no %q log line", msg)
	}
	return l[len(l)-1]
}

// localCARoot is the root of Caddy's internal CA for this env.
func (e *Env) LocalCARoot() *x509.CertPool {
	e.t.Helper()
	pemData, err := os.ReadFile(filepath.Join(e.Dir, "storage", "pki", "authorities", "local", "root.crt"))
	if err != nil {
		e.t.Fatalf("reading local CA root: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		e.t.Fatal("local CA root: no certificate")
	}
	return pool
}

// server builds a server config on a free port; it returns the config
// and the address.
func ServerConfig(t testing.TB, fields map[string]any) (map[string]any, string) {
	addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	s := map[string]any{
		"listen":         []string{addr},
		"hostname":       "localhost",
		"accept_domains": []string{"example.test"},
		"routes": []any{map[string]any{
			"domains": []string{"*"},
			"deliver": map[string]any{"via": "maildir", "path": filepath.Join(t.TempDir(), "maildir")},
		}},
	}
	for k, v := range fields {
		s[k] = v
	}
	return s, addr
}

// app is the smtp app with the given servers.
func App(servers map[string]any) map[string]any {
	return map[string]any{"servers": servers}
}

// Client is a line-level SMTP Client for tests, so that every reply is
// seen exactly as sent.
type Client struct {
	T    testing.TB
	Conn net.Conn
	Text *textproto.Conn
}

// Dial connects to an SMTP server and reads its 220 greeting.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &Client{T: t, Conn: conn, Text: textproto.NewConn(conn)}
	t.Cleanup(func() { conn.Close() })
	code, msg := c.Read()
	if code != 220 {
		t.Fatalf("greeting: %d %s", code, msg)
	}
	return c
}

// read reads one reply; code 0 means the connection ended.
func (c *Client) Read() (int, string) {
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	code, msg, err := c.Text.ReadResponse(0)
	if err != nil && code == 0 {
		return 0, err.Error()
	}
	return code, msg
}

// cmd sends one command line and reads its reply.
func (c *Client) Cmd(format string, args ...any) (int, string) {
	c.T.Helper()
	if err := c.Text.PrintfLine(format, args...); err != nil {
		return 0, err.Error()
	}
	return c.Read()
}

// expect sends a command and fails unless the reply starts with want
// ("530 5.7.0 Must issue...", or just "250").
func (c *Client) Expect(want, format string, args ...any) string {
	c.T.Helper()
	code, msg := c.Cmd(format, args...)
	got := fmt.Sprintf("%d %s", code, msg)
	if !strings.HasPrefix(got, want) {
		c.T.Fatalf("%s: got %q, want %q", fmt.Sprintf(format, args...), got, want)
	}
	return got
}

// startTLS does STARTTLS and the handshake; the error is the handshake's.
func (c *Client) StartTLS(cfg *tls.Config) error {
	c.T.Helper()
	c.Expect("220", "STARTTLS")
	tc := tls.Client(c.Conn, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return err
	}
	tc.SetDeadline(time.Time{})
	c.Conn = tc
	c.Text = textproto.NewConn(tc)
	return nil
}

// send does a whole transaction and returns the final reply.
func (c *Client) Send(from, to, body string) string {
	c.T.Helper()
	c.Expect("250", "MAIL FROM:<%s>", from)
	c.Expect("250", "RCPT TO:<%s>", to)
	c.Expect("354", "DATA")
	c.Conn.Write([]byte(body))
	code, msg := c.Read()
	return fmt.Sprintf("%d %s", code, msg)
}

// TLSConfig trusts pool (or nothing, when nil) for name.
func TLSConfig(pool *x509.CertPool, name string) *tls.Config {
	if pool == nil {
		return &tls.Config{InsecureSkipVerify: true, ServerName: name}
	}
	return &tls.Config{RootCAs: pool, ServerName: name}
}

// WaitTLS retries until the server can complete a STARTTLS handshake:
// certificates are obtained asynchronously after Start, as in Caddy.
func WaitTLS(t testing.TB, addr string, cfg *tls.Config) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		c := Dial(t, addr)
		c.Expect("250", "EHLO Client.test")
		lastErr = c.StartTLS(cfg)
		c.Conn.Close()
		if lastErr == nil {
			return
		}
		// Each try is a whole handshake (and a log line at the
		// server): retry more gently than Eventually polls.
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no TLS handshake with %s within 30s: %v", addr, lastErr)
}

// Message is a small message in DATA form, end-of-data line included.
const Message = "Subject: test\r\nFrom: <sender@remote.test>\r\n\r\nHello.\r\n.\r\n"

// NewText wraps a connection for line-level SMTP.
func NewText(c net.Conn) *textproto.Conn { return textproto.NewConn(c) }

// NetDial dials TCP with a timeout.
func NetDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

// CaddyContext is a bare Caddy context for provisioning modules in
// tests, cancelled when the test ends.
func CaddyContext(t testing.TB) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}
