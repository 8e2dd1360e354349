package admin_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav"
)

// TestGrafanaDashboard checks examples/grafana-dashboard.json against a
// live scrape: every caddy_smtp_* metric a panel queries is exposed by
// the admin endpoint's /metrics, with every label the query selects or
// groups by; the data source is the ${DS_PROMETHEUS} input.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("../examples/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Inputs []struct {
			Name, Type, PluginID string
		} `json:"__inputs"`
		Panels []struct {
			Type, Title string
			Datasource  *struct{ Type, UID string }
			Targets     []struct {
				Expr       string
				Datasource struct{ UID string }
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("not valid JSON: %v", err)
	}
	if len(dash.Inputs) != 1 || dash.Inputs[0].Name != "DS_PROMETHEUS" || dash.Inputs[0].PluginID != "prometheus" {
		t.Errorf("inputs: %+v", dash.Inputs)
	}

	// A live instance with every family populated: a TLS session in,
	// a message accepted and delivered.
	e := st.NewEnv(t)
	sink := st.NewUpstream(t, st.UpstreamOpts{})
	// A check whose clamd is down, on_error accept: the message goes
	// on and the check families are in /metrics (verdict error).
	down := fmt.Sprintf("tcp/127.0.0.1:%d", st.FreePort(t))
	s, addr := st.ServerConfig(t, map[string]any{
		"relay_networks": []string{"127.0.0.1"},
		"routes":         []any{st.DomainRelayRoute("*", sink.Addr)},
		"checks":         []any{map[string]any{"check": "clamav", "address": down, "on_error": "accept"}},
	})
	// And a real clamd quarantining EICAR: the quarantine families.
	q, qAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"checks": []any{map[string]any{"check": "clamav", "address": "tcp/" + st.StartClamd(t), "action": "quarantine"}}})
	e.Load(e.DeliveringApp(map[string]any{"mx": s, "q": q}, nil), nil)
	qc := st.Dial(t, qAddr)
	qc.Expect("250", "EHLO client.test")
	if got := qc.Send("a@remote.test", "b@example.test", "Subject: virus\r\n\r\n"+st.EICAR+"\r\n.\r\n"); !strings.HasPrefix(got, "250 ") {
		t.Fatal(got)
	}
	st.WaitTLS(t, addr, st.TLSConfig(nil, "localhost"))
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(st.TLSConfig(nil, "localhost")); err != nil {
		t.Fatal(err)
	}
	c.Expect("250", "EHLO client.test")
	if got := c.Send("a@example.test", "b@remote.test", st.NamedMessage("dashboard")); !strings.HasPrefix(got, "250 ") {
		t.Fatal(got)
	}
	sink.WaitMessages(t, 1, 10*time.Second)
	var fams = scrape(t, e.Admin)
	st.WaitFor(t, "a delivery in /metrics", func() bool {
		fams = scrape(t, e.Admin)
		return value(fams, "caddy_smtp_delivery_attempts_total", labels{"result": "sent"}) == 1
	})
	labelsOf := func(name string) map[string]bool {
		out := map[string]bool{"instance": true, "job": true, "le": true}
		f := fams[name]
		if f == nil {
			return nil
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				out[l.GetName()] = true
			}
		}
		return out
	}

	metricRe := regexp.MustCompile(`(caddy_smtp_[a-z_]+)(\{([^}]*)\})?`)
	matcherRe := regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)\s*"`)
	byRe := regexp.MustCompile(`by \(([^)]*)\)`)
	n := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${DS_PROMETHEUS}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %+v, %d queries", p.Title, p.Datasource, len(p.Targets))
		}
		for _, tg := range p.Targets {
			n++
			if tg.Datasource.UID != "${DS_PROMETHEUS}" {
				t.Errorf("panel %q: query data source %q", p.Title, tg.Datasource.UID)
			}
			used := map[string]bool{}
			for _, m := range metricRe.FindAllStringSubmatch(tg.Expr, -1) {
				name := strings.TrimSuffix(m[1], "_bucket")
				have := labelsOf(name)
				if have == nil {
					t.Errorf("panel %q: %s is not in /metrics", p.Title, name)
					continue
				}
				for k := range have {
					used[k] = true
				}
				for _, mm := range matcherRe.FindAllStringSubmatch(m[3], -1) {
					if !have[mm[1]] {
						t.Errorf("panel %q: %s has no label %q", p.Title, name, mm[1])
					}
				}
			}
			for _, by := range byRe.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(by[1], ",") {
					if l = strings.TrimSpace(l); !used[l] {
						t.Errorf("panel %q: grouped by %q, a label of none of its metrics", p.Title, l)
					}
				}
			}
		}
	}
	for _, want := range []string{"caddy_smtp_tls_handshakes_total", "caddy_smtp_accept_latency_seconds", "caddy_smtp_delivery_delay_seconds",
		"caddy_smtp_checks_total", "caddy_smtp_check_latency_seconds", "caddy_smtp_quarantined_total", "caddy_smtp_quarantine_messages"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the dashboard does not use %s", want)
		}
	}
	if n < 10 {
		t.Errorf("%d queries", n)
	}
	if v := value(fams, "caddy_smtp_checks_total", labels{"check": "clamav", "verdict": "error"}); v != 1 {
		t.Errorf("checks_total{clamav, error}: %v", v)
	}
	if v := value(fams, "caddy_smtp_quarantined_total", labels{"check": "clamav"}); v != 1 {
		t.Errorf("quarantined_total{clamav}: %v", v)
	}
	if v := value(fams, "caddy_smtp_quarantine_messages", labels{}); v != 1 {
		t.Errorf("quarantine_messages: %v", v)
	}
	if v := value(fams, "caddy_smtp_tls_handshakes_total", labels{"direction": "in", "result": "ok", "version": "TLS 1.3"}); v < 1 {
		t.Errorf("inbound TLS 1.3 handshakes: %v", v)
	}
}
