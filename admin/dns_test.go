package admin_test

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-smtp/caddy-smtp/admin"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/mtasts"
)

// dnsConfig loads a config with four servers and an mta_sts site, and
// returns the server addresses by name (and files' certificate and key
// files). mx and mx2 take mail for
// example.test, mx2 also for example.org, plain (no TLS) for
// example.net; files serves certificate files (for another name than
// its hostname) and takes no mail for anyone. The http app serves the
// policy of example.test only. The other hostnames get a certificate
// from Caddy's internal CA.
func dnsConfig(t *testing.T, e *st.Env) map[string]string {
	t.Helper()
	mx, mxAddr := st.ServerConfig(t, map[string]any{
		"hostname":       "mx.example.internal",
		"accept_domains": []string{"example.test", "*.wild.example.test"},
	})
	mx2, mx2Addr := st.ServerConfig(t, map[string]any{
		"hostname":       "mx2.example.internal",
		"accept_domains": []string{"Example.TEST.", "example.org"},
		"tls":            map[string]any{"level": "encrypt"},
	})
	plain, plainAddr := st.ServerConfig(t, map[string]any{
		"hostname":       "plain.example.internal",
		"accept_domains": []string{"example.net"},
		"tls":            map[string]any{"level": "none"},
	})
	certFile, keyFile := st.WritePair(t, st.NewCA(t, "files CA").Issue(t, "other.example.internal", "other.example.internal"))
	files, filesAddr := st.ServerConfig(t, map[string]any{
		"hostname":       "files.example.internal",
		"accept_domains": nil,
		"tls":            map[string]any{"certificate": map[string]any{"certificate": certFile, "key": keyFile}},
	})
	const site = "mta-sts.example.test"
	httpPort := st.FreePort(t)
	apps := map[string]any{
		"http": map[string]any{
			"http_port":  st.FreePort(t),
			"https_port": httpPort,
			"servers": map[string]any{"mta_sts": map[string]any{
				"listen": []string{fmt.Sprintf("127.0.0.1:%d", httpPort)},
				// as a Caddyfile site block has it: the handler in a
				// subroute of the host's route
				"routes": []any{map[string]any{
					"match": []any{map[string]any{"host": []string{site}}},
					"handle": []any{map[string]any{
						"handler": "subroute",
						"routes": []any{map[string]any{
							"handle": []any{map[string]any{"handler": "mta_sts", "mode": "enforce"}},
						}},
					}},
					"terminal": true,
				}},
				"automatic_https": map[string]any{"disable_redirects": true},
			}},
		},
		"tls": map[string]any{"automation": map[string]any{"policies": []any{map[string]any{
			"subjects": []string{site},
			"issuers":  []any{map[string]any{"module": "internal"}},
		}}}},
	}
	e.Load(st.App(map[string]any{"mx": mx, "mx2": mx2, "plain": plain, "files": files}), apps)
	return map[string]string{"mx": mxAddr, "mx2": mx2Addr, "plain": plainAddr, "files": filesAddr, "files-certificate": certFile, "files-key": keyFile}
}

// servedSPKI does a STARTTLS handshake with the server at addr and
// returns the SHA-256 of the key of the certificate it served, in hex.
func servedSPKI(t *testing.T, addr string) string {
	t.Helper()
	var leaf *x509.Certificate
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(&tls.Config{
		InsecureSkipVerify: true, // the key is what is compared
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf = cs.PeerCertificates[0]
			return nil
		},
	}); err != nil {
		t.Fatalf("STARTTLS with %s: %v", addr, err)
	}
	c.Conn.Close()
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// policyID is the id of the running http app's mta_sts handler.
func policyID(t *testing.T) string {
	t.Helper()
	appIface, err := caddy.ActiveContext().App("http")
	if err != nil {
		t.Fatal(err)
	}
	route := appIface.(*caddyhttp.App).Servers["mta_sts"].Routes[0]
	inner := route.Handlers[0].(*caddyhttp.Subroute).Routes[0]
	_, id := inner.Handlers[0].(*mtasts.Handler).Policy()
	if id == "" {
		t.Fatal("the mta_sts handler has no policy id")
	}
	return id
}

