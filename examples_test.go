package caddysmtp_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-smtp/caddy-smtp"
)

// adaptExample turns an example file into JSON config.
func adaptExample(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(path, ".json") {
		return body
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	cfg, warnings, err := adapter.Adapt(body, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapting %s: %v", path, err)
	}
	for _, w := range warnings {
		t.Errorf("%s:%d: %s", w.File, w.Line, w.Message)
	}
	return cfg
}

// isolate points a config's admin endpoint, storage and autosave into
// the test's own places, so that examples load without touching the
// machine's Caddy.
func isolate(t *testing.T, cfgJSON []byte) []byte {
	t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	cfg["admin"] = map[string]any{"listen": admin, "config": map[string]any{"persist": false}}
	cfg["storage"] = map[string]any{"module": "file_system", "root": filepath.Join(t.TempDir(), "storage")}
	out, _ := json.Marshal(cfg)
	return out
}

// TestExamplesLoad adapts every example and validates it: provisioning
// every module, the way `caddy validate` does.
func TestExamplesLoad(t *testing.T) {
	top := rootDir(t)
	files, _ := filepath.Glob("examples/*")
	n := 0
	for _, f := range files {
		if !strings.Contains(filepath.Base(f), "Caddyfile") && !strings.HasSuffix(f, ".json") {
			continue
		}
		if strings.HasSuffix(f, "grafana-dashboard.json") {
			continue // not a Caddy config
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Chdir(t.TempDir())
			cfgJSON := isolate(t, adaptExample(t, filepath.Join(top, f)))
			var cfg caddy.Config
			if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Fatalf("%s does not load: %v", f, err)
			}
		})
	}
	if n == 0 {
		t.Fatal("no examples found")
	}
}

// rootDir is the repository root (the package directory); call it
// before t.Chdir.
func rootDir(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// TestQuickStart runs examples/Caddyfile as the README says, sends a
// message over STARTTLS to the gateway, and finds it in ./data/maildir/new
// with two Received: headers that each say ESMTPS and the TLS version.
func TestQuickStart(t *testing.T) {
	example := filepath.Join(rootDir(t), "examples", "Caddyfile")
	t.Chdir(t.TempDir())
	cfg := isolate(t, adaptExample(t, example))
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading examples/Caddyfile: %v", err)
	}
	defer caddy.Stop()

	// The mailbox requires TLS: plaintext MAIL gets 530.
	c, err := smtp.Dial("127.0.0.1:2526")
	if err != nil {
		t.Fatal(err)
	}
	c.Hello("client.test")
	if err := c.Mail("a@remote.test"); err == nil || !strings.Contains(err.Error(), "530") || !strings.Contains(err.Error(), "5.7.0 Must issue a STARTTLS command first") {
		t.Fatalf("plaintext MAIL to the mailbox: %v", err)
	}
	c.Close()

	// The gateway takes a message over STARTTLS (certificates are
	// obtained right after start: retry until the handshake works).
	var sendErr error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if sendErr = send("127.0.0.1:2525"); sendErr == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if sendErr != nil {
		t.Fatalf("sending to the gateway: %v", sendErr)
	}
	var msg []byte
	for time.Now().Before(deadline) && msg == nil {
		files, _ := filepath.Glob("data/maildir/new/*")
		if len(files) > 0 {
			msg, _ = os.ReadFile(files[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if msg == nil {
		t.Fatal("nothing in data/maildir/new")
	}
	if strings.Contains(string(msg), "\r") {
		t.Fatal("maildir file has CR characters; Maildir lines end with LF")
	}
	hdr, _, _ := strings.Cut(string(msg), "\n\n")
	if n := strings.Count(hdr, "Received: "); n != 2 {
		t.Fatalf("%d Received: headers, want 2:\n%s", n, hdr)
	}
	if n := strings.Count(hdr, "with ESMTPS"); n != 2 {
		t.Fatalf("%d hops say ESMTPS, want 2:\n%s", n, hdr)
	}
	if n := strings.Count(hdr, "(using TLSv1."); n != 2 {
		t.Fatalf("%d hops name their TLS version, want 2:\n%s", n, hdr)
	}
}

func send(addr string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		return err
	}
	if err := c.Mail("sender@remote.test"); err != nil {
		return err
	}
	if err := c.Rcpt("someone@example.test"); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Subject: quick start\r\n\r\nHello.\r\n")
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}
