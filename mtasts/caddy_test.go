package mtasts_test

// A real Caddy in-process: the policy fetched over HTTPS, with the
// site's certificate from Caddy's internal CA, as a sending MTA fetches
// it. caddy.Load runs one config per process: no t.Parallel.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	_ "github.com/caddy-smtp/caddy-smtp/mtasts"
)

const site = "mta-sts.example.test"

// httpApps is the http app with one HTTPS site for the handler, on
// loopback, and the tls app giving the site a certificate from Caddy's
// internal CA (`tls internal`). It returns the apps and the site's
// address.
func httpApps(t *testing.T, handler map[string]any) (map[string]any, string) {
	port := st.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	handler["handler"] = "mta_sts"
	return map[string]any{
		"http": map[string]any{
			"http_port":  st.FreePort(t),
			"https_port": port,
			"servers": map[string]any{"mta_sts": map[string]any{
				"listen": []string{addr},
				"routes": []any{map[string]any{
					"match":    []any{map[string]any{"host": []string{site}}},
					"handle":   []any{handler},
					"terminal": true,
				}},
				"automatic_https": map[string]any{"disable_redirects": true},
			}},
		},
		"tls": map[string]any{"automation": map[string]any{"policies": []any{map[string]any{
			"subjects": []string{site},
			"issuers":  []any{map[string]any{"module": "internal"}},
		}}}},
	}, addr
}

// client fetches https://mta-sts.example.test/ from addr, trusting only
// pool, without following redirects (RFC 8461 §3.3).
func client(pool *x509.CertPool, addr string) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

// fetch does one request; the site's certificate is issued after Start,
// so it retries until the TLS handshake verifies.
func fetch(t *testing.T, c *http.Client, method, path string) response {
	t.Helper()
	var r response
	var lastErr error
	if !st.Eventually(30*time.Second, func() bool {
		req, err := http.NewRequest(method, "https://"+site+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			lastErr = err
			return false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			lastErr = err
			return false
		}
		r = response{resp.StatusCode, resp.Header, string(b)}
		return true
	}) {
		t.Fatalf("%s https://%s%s: %v", method, site, path, lastErr)
	}
	return r
}

func TestServePolicy(t *testing.T) {
	e := st.NewEnv(t)
	apps, addr := httpApps(t, map[string]any{
		"mode":    "enforce",
		"mx":      []string{"mx1.example.test", "*.mx.example.test"},
		"max_age": "1d",
	})
	e.Load(st.App(nil), apps)
	c := client(e.LocalCARoot(), addr)

	r := fetch(t, c, http.MethodGet, "/.well-known/mta-sts.txt")
	want := "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n"
	if r.status != http.StatusOK || r.body != want {
		t.Errorf("GET: %d %q, want 200 %q", r.status, r.body, want)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	// Real TLS: the certificate is the internal CA's, which nothing
	// else trusts.
	if _, err := client(x509.NewCertPool(), addr).Get("https://" + site + "/.well-known/mta-sts.txt"); err == nil ||
		!strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("a client that trusts no root: %v, want certificate signed by unknown authority", err)
	}

	r = fetch(t, c, http.MethodHead, "/.well-known/mta-sts.txt")
	if r.status != http.StatusOK || r.body != "" || r.header.Get("Content-Type") != "text/plain" ||
		r.header.Get("Content-Length") != fmt.Sprint(len(want)) {
		t.Errorf("HEAD: %d %q %v", r.status, r.body, r.header)
	}

	for _, path := range []string{"/", "/.well-known/mta-sts.txt/", "/.well-known/mta-sts", "/mta-sts.txt", "/.well-known/MTA-STS.TXT"} {
		if r := fetch(t, c, http.MethodGet, path); r.status != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, r.status)
		}
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		r := fetch(t, c, m, "/.well-known/mta-sts.txt")
		if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: %d, Allow %q; want 405, GET, HEAD", m, r.status, r.header.Get("Allow"))
		}
	}
}

// Without mx, the policy names the smtp app's server host names.
func TestDefaultMXFromSMTPApp(t *testing.T) {
	e := st.NewEnv(t)
	servers := map[string]any{}
	for name, host := range map[string]string{"mx": "mx2.example.test", "backup": "MX1.example.test.", "submission": "mx2.example.test"} {
		servers[name], _ = st.ServerConfig(t, map[string]any{"hostname": host, "tls": map[string]any{"level": "none"}})
	}
	apps, addr := httpApps(t, map[string]any{"mode": "testing"})
	e.Load(st.App(servers), apps)

	r := fetch(t, client(e.LocalCARoot(), addr), http.MethodGet, "/.well-known/mta-sts.txt")
	want := "version: STSv1\r\nmode: testing\r\nmx: mx1.example.test\r\nmx: mx2.example.test\r\nmax_age: 604800\r\n"
	if r.status != http.StatusOK || r.body != want {
		t.Errorf("GET: %d %q, want 200 %q", r.status, r.body, want)
	}
}

// withoutSMTP is e's whole config with the handler's apps and no smtp
// app.
func withoutSMTP(t *testing.T, e *st.Env, apps map[string]any) []byte {
	var cfg map[string]any
	if err := json.Unmarshal(e.Config(st.App(nil), apps), &cfg); err != nil {
		t.Fatal(err)
	}
	delete(cfg["apps"].(map[string]any), "smtp")
	b, _ := json.Marshal(cfg)
	return b
}

