package sts_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/admin"
	"github.com/caddy-smtp/caddy-smtp/internal/dnssectest"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	_ "github.com/caddy-smtp/caddy-smtp/mtasts"
	"github.com/caddy-smtp/caddy-smtp/smtpcmd"
)

// TestMTASTSDelivery: the mx target with MTA-STS against Caddy itself as
// the policy host (the mta_sts handler, Caddy's internal CA trusted by
// the fetch's trust_pool, on 127.0.0.1:443 as RFC 8461 fixes it), with
// DNS from a real resolver (Unbound in front of NSD). Cells: enforce
// with a matching MX (raised to verify, sent), enforce with an MX
// outside the policy (not used: deferred), enforce with a certificate
// not valid for the MX name (deferred), testing (route level, sent, and
// the failure it would have been is in the log).
func TestMTASTSDelivery(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root for port 443")
		}
		t.Skip("needs root for port 443 (RFC 8461 fixes the policy host's port)")
	}
	ca := st.NewCA(t, "MX CA")
	// The upstream (every MX host, 127.0.0.1) has a certificate for
	// mx.good.test only.
	up := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "mx.good.test", "mx.good.test"))})
	_, upPort, _ := net.SplitHostPort(up.Addr)

	type dom struct {
		name, mx, mode, policyMX string
	}
	doms := []dom{
		{"good.test", "mx.good.test", "enforce", "mx.good.test"},
		{"outside.test", "mx.outside.test", "enforce", "mx.elsewhere.test"},
		{"badcert.test", "mx.badcert.test", "enforce", "*.badcert.test"},
		{"testing.test", "mx.testing.test", "testing", "mx.testing.test"},
	}
	var zones []dnssectest.Zone
	var routes []any
	var subjects []string
	// trunc.test: a better MX outside the policy with five addresses
	// must not crowd out the one the policy names.
	doms = append(doms, dom{"trunc.test", "b.trunc.test", "enforce", "b.trunc.test"})
	for _, d := range doms {
		recs := []string{
			d.name + ". 300 IN MX 20 " + d.mx + ".",
			d.mx + ". 300 IN A 127.0.0.1",
			"mta-sts." + d.name + ". 300 IN A 127.0.0.1",
			"_mta-sts." + d.name + `. 300 IN TXT "v=STSv1; id=` + strings.ReplaceAll(d.name, ".", "") + `"`,
		}
		if d.name == "trunc.test" {
			recs = append(recs, "trunc.test. 300 IN MX 10 a.trunc.test.")
			for i := 11; i <= 15; i++ {
				recs = append(recs, fmt.Sprintf("a.trunc.test. 300 IN A 127.0.0.%d", i))
			}
		}
		zones = append(zones, dnssectest.Zone{Name: d.name, Records: recs})
		routes = append(routes, map[string]any{
			"match":  []any{map[string]any{"host": []string{"mta-sts." + d.name}}},
			"handle": []any{map[string]any{"handler": "mta_sts", "mode": d.mode, "mx": []string{d.policyMX}}},
		})
		subjects = append(subjects, "mta-sts."+d.name)
	}
	// Policy hosts that Caddy answers wrongly on purpose: a redirect, and
	// text/html; both mean no policy.
	for _, bad := range []struct {
		name    string
		handler map[string]any
	}{
		{"redirect.test", map[string]any{"handler": "static_response", "status_code": 302,
			"headers": map[string]any{"Location": []string{"https://mta-sts.good.test/.well-known/mta-sts.txt"}}}},
		{"html.test", map[string]any{"handler": "static_response", "status_code": 200,
			"headers": map[string]any{"Content-Type": []string{"text/html"}},
			"body":    "version: STSv1\r\nmode: enforce\r\nmx: nothing.html.test\r\nmax_age: 86400\r\n"}},
	} {
		zones = append(zones, dnssectest.Zone{Name: bad.name, Records: []string{
			bad.name + ". 300 IN MX 10 mx." + bad.name + ".",
			"mx." + bad.name + ". 300 IN A 127.0.0.1",
			"mta-sts." + bad.name + ". 300 IN A 127.0.0.1",
			"_mta-sts." + bad.name + `. 300 IN TXT "v=STSv1; id=bad"`,
		}})
		routes = append(routes, map[string]any{
			"match":  []any{map[string]any{"host": []string{"mta-sts." + bad.name}}},
			"handle": []any{bad.handler},
		})
		subjects = append(subjects, "mta-sts."+bad.name)
	}
	dnsSrv := dnssectest.Start(t, zones...)

	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{
			"via": "mx", "resolver": dnsSrv.Addr(), "port": mustAtoi(upPort),
			"tls":     map[string]any{"level": "may", "trust_pool": map[string]any{"provider": "file", "pem_files": []string{ca.PEMFile}}},
			"mta_sts": map[string]any{"trust_pool": map[string]any{"provider": "pki_root", "authority": []string{"local"}}},
		}}},
	})
	extra := func(routes []any) map[string]any {
		return map[string]any{
			"http": map[string]any{"servers": map[string]any{"sts": map[string]any{
				"listen": []string{"127.0.0.1:443"}, "routes": routes,
				"automatic_https": map[string]any{"disable_redirects": true},
			}}},
			"tls": map[string]any{"automation": map[string]any{"policies": []any{
				map[string]any{"subjects": subjects, "issuers": []any{map[string]any{"module": "internal"}}},
			}}},
		}
	}
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, nil), extra(routes))
	// The policy host serves once its certificates are issued.
	roots := e.LocalCARoot()
	if !st.Eventually(30*time.Second, func() bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", "127.0.0.1:443",
			&tls.Config{RootCAs: roots, ServerName: "mta-sts.testing.test"})
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("the policy host has no certificate after 30s")
	}

	for _, tc := range []struct {
		domain, status, policy, reply string
		verified                      bool
	}{
		{"good.test", "sent", "verify mta-sts enforce", "", true},
		{"outside.test", "deferred", "verify mta-sts enforce", "no MX host is in the policy", false},
		{"badcert.test", "deferred", "verify mta-sts enforce", "certificate not verified", false},
		{"testing.test", "sent", "may route (mta-sts testing: would fail: the certificate was not verified", "", false},
		// b.trunc.test was tried (its certificate is mx.good.test's).
		{"trunc.test", "deferred", "verify mta-sts enforce", "b.trunc.test", false},
		// No policy from a redirect or from text/html: the route's level.
		{"redirect.test", "sent", "may route", "", false},
		{"html.test", "sent", "may route", "", false},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			id := st.Submit(t, addr, "sender@example.test", "rcpt@"+tc.domain, "Subject: "+tc.domain+"\r\n\r\nbody\r\n.\r\n")
			l := e.DeliveryLine(t, id)
			if l["status"] != tc.status || !strings.HasPrefix(fmt.Sprint(l["tls_policy"]), tc.policy) ||
				!strings.Contains(fmt.Sprint(l["reply"]), tc.reply) || (tc.verified && l["tls_verified"] != true) {
				t.Fatalf("delivery line %v", l)
			}
		})
	}
	if len(e.LogLines("mta-sts testing: enforce would have failed")) == 0 {
		t.Fatal("no log line for the testing-mode failure")
	}
	for _, l := range e.LogLines("mta-sts policy fetch failed") {
		t.Logf("fetch failed: %v: %v", l["domain"], l["error"])
	}
	if n := len(e.LogLines("mta-sts policy fetch failed")); n < 2 {
		t.Fatalf("%d fetch failures logged, want the redirect's and text/html's", n)
	}
	// caddy smtp-tls check's endpoint explains good.test without sending.
	before := len(up.Received())
	resp0, err := http.Get("http://" + e.Admin + "/smtp/tls-policy/good.test?connect=1")
	if err != nil {
		t.Fatal(err)
	}
	var rep admin.TLSPolicyResponse
	if err := json.NewDecoder(resp0.Body).Decode(&rep); err != nil || resp0.StatusCode != 200 {
		t.Fatalf("tls-policy: %d %v", resp0.StatusCode, err)
	}
	resp0.Body.Close()
	if rep.Server != "gw" || rep.Via != "mx" || rep.MTASTS == nil || rep.MTASTS.Mode != "enforce" || len(rep.Hosts) != 1 ||
		rep.Hosts[0].TLSPolicy != "verify mta-sts enforce" || rep.Hosts[0].Probe == nil || !rep.Hosts[0].Probe.Verified ||
		rep.Hosts[0].Probe.Match != "mx.good.test" {
		t.Fatalf("tls-policy report %+v (host %+v)", rep, rep.Hosts)
	}
	var text strings.Builder
	smtpcmd.WriteTLSReport(&text, rep)
	t.Logf("caddy smtp-tls check good.test --connect:\n%s", text.String())
	if len(up.Received()) != before {
		t.Fatal("the check sent mail")
	}
	// Metrics count deliveries by policy and outcome.
	resp, err := http.Get("http://" + e.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`caddy_smtp_tls_policy_attempts_total{policy="mta-sts enforce",server="gw",tls="verified"} 1`,
		`caddy_smtp_tls_policy_attempts_total{policy="mta-sts testing",server="gw",tls="untrusted"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %s in /metrics", want)
		}
	}
	// testing.test's policy becomes enforce and its TXT id changes; a
	// reload (a new smtp app: nothing in memory) refetches it from
	// Caddy, and the new mode applies (mx.testing.test's certificate is
	// not valid for it: deferred).
	routes[3] = map[string]any{
		"match":  []any{map[string]any{"host": []string{"mta-sts.testing.test"}}},
		"handle": []any{map[string]any{"handler": "mta_sts", "mode": "enforce", "mx": []string{"mx.testing.test"}}},
	}
	zt := zones[3]
	zt.Records[3] = `_mta-sts.testing.test. 300 IN TXT "v=STSv1; id=enforcednow"`
	dnsSrv.Update(t, zt)
	e.PostLoad(e.DeliveringApp(map[string]any{"gw": s}, nil), extra(routes))
	idt := st.Submit(t, addr, "sender@example.test", "rcpt@testing.test", "Subject: refetch\r\n\r\nbody\r\n.\r\n")
	if l := e.DeliveryLine(t, idt); l["status"] != "deferred" || l["tls_policy"] != "verify mta-sts enforce" {
		t.Fatalf("after the TXT id changed: %v", l)
	}
	// The policy host goes away (a config without the http app: also a
	// new smtp app, with nothing in memory) and good.test's TXT id
	// changes: the refetch fails, and the policy cached in Caddy's
	// storage is kept and enforced.
	zs := zones[0]
	zs.Records[3] = `_mta-sts.good.test. 300 IN TXT "v=STSv1; id=changed"`
	dnsSrv.Update(t, zs)
	e.PostLoad(e.DeliveringApp(map[string]any{"gw": s}, nil), map[string]any{"tls": map[string]any{}})
	id := st.Submit(t, addr, "sender@example.test", "rcpt@good.test", "Subject: host down\r\n\r\nbody\r\n.\r\n")
	if l := e.DeliveryLine(t, id); l["status"] != "sent" || l["tls_policy"] != "verify mta-sts enforce" {
		t.Fatalf("with the policy host down: %v", l)
	}
	kept := false
	for _, l := range e.LogLines("mta-sts policy fetch failed") {
		kept = kept || (l["domain"] == "good.test" && l["cached_policy_kept"] == true)
	}
	if !kept {
		t.Fatal("no log line of the failed refetch that kept the cached policy")
	}
}

func mustAtoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}
