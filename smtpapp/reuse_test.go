package smtpapp

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestDeliveryReusesConnection: through a running Caddy, messages to one
// smarthost share one STARTTLS session (the delivery log numbers them
// with conn_use), and a config reload closes the old relay target's
// idle session.
func TestDeliveryReusesConnection(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Reuse CA")
	up := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "smarthost.test", "smarthost.test"))})
	srv, addr := st.ServerConfig(t, map[string]any{
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes":         st.RelayRoute(up.Addr, map[string]any{"level": "may"}),
	})
	app := e.DeliveringApp(map[string]any{"gw": srv}, nil)
	e.Load(app, nil)

	for i := 1; i <= 3; i++ {
		id := st.Submit(t, addr, "a@example.test", "b@remote.test", "Subject: reuse\r\n\r\nx\r\n.\r\n")
		l := e.DeliveryLine(t, id)
		if l["status"] != "sent" || l["tls"] != true {
			t.Fatalf("message %d: %v", i, l)
		}
		// Only a reused connection says conn_use.
		if use, ok := l["conn_use"].(float64); i == 1 && ok || i > 1 && int(use) != i {
			t.Fatalf("message %d: conn_use %v", i, l["conn_use"])
		}
		up.WaitMessages(t, i, 5*time.Second)
	}
	if n := up.Connections(); n != 1 {
		t.Fatalf("3 messages took %d connections, want 1", n)
	}
	if n := up.OpenConnections(); n != 1 {
		t.Fatalf("%d connections open, want the idle one", n)
	}
	// One outbound handshake for the three.
	var m dto.Metric
	if err := hostileApp(t).metrics.Handshakes.WithLabelValues("gw", "out", "TLS 1.3", "ok").Write(&m); err != nil {
		t.Fatal(err)
	}
	if v := m.GetCounter().GetValue(); v != 1 {
		t.Fatalf("outbound handshakes counted: %v, want 1", v)
	}

	// A reload replaces the relay target; the old one's session ends.
	srv["hostname"] = "reloaded.localhost"
	e.PostLoad(e.DeliveringApp(map[string]any{"gw": srv}, nil), nil)
	if !st.Eventually(5*time.Second, func() bool { return up.OpenConnections() == 0 }) {
		t.Fatalf("%d connections still open after the reload", up.OpenConnections())
	}
}