func TestConfigErrors(t *testing.T) {
	e := st.NewEnv(t)
	for _, tc := range []struct {
		name    string
		handler map[string]any
		err     string
	}{
		{"bad mode", map[string]any{"mode": "strict", "mx": []string{"mx.example.test"}}, `mode: "strict" is not one of none, testing, enforce`},
		{"two wildcards", map[string]any{"mx": []string{"*.*.example.test"}}, `mx: "*.*.example.test": a wildcard may only be the whole leftmost label`},
		{"an IP", map[string]any{"mx": []string{"192.0.2.25"}}, `mx: "192.0.2.25" is an IP address`},
		{"max_age over a year", map[string]any{"mx": []string{"mx.example.test"}, "max_age": "31557601s"}, "max_age: 8766h0m1s is above RFC 8461's limit of 31557600s"},
		{"unknown field id", map[string]any{"mx": []string{"mx.example.test"}, "id": "20240101"}, `unknown field "id"`},
	} {
		apps, _ := httpApps(t, tc.handler)
		err := caddy.Load(e.Config(st.App(nil), apps), true)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.err)
		}
	}

	// No mx, no smtp app: nothing to take host names from.
	apps, _ := httpApps(t, map[string]any{"mode": "enforce"})
	if err := caddy.Load(withoutSMTP(t, e, apps), true); err == nil || !strings.Contains(err.Error(), "mx is required") {
		t.Errorf("no mx and no smtp app: got %v, want mx is required", err)
	}
	// An smtp app without servers is no better.
	apps, _ = httpApps(t, map[string]any{"mode": "enforce"})
	if err := caddy.Load(e.Config(st.App(nil), apps), true); err == nil || !strings.Contains(err.Error(), "mx is required") {
		t.Errorf("no mx and an smtp app without servers: got %v, want mx is required", err)
	}
	// A default mx from a server host name that is no MX pattern.
	srv, _ := st.ServerConfig(t, map[string]any{"hostname": "127.0.0.1", "tls": map[string]any{"level": "none"}})
	apps, _ = httpApps(t, map[string]any{})
	if err := caddy.Load(e.Config(st.App(map[string]any{"mx": srv}), apps), true); err == nil ||
		!strings.Contains(err.Error(), `servers.mx.hostname is no MX pattern: "127.0.0.1" is an IP address`) {
		t.Errorf("smtp server hostname 127.0.0.1: got %v", err)
	}
}

// adapt turns a Caddyfile into JSON, failing on warnings.
func adapt(t *testing.T, caddyfile string) []byte {
	t.Helper()
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		t.Errorf("adapt warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	return cfg
}

// handlers returns every handler object named name in a config.
func handlers(v any, name string) []map[string]any {
	var out []map[string]any
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == name {
			out = append(out, v)
		}
		for _, x := range v {
			out = append(out, handlers(x, name)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, handlers(x, name)...)
		}
	}
	return out
}

// The directive needs no `order` global option.
func TestCaddyfileAdapt(t *testing.T) {
	cfg := adapt(t, `mta-sts.example.com {
	mta_sts {
		mode enforce # none | testing | enforce; default testing
		mx mx.example.com # default: the hostnames of the smtp app's servers
		max_age 7d
	}
}
`)
	var v any
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	got := handlers(v, "mta_sts")
	if len(got) != 1 {
		t.Fatalf("%d mta_sts handlers in %s", len(got), cfg)
	}
	b, _ := json.Marshal(got[0])
	if want := `{"handler":"mta_sts","max_age":604800000000000,"mode":"enforce","mx":["mx.example.com"]}`; string(b) != want {
		t.Errorf("handler JSON %s, want %s", b, want)
	}

	// Before respond, as Caddy orders its own responding handlers: a
	// scoped mta_sts and a respond share a site.
	cfg = adapt(t, "mta-sts.example.com {\n\trespond \"hello\"\n\tmta_sts /.well-known/mta-sts.txt {\n\t\tmx mx.example.com\n\t}\n}\n")
	if i, j := strings.Index(string(cfg), `"mta_sts"`), strings.Index(string(cfg), `"static_response"`); i < 0 || j < 0 || i > j {
		t.Errorf("mta_sts is not before respond: %s", cfg)
	}
}

// The user's path: a Caddyfile with the smtp global option and a site
// with `tls internal`, adapted and run; mx defaults to the smtp server's
// host name.
func TestCaddyfileSite(t *testing.T) {
	e := st.NewEnv(t)
	port := st.FreePort(t)
	cfg := adapt(t, fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	log {
		output file %s
		format json
	}
	skip_install_trust
	http_port %d
	https_port %d
	auto_https disable_redirects
	smtp {
		queue {
			path %s
			hold
		}
		server mx {
			listen 127.0.0.1:%d
			hostname mx.example.test
			tls none
		}
	}
}

%s {
	bind 127.0.0.1
	tls internal
	mta_sts {
		mode enforce
		max_age 14d
	}
}
`, e.Admin, filepath.Join(e.Dir, "storage"), e.LogFile, st.FreePort(t), port, e.SpoolDir(), st.FreePort(t), site))
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading %s: %v", cfg, err)
	}
	r := fetch(t, client(e.LocalCARoot(), fmt.Sprintf("127.0.0.1:%d", port)), http.MethodGet, "/.well-known/mta-sts.txt")
	want := "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 1209600\r\n"
	if r.status != http.StatusOK || r.body != want || r.header.Get("Content-Type") != "text/plain" {
		t.Errorf("GET: %d %q %q, want 200 %q text/plain", r.status, r.body, r.header.Get("Content-Type"), want)
	}
}
