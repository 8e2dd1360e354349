package smtpapp

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestRenewalKeepsKey renews a server's certificate from Caddy's
// internal CA for real: the certificate in storage is replaced by one
// about to expire (same key, self-signed), and a fresh start of Caddy
// renews it at once. With reuse_private_keys (the default) the renewed
// certificate has the old key, so a published TLSA 3 1 1 record still
// matches; with it off, a new key.
func TestRenewalKeepsKey(t *testing.T) {
	const host = "mx.example.internal"
	for _, c := range []struct {
		name  string
		reuse *bool
		same  bool
	}{
		{"default", nil, true},
		{"on", new(true), true},
		{"off", new(false), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := st.NewEnv(t)
			tlsCfg := map[string]any{}
			if c.reuse != nil {
				tlsCfg["reuse_private_keys"] = *c.reuse
			}
			srv, addr := st.ServerConfig(t, map[string]any{"hostname": host, "tls": tlsCfg})
			app := st.App(map[string]any{"mx": srv})
			e.Load(app, nil)
			roots := e.LocalCARoot()
			st.WaitTLS(t, addr, st.TLSConfig(roots, host))
			first := servedLeaf(t, addr, host)
			if err := caddy.Stop(); err != nil { // the certificate cache goes with it
				t.Fatal(err)
			}

			dir := filepath.Join(e.Dir, "storage", "certificates", "local", host)
			expiring(t, filepath.Join(dir, host+".crt"), filepath.Join(dir, host+".key"), host)

			e.Load(app, nil)
			// only the renewed certificate verifies against the CA
			st.WaitTLS(t, addr, st.TLSConfig(roots, host))
			renewed := servedLeaf(t, addr, host)
			if renewed.SerialNumber.Cmp(first.SerialNumber) == 0 {
				t.Fatal("the certificate was not renewed")
			}
			same := bytes.Equal(renewed.RawSubjectPublicKeyInfo, first.RawSubjectPublicKeyInfo)
			if same != c.same {
				t.Errorf("reuse_private_keys %s: renewed certificate has the same key: %t, want %t", c.name, same, c.same)
			}
		})
	}
}

// expiring replaces the stored certificate with a self-signed one for
// the same key that expires in ten minutes of its seventy: CertMagic
// renews a certificate in the last third of its lifetime.
func expiring(t *testing.T, certFile, keyFile, host string) {
	t.Helper()
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := certmagic.PEMDecodePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	signer := key.(crypto.Signer)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * time.Minute),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReusePolicies: the automation policies the smtp app adds for its
// managed names, against a running tls app. Internal names get the
// internal CA with reuse_private_keys as set; public names no policy of
// the user's covers get the default (ACME) issuers with reuse, and are
// left to the tls app's default policy when reuse is off, or to the
// user's catch-all policy when there is one (with a warning when it does
// not reuse keys); servers of one hostname must agree.
func TestReusePolicies(t *testing.T) {
	e := st.NewEnv(t)
	srv, _ := st.ServerConfig(t, nil)
	e.Load(st.App(map[string]any{"mx": srv}), nil)
	ctx := caddy.ActiveContext()
	tlsIface, err := ctx.App("tls")
	if err != nil {
		t.Fatal(err)
	}
	tlsApp := tlsIface.(*caddytls.TLS)

	server := func(host string, reuse *bool) *Server {
		return &Server{Hostname: host, TLS: &ServerTLS{ReusePrivateKeys: reuse}, tls: &serverTLS{manageName: true}}
	}
	core, logs := observer.New(zap.WarnLevel)
	add := func(servers map[string]*Server) error {
		a := &App{tlsApp: tlsApp, Servers: servers, certNames: map[string]struct{}{}, logger: zap.New(core)}
		for _, s := range servers {
			a.certNames[s.Hostname] = struct{}{}
		}
		return a.addAutomationPolicies(ctx)
	}
	policyFor := func(host string) *caddytls.AutomationPolicy {
		for _, ap := range tlsApp.Automation.Policies {
			if slices.Contains(ap.Subjects(), host) {
				return ap
			}
		}
		return nil
	}
	internalIssuer := func(ap *caddytls.AutomationPolicy) bool {
		if len(ap.Issuers) != 1 {
			return false
		}
		_, ok := ap.Issuers[0].(*caddytls.InternalIssuer)
		return ok
	}

	if ap := policyFor("localhost"); ap == nil || !ap.ReusePrivateKeys || !internalIssuer(ap) {
		t.Errorf("localhost, loaded: %+v", ap)
	}
	if err := add(map[string]*Server{
		"a": server("a.example.com", nil),
		"b": server("b.example.com", new(false)),
		"c": server("c.internal", new(false)),
	}); err != nil {
		t.Fatal(err)
	}
	// no issuers: the tls app's defaults (ACME), as its default policy
	if ap := policyFor("a.example.com"); ap == nil || !ap.ReusePrivateKeys || len(ap.Issuers) != 0 {
		t.Errorf("public name, reuse by default: %+v", ap)
	}
	if ap := policyFor("b.example.com"); ap != nil {
		t.Errorf("public name, reuse off: a policy was added, the default one does: %+v", ap)
	}
	if ap := policyFor("c.internal"); ap == nil || ap.ReusePrivateKeys || !internalIssuer(ap) {
		t.Errorf("internal name, reuse off: %+v", ap)
	}

	if err := tlsApp.AddAutomationPolicy(new(caddytls.AutomationPolicy)); err != nil { // the user's catch-all
		t.Fatal(err)
	}
	if err := add(map[string]*Server{"d": server("d.example.com", nil)}); err != nil {
		t.Fatal(err)
	}
	if ap := policyFor("d.example.com"); ap != nil {
		t.Errorf("public name under a catch-all policy: a policy was added: %+v", ap)
	}
	if w := logs.FilterField(zap.String("hostname", "d.example.com")).All(); len(w) != 1 || !strings.Contains(w[0].Message, "TLSA") {
		t.Errorf("public name under a catch-all policy that does not reuse keys: warnings %v", w)
	}

	err = add(map[string]*Server{"e1": server("e.internal", nil), "e2": server("e.internal", new(false))})
	if err == nil || !strings.Contains(err.Error(), "servers.e2.tls.reuse_private_keys") {
		t.Errorf("servers of one hostname disagreeing: %v", err)
	}
}