// TestDNSAPI asks GET /smtp/dns of a running Caddy and compares every
// record with what the config serves: MX per (domain, hostname), the
// _mta-sts TXT with the handler's policy id, and TLSA 3 1 1 records
// whose hash is that of the key a real STARTTLS handshake is served.
func TestDNSAPI(t *testing.T) {
	e := st.NewEnv(t)
	addrs := dnsConfig(t, e)
	roots := e.LocalCARoot()
	st.WaitTLS(t, addrs["mx"], st.TLSConfig(roots, "mx.example.internal"))
	st.WaitTLS(t, addrs["mx2"], st.TLSConfig(roots, "mx2.example.internal"))
	api := apiClient{base: "http://" + e.Admin}

	port := func(name string) string { return addrs[name][len("127.0.0.1:"):] }
	want := []admin.DNSRecord{
		{Name: "example.net", Type: "MX", Value: "10 plain.example.internal."},
		{Name: "example.org", Type: "MX", Value: "10 mx2.example.internal."},
		{Name: "example.test", Type: "MX", Value: "10 mx.example.internal."},
		{Name: "example.test", Type: "MX", Value: "10 mx2.example.internal."},
		{Name: "_mta-sts.example.test", Type: "TXT", Value: "v=STSv1; id=" + policyID(t)},
		{Name: "_" + port("files") + "._tcp.files.example.internal", Type: "TLSA", Value: "3 1 1 " + servedSPKI(t, addrs["files"])},
		{Name: "_" + port("mx") + "._tcp.mx.example.internal", Type: "TLSA", Value: "3 1 1 " + servedSPKI(t, addrs["mx"])},
		{Name: "_" + port("mx2") + "._tcp.mx2.example.internal", Type: "TLSA", Value: "3 1 1 " + servedSPKI(t, addrs["mx2"])},
	}
	var got []admin.DNSRecord
	api.json(t, http.MethodGet, "/smtp/dns", nil, http.StatusOK, &got)
	if !slices.Equal(got, want) {
		t.Fatalf("GET /smtp/dns:\n got %v\nwant %v", got, want)
	}

	for _, c := range []struct {
		domain string
		want   []admin.DNSRecord
	}{
		{"example.org", want[1:2]},
		{"EXAMPLE.test.", []admin.DNSRecord{want[2], want[3], want[4]}},
		{"mx2.example.internal", want[7:8]},
		{"example.internal", want[5:8]},
		{"nowhere.test", []admin.DNSRecord{}},
	} {
		var got []admin.DNSRecord
		api.json(t, http.MethodGet, "/smtp/dns?domain="+c.domain, nil, http.StatusOK, &got)
		if !slices.Equal(got, c.want) {
			t.Errorf("?domain=%s:\n got %v\nwant %v", c.domain, got, c.want)
		}
	}

	var apiErr map[string]any
	api.json(t, http.MethodPost, "/smtp/dns", nil, http.StatusMethodNotAllowed, &apiErr)
	if apiErr["error"] == nil {
		t.Errorf("POST /smtp/dns: %v", apiErr)
	}

	// Certificate files replaced without a reload are not served yet:
	// their key is no record to publish.
	newCert, newKey := st.WritePair(t, st.NewCA(t, "files CA 2").Issue(t, "other.example.internal", "other.example.internal"))
	for from, to := range map[string]string{newCert: addrs["files-certificate"], newKey: addrs["files-key"]} {
		pem, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	apiErr = nil
	api.json(t, http.MethodGet, "/smtp/dns", nil, http.StatusServiceUnavailable, &apiErr)
	if msg, _ := apiErr["error"].(string); !strings.Contains(msg, "servers.files: tls.certificate:") || !strings.Contains(msg, "reload") {
		t.Errorf("GET /smtp/dns after the files changed: %v", apiErr)
	}
}

// dkimWant returns the TXT record of the DKIM key in the env's storage
// for domain and selector, derived here from the key file: the raw
// Ed25519 key (RFC 8463) or the RSA SubjectPublicKeyInfo.
func dkimWant(t *testing.T, e *st.Env, domain, selector string) admin.DNSRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.Dir, "storage", "smtp", "dkim", domain, selector+".key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s/%s: not a PKCS#8 PEM key", domain, selector)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var value string
	switch k := key.(type) {
	case ed25519.PrivateKey:
		value = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		value = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	default:
		t.Fatalf("%s/%s: a %T key", domain, selector, key)
	}
	return admin.DNSRecord{Name: selector + "._domainkey." + domain, Type: "TXT", Value: value}
}

// TestDNSAPIDKIM: GET /smtp/dns lists each DKIM key's TXT record, as
// derived from the key in Caddy's storage, once when two servers sign
// for the same domains; after a reload with a new selector, the new
// keys' records and the old ones (still in storage, still to publish).
func TestDNSAPIDKIM(t *testing.T) {
	e := st.NewEnv(t)
	servers := func(selector string) map[string]any {
		out := map[string]any{}
		for _, name := range []string{"out", "out2"} {
			srv, _ := st.ServerConfig(t, map[string]any{
				"hostname":       name + ".example.internal",
				"accept_domains": nil,
				"tls":            map[string]any{"level": "none"},
				"dkim":           map[string]any{"domains": []string{"Example.TEST", "example.org"}, "selector": selector},
			})
			out[name] = srv
		}
		return st.App(out)
	}
	e.Load(servers("s1"), nil)
	api := apiClient{base: "http://" + e.Admin}
	byName := func(recs []admin.DNSRecord) []admin.DNSRecord {
		slices.SortFunc(recs, func(a, b admin.DNSRecord) int { return strings.Compare(a.Name, b.Name) })
		return recs
	}
	var want []admin.DNSRecord
	for _, d := range []string{"example.test", "example.org"} {
		for _, sel := range []string{"s1-ed25519", "s1-rsa2048"} {
			want = append(want, dkimWant(t, e, d, sel))
		}
	}
	want = byName(want)
	var got []admin.DNSRecord
	api.json(t, http.MethodGet, "/smtp/dns", nil, http.StatusOK, &got)
	if !slices.Equal(got, want) {
		t.Fatalf("GET /smtp/dns:\n got %v\nwant %v", got, want)
	}
	got = nil
	api.json(t, http.MethodGet, "/smtp/dns?domain=example.org", nil, http.StatusOK, &got)
	if len(got) != 2 || !strings.HasSuffix(got[0].Name, "._domainkey.example.org") || !strings.HasSuffix(got[1].Name, "._domainkey.example.org") {
		t.Errorf("?domain=example.org: %v", got)
	}

	e.PostLoad(servers("s2"), nil)
	for _, d := range []string{"example.test", "example.org"} {
		for _, sel := range []string{"s2-ed25519", "s2-rsa2048"} {
			want = append(want, dkimWant(t, e, d, sel))
		}
	}
	want = byName(want)
	got = nil
	api.json(t, http.MethodGet, "/smtp/dns", nil, http.StatusOK, &got)
	if !slices.Equal(got, want) {
		t.Fatalf("GET /smtp/dns after a new selector:\n got %v\nwant %v", got, want)
	}
}
