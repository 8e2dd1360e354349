package smtpapp

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
)

// TestRelayTargets: smarthosts are tried in order; credentials go only
// inside TLS; concurrency to one destination stays within its limit.
func TestRelayTargets(t *testing.T) {
	e := newEnv(t)
	ca := newTestCA(t, "Relay CA")
	cert := ca.issue(t, "smarthost.test", "smarthost.test")
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	good := newUpstream(t, upstreamOpts{})
	authTLS := newUpstream(t, upstreamOpts{tls: tlsCfg, authUser: "gw", authPass: "s3cret"})
	authPlain := newUpstream(t, upstreamOpts{authUser: "gw", authPass: "s3cret"})
	slow := newUpstream(t, upstreamOpts{dataWait: 150e6})
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens

	gw := func(deliver map[string]any) (map[string]any, string) {
		deliver["via"] = "relay"
		return server(t, map[string]any{
			"tls":            map[string]any{"level": "none"},
			"relay_networks": []string{"127.0.0.1"},
			"routes":         []any{map[string]any{"domains": []string{"*"}, "deliver": deliver}},
		})
	}
	fallback, fallbackAddr := gw(map[string]any{"addresses": []string{dead, good.addr}, "tls": map[string]any{"level": "none"}})
	withAuth, withAuthAddr := gw(map[string]any{"addresses": []string{authTLS.addr}, "username": "gw", "password": "{env.CADDY_SMTP_TEST_PW}",
		"tls": map[string]any{"level": "encrypt"}})
	noTLSAuth, noTLSAuthAddr := gw(map[string]any{"addresses": []string{authPlain.addr}, "username": "gw", "password": "s3cret"})
	limited, limitedAddr := gw(map[string]any{"addresses": []string{slow.addr}, "tls": map[string]any{"level": "none"}})
	t.Setenv("CADDY_SMTP_TEST_PW", "s3cret")
	e.load(e.deliveringApp(map[string]any{"fallback": fallback, "auth": withAuth, "auth-plain": noTLSAuth, "limited": limited},
		map[string]any{"max_per_destination": 2, "workers": 8}), nil)

	t.Run("next-host", func(t *testing.T) {
		id := submit(t, fallbackAddr, "a@example.test", "b@remote.test", "Subject: fallback\r\n\r\nx\r\n.\r\n")
		l := e.deliveryLine(t, id)
		if l["status"] != "sent" || !strings.Contains(fmt.Sprint(l["relay"]), good.addr[strings.LastIndex(good.addr, ":"):]) {
			t.Fatalf("got %v via %v: %v", l["status"], l["relay"], l["reply"])
		}
	})
	t.Run("auth-inside-tls", func(t *testing.T) {
		id := submit(t, withAuthAddr, "a@example.test", "b@remote.test", "Subject: auth\r\n\r\nx\r\n.\r\n")
		if l := e.deliveryLine(t, id); l["status"] != "sent" || l["tls"] != true {
			t.Fatalf("got %v (tls %v): %v", l["status"], l["tls"], l["reply"])
		}
		authTLS.mu.Lock()
		defer authTLS.mu.Unlock()
		if len(authTLS.authed) != 1 || authTLS.authed[0] != "gw" {
			t.Fatalf("authenticated as %v", authTLS.authed)
		}
	})
	t.Run("no-credentials-in-plaintext", func(t *testing.T) {
		id := submit(t, noTLSAuthAddr, "a@example.test", "b@remote.test", "Subject: plain\r\n\r\nx\r\n.\r\n")
		l := e.deliveryLine(t, id)
		if l["status"] != "deferred" || !strings.Contains(fmt.Sprint(l["reply"]), "refusing to send credentials") {
			t.Fatalf("got %v: %v", l["status"], l["reply"])
		}
		authPlain.mu.Lock()
		defer authPlain.mu.Unlock()
		if len(authPlain.authed) != 0 {
			t.Fatal("credentials sent without TLS")
		}
	})
	t.Run("per-destination-limit", func(t *testing.T) {
		const n = 10
		for i := 0; i < n; i++ {
			submit(t, limitedAddr, "a@example.test", "b@remote.test", fmt.Sprintf("Subject: limited %d\r\n\r\nx\r\n.\r\n", i))
		}
		slow.waitMessages(t, n, 30e9)
		slow.mu.Lock()
		defer slow.mu.Unlock()
		if slow.maxActive > 2 {
			t.Fatalf("%d deliveries at once to one destination, limit 2", slow.maxActive)
		}
		t.Logf("at most %d at once", slow.maxActive)
	})
	// A relay with credentials but level none is a config error.
	bad, _ := gw(map[string]any{"addresses": []string{good.addr}, "username": "u", "password": "p", "tls": map[string]any{"level": "none"}})
	if err := e.loadErr(e.deliveringApp(map[string]any{"mx": bad}, nil)); err == nil || !strings.Contains(err.Error(), "servers.mx.routes[0].deliver") {
		t.Fatalf("credentials with tls none: %v", err)
	}
}
