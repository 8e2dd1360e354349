package smtpapp

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestRelayTargets: smarthosts are tried in order; credentials go only
// inside TLS; concurrency to one destination stays within its limit.
func TestRelayTargets(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Relay CA")
	cert := ca.Issue(t, "smarthost.test", "smarthost.test")
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	good := st.NewUpstream(t, st.UpstreamOpts{})
	authTLS := st.NewUpstream(t, st.UpstreamOpts{TLS: tlsCfg, AuthUser: "gw", AuthPass: "s3cret"})
	authPlain := st.NewUpstream(t, st.UpstreamOpts{AuthUser: "gw", AuthPass: "s3cret"})
	slow := st.NewUpstream(t, st.UpstreamOpts{DataWait: 150e6})
	dead := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t)) // nothing listens

	gw := func(deliver map[string]any) (map[string]any, string) {
		deliver["via"] = "relay"
		return st.ServerConfig(t, map[string]any{
			"tls":            map[string]any{"level": "none"},
			"relay_networks": []string{"127.0.0.1"},
			"routes":         []any{map[string]any{"domains": []string{"*"}, "deliver": deliver}},
		})
	}
	fallback, fallbackAddr := gw(map[string]any{"addresses": []string{dead, good.Addr}, "tls": map[string]any{"level": "none"}})
	withAuth, withAuthAddr := gw(map[string]any{"addresses": []string{authTLS.Addr}, "username": "gw", "password": "{env.CADDY_SMTP_TEST_PW}",
		"tls": map[string]any{"level": "encrypt"}})
	noTLSAuth, noTLSAuthAddr := gw(map[string]any{"addresses": []string{authPlain.Addr}, "username": "gw", "password": "s3cret"})
	limited, limitedAddr := gw(map[string]any{"addresses": []string{slow.Addr}, "tls": map[string]any{"level": "none"}})
	t.Setenv("CADDY_SMTP_TEST_PW", "s3cret")
	e.Load(e.DeliveringApp(map[string]any{"fallback": fallback, "auth": withAuth, "auth-plain": noTLSAuth, "limited": limited},
		map[string]any{"max_per_destination": 2, "workers": 8}), nil)

	t.Run("next-host", func(t *testing.T) {
		id := st.Submit(t, fallbackAddr, "a@example.test", "b@remote.test", "Subject: fallback\r\n\r\nx\r\n.\r\n")
		l := e.DeliveryLine(t, id)
		if l["status"] != "sent" || !strings.Contains(fmt.Sprint(l["relay"]), good.Addr[strings.LastIndex(good.Addr, ":"):]) {
			t.Fatalf("got %v via %v: %v", l["status"], l["relay"], l["reply"])
		}
	})
	t.Run("auth-inside-tls", func(t *testing.T) {
		id := st.Submit(t, withAuthAddr, "a@example.test", "b@remote.test", "Subject: auth\r\n\r\nx\r\n.\r\n")
		if l := e.DeliveryLine(t, id); l["status"] != "sent" || l["tls"] != true {
			t.Fatalf("got %v (tls %v): %v", l["status"], l["tls"], l["reply"])
		}
		authTLS.Mu.Lock()
		defer authTLS.Mu.Unlock()
		if len(authTLS.Authed) != 1 || authTLS.Authed[0] != "gw" {
			t.Fatalf("authenticated as %v", authTLS.Authed)
		}
	})
	t.Run("no-credentials-in-plaintext", func(t *testing.T) {
		id := st.Submit(t, noTLSAuthAddr, "a@example.test", "b@remote.test", "Subject: plain\r\n\r\nx\r\n.\r\n")
		l := e.DeliveryLine(t, id)
		if l["status"] != "deferred" || !strings.Contains(fmt.Sprint(l["reply"]), "refusing to send credentials") {
			t.Fatalf("got %v: %v", l["status"], l["reply"])
		}
		authPlain.Mu.Lock()
		defer authPlain.Mu.Unlock()
		if len(authPlain.Authed) != 0 {
			t.Fatal("credentials sent without TLS")
		}
	})
	t.Run("per-destination-limit", func(t *testing.T) {
		const n = 10
		for i := 0; i < n; i++ {
			st.Submit(t, limitedAddr, "a@example.test", "b@remote.test", fmt.Sprintf("Subject: limited %d\r\n\r\nx\r\n.\r\n", i))
		}
		slow.WaitMessages(t, n, 30e9)
		slow.Mu.Lock()
		defer slow.Mu.Unlock()
		if slow.MaxActive > 2 {
			t.Fatalf("%d deliveries at once to one destination, limit 2", slow.MaxActive)
		}
		t.Logf("at most %d at once", slow.MaxActive)
	})
	// A relay with credentials but level none is a config error.
	bad, _ := gw(map[string]any{"addresses": []string{good.Addr}, "username": "u", "password": "p", "tls": map[string]any{"level": "none"}})
	if err := e.LoadErr(e.DeliveringApp(map[string]any{"mx": bad}, nil)); err == nil || !strings.Contains(err.Error(), "servers.mx.routes[0].deliver") {
		t.Fatalf("credentials with tls none: %v", err)
	}
}
