package smtpapp

// Test harness: a real Caddy loaded in-process with caddy.Load, real TCP
// on loopback, real TLS. caddy.Load runs one config per process, so the
// tests that use it do not run in parallel.

import (
	"bytes"
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

// testEnv is one in-process Caddy with the smtp app.
type testEnv struct {
	t       *testing.T
	dir     string // storage, spool and log live here
	admin   string // admin API address
	logFile string
}

// handedOut remembers the ports freePort gave, so that it never gives
// one twice: Caddy binds with SO_REUSEPORT, so two servers given the
// same port would both bind it and share its connections.
var handedOut sync.Map

// freePort returns a loopback port that was free a moment ago and that
// no other caller got.
func freePort(t testing.TB) int {
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

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	// Not t.TempDir: certificate issuance may still be writing to
	// storage for a moment after caddy.Stop, which TempDir's cleanup
	// reports as an error.
	dir, err := os.MkdirTemp("", "caddy-smtp-test-")
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{
		t:       t,
		dir:     dir,
		admin:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		logFile: filepath.Join(dir, "caddy.log"),
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping caddy: %v", err)
		}
		if t.Failed() && os.Getenv("KEEP_TEST_DIR") != "" {
			t.Logf("test dir kept: %s", dir)
			return
		}
		for i := 0; i < 50 && os.RemoveAll(dir) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	return e
}

// spoolDir is where the env's queue lives.
func (e *testEnv) spoolDir() string { return filepath.Join(e.dir, "queue") }

// config wraps the smtp app (and optional extra apps) into a whole Caddy
// config: admin on a free port, storage and logs in the temp dir, and
// Caddy's local CA kept out of the system trust store.
func (e *testEnv) config(smtpApp map[string]any, extraApps map[string]any) []byte {
	if _, ok := smtpApp["queue"]; !ok {
		// Receiving tests look at the spool: keep what they send there.
		smtpApp["queue"] = map[string]any{"path": e.spoolDir(), "hold": true}
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
		"admin":   map[string]any{"listen": e.admin, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(e.dir, "storage")},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":   "DEBUG",
			"writer":  map[string]any{"output": "file", "filename": e.logFile},
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
func (e *testEnv) load(smtpApp map[string]any, extraApps map[string]any) {
	e.t.Helper()
	if err := caddy.Load(e.config(smtpApp, extraApps), true); err != nil {
		e.t.Fatalf("loading config: %v", err)
	}
}

// loadErr loads a config expecting it to be refused.
func (e *testEnv) loadErr(smtpApp map[string]any) error {
	return caddy.Load(e.config(smtpApp, nil), true)
}

// postLoad replaces the running config through the admin API, as a
// user's reload does.
func (e *testEnv) postLoad(smtpApp map[string]any) {
	e.t.Helper()
	resp, err := http.Post("http://"+e.admin+"/load", "application/json", bytes.NewReader(e.config(smtpApp, nil)))
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
func (e *testEnv) logLines(msg string) []map[string]any {
	data, _ := os.ReadFile(e.logFile)
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
func (e *testEnv) waitLog(msg string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if l := e.logLines(msg); len(l) > 0 {
			return l[len(l)-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("no %q log line", msg)
	return nil
}

// localCARoot is the root of Caddy's internal CA for this env.
func (e *testEnv) localCARoot() *x509.CertPool {
	e.t.Helper()
	pemData, err := os.ReadFile(filepath.Join(e.dir, "storage", "pki", "authorities", "local", "root.crt"))
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
func server(t *testing.T, fields map[string]any) (map[string]any, string) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
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
func app(servers map[string]any) map[string]any {
	return map[string]any{"servers": servers}
}

// client is a line-level SMTP client for tests, so that every reply is
// seen exactly as sent.
type client struct {
	t    testing.TB
	conn net.Conn
	text *textproto.Conn
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &client{t: t, conn: conn, text: textproto.NewConn(conn)}
	t.Cleanup(func() { conn.Close() })
	code, msg := c.read()
	if code != 220 {
		t.Fatalf("greeting: %d %s", code, msg)
	}
	return c
}

// read reads one reply; code 0 means the connection ended.
func (c *client) read() (int, string) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	code, msg, err := c.text.ReadResponse(0)
	if err != nil && code == 0 {
		return 0, err.Error()
	}
	return code, msg
}

// cmd sends one command line and reads its reply.
func (c *client) cmd(format string, args ...any) (int, string) {
	c.t.Helper()
	if err := c.text.PrintfLine(format, args...); err != nil {
		return 0, err.Error()
	}
	return c.read()
}

// expect sends a command and fails unless the reply starts with want
// ("530 5.7.0 Must issue...", or just "250").
func (c *client) expect(want, format string, args ...any) string {
	c.t.Helper()
	code, msg := c.cmd(format, args...)
	got := fmt.Sprintf("%d %s", code, msg)
	if !strings.HasPrefix(got, want) {
		c.t.Fatalf("%s: got %q, want %q", fmt.Sprintf(format, args...), got, want)
	}
	return got
}

// startTLS does STARTTLS and the handshake; the error is the handshake's.
func (c *client) startTLS(cfg *tls.Config) error {
	c.t.Helper()
	c.expect("220", "STARTTLS")
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return err
	}
	tc.SetDeadline(time.Time{})
	c.conn = tc
	c.text = textproto.NewConn(tc)
	return nil
}

// send does a whole transaction and returns the final reply.
func (c *client) send(from, to, body string) string {
	c.t.Helper()
	c.expect("250", "MAIL FROM:<%s>", from)
	c.expect("250", "RCPT TO:<%s>", to)
	c.expect("354", "DATA")
	c.conn.Write([]byte(body))
	code, msg := c.read()
	return fmt.Sprintf("%d %s", code, msg)
}

// tlsConfig trusts pool (or nothing, when nil) for name.
func tlsConfig(pool *x509.CertPool, name string) *tls.Config {
	if pool == nil {
		return &tls.Config{InsecureSkipVerify: true, ServerName: name}
	}
	return &tls.Config{RootCAs: pool, ServerName: name}
}

// waitTLS retries until the server can complete a STARTTLS handshake:
// certificates are obtained asynchronously after Start, as in Caddy.
func waitTLS(t *testing.T, addr string, cfg *tls.Config) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		c := dial(t, addr)
		c.expect("250", "EHLO client.test")
		lastErr = c.startTLS(cfg)
		c.conn.Close()
		if lastErr == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no TLS handshake with %s within 30s: %v", addr, lastErr)
}

const testMessage = "Subject: test\r\nFrom: <sender@remote.test>\r\n\r\nHello.\r\n.\r\n"

func newText(c net.Conn) *textproto.Conn { return textproto.NewConn(c) }

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}
