package sts_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-smtp/caddy-smtp/internal/dnssectest"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/sts"
)

// policyHost is an HTTPS server for mta-sts.<domain> names with a
// certificate of a test CA; what it serves can be changed, or it can be
// made to fail.
type policyHost struct {
	mu      sync.Mutex
	body    map[string]string // host -> policy
	ctype   string
	status  int
	port    int
	fetches int
}

func newPolicyHost(t *testing.T, ca *st.CA, hosts ...string) *policyHost {
	h := &policyHost{body: map[string]string{}, ctype: "text/plain", status: 200}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, hosts[0], hosts...)}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return h
}

func (h *policyHost) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fetches++
	if h.status == http.StatusFound {
		http.Redirect(w, r, "https://elsewhere.test/.well-known/mta-sts.txt", http.StatusFound)
		return
	}
	w.Header().Set("Content-Type", h.ctype)
	w.WriteHeader(h.status)
	w.Write([]byte(h.body[r.Host]))
}

func (h *policyHost) set(fn func(h *policyHost)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn(h)
}

func policy(mode, mx string) string {
	return fmt.Sprintf("version: STSv1\r\nmode: %s\r\nmx: %s\r\nmax_age: 86400\r\n", mode, mx)
}

// TestCache: fetch, cache in storage, refetch when the TXT id changes,
// keep the cached policy when the policy host is down, refuse redirects
// and wrong content types, and a new Cache on the same storage (a
// restart, another node) knows the policy.
func TestCache(t *testing.T) {
	ca := st.NewCA(t, "STS CA")
	host := newPolicyHost(t, ca, "mta-sts.a.test", "mta-sts.b.test")
	host.set(func(h *policyHost) {
		h.body["mta-sts.a.test"] = policy("enforce", "mx.a.test")
		h.body["mta-sts.b.test"] = policy("testing", "mx.b.test")
	})
	zone := func(name, id string) dnssectest.Zone {
		return dnssectest.Zone{Name: name, Records: []string{
			"mta-sts." + name + ". 300 IN A 127.0.0.1",
			"_mta-sts." + name + `. 300 IN TXT "v=STSv1; id=` + id + `"`,
		}}
	}
	dnsSrv := dnssectest.Start(t, zone("a.test", "one"), zone("b.test", "x"))
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsSrv.Addr())
	}}
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	newCache := func() *sts.Cache {
		return &sts.Cache{Storage: storage, Recheck: time.Nanosecond,
			Fetcher: &sts.Fetcher{Resolver: resolver, Roots: st.Pool([]*x509.Certificate{ca.Cert}), Port: host.port, Timeout: 5 * time.Second}}
	}
	c := newCache()
	ctx := context.Background()

	e, how, err := c.Lookup(ctx, "a.test")
	if err != nil || e == nil || how != "fetched" || e.Policy.Mode != "enforce" || e.ID != "one" {
		t.Fatalf("first lookup: %+v %q %v", e, how, err)
	}
	e, how, _ = c.Lookup(ctx, "a.test")
	if how != "cached" || host.fetches != 1 {
		t.Fatalf("second lookup: %q, %d fetches", how, host.fetches)
	}
	// A restart (or another node): the same storage knows the policy.
	if e, how, _ = newCache().Lookup(ctx, "a.test"); how != "cached" || e.ID != "one" {
		t.Fatalf("after a restart: %+v %q", e, how)
	}
	// The id changes: refetched.
	host.set(func(h *policyHost) { h.body["mta-sts.a.test"] = policy("testing", "mx.a.test") })
	dnsSrv.Update(t, zone("a.test", "two"))
	if e, how, _ = c.Lookup(ctx, "a.test"); how != "fetched" || e.ID != "two" || e.Policy.Mode != "testing" {
		t.Fatalf("after the id changed: %+v %q", e, how)
	}
	// The policy host is down, the id changed again: the cached policy
	// is kept (RFC 8461 5.1).
	host.set(func(h *policyHost) { h.status = http.StatusServiceUnavailable })
	dnsSrv.Update(t, zone("a.test", "three"))
	if e, how, _ = c.Lookup(ctx, "a.test"); e == nil || e.ID != "two" || !strings.HasPrefix(how, "kept after a failed refetch") {
		t.Fatalf("policy host down: %+v %q", e, how)
	}
	// Redirects and other content types are refused; with no cached
	// policy the domain has none.
	for _, bad := range []func(h *policyHost){
		func(h *policyHost) { h.status = http.StatusFound },
		func(h *policyHost) { h.status, h.ctype = 200, "text/html" },
		func(h *policyHost) {
			h.status, h.ctype, h.body["mta-sts.b.test"] = 200, "text/plain", strings.Repeat("x", 10<<20)
		},
	} {
		host.set(bad)
		e, how, err := newCacheNoStorage(resolver, ca, host.port).Lookup(ctx, "b.test")
		if err != nil || e != nil || !strings.HasPrefix(how, "no policy (fetch failed") {
			t.Fatalf("bad policy host: %+v %q %v", e, how, err)
		}
	}
}

func newCacheNoStorage(r *net.Resolver, ca *st.CA, port int) *sts.Cache {
	return &sts.Cache{Recheck: time.Nanosecond,
		Fetcher: &sts.Fetcher{Resolver: r, Roots: st.Pool([]*x509.Certificate{ca.Cert}), Port: port, Timeout: 5 * time.Second}}
}
