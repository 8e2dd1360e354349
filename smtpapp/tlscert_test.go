package smtpapp

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddytls"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// servedLeaf does STARTTLS with the given SNI ("" for none, as many MTAs)
// and returns the certificate the server showed.
func servedLeaf(t *testing.T, addr, sni string) *x509.Certificate {
	t.Helper()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true, ServerName: sni}); err != nil {
		t.Fatalf("SNI %q: %v", sni, err)
	}
	defer c.Conn.Close()
	return c.Conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
}

// TestManualCertificateInTLSApp: certificate files are loaded into the
// tls app's certificate cache, as its own load_files are: the tls app
// lists them for the name, and an HTTPS site of the same config is
// served the same certificate from there. The SMTP server serves it
// whatever the SNI: none, its name, or a name it does not cover.
func TestManualCertificateInTLSApp(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Manual CA")
	certFile, keyFile := st.WritePair(t, ca.Issue(t, "mail.example.com", "mail.example.com"))
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname": "mail.example.com",
		"tls": map[string]any{"certificate": map[string]any{
			"certificate": certFile, "key": keyFile}},
	})
	httpsAddr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	e.Load(st.App(map[string]any{"mx": s}), map[string]any{"http": map[string]any{"servers": map[string]any{
		"site": map[string]any{
			"listen":                  []string{httpsAddr},
			"automatic_https":         map[string]any{"disable": true},
			"tls_connection_policies": []any{map[string]any{}},
			"routes": []any{map[string]any{"handle": []any{
				map[string]any{"handler": "static_response", "body": "ok"}}}},
		},
	}}})

	var inCache bool
	for _, c := range caddytls.AllMatchingCertificates("mail.example.com") {
		if c.Leaf.Issuer.CommonName != "Manual CA" {
			continue
		}
		inCache = true
		if !strings.HasPrefix(strings.Join(c.Tags, " "), "caddy-smtp/certificate/") {
			t.Errorf("cached with tags %q, want the caddy-smtp/certificate/ tag that selects it", c.Tags)
		}
	}
	if !inCache {
		t.Fatal("the certificate files are not in the tls app's certificate cache")
	}

	roots := st.Pool([]*x509.Certificate{ca.Cert})
	hc, err := tls.Dial("tcp", httpsAddr, &tls.Config{RootCAs: roots, ServerName: "mail.example.com"})
	if err != nil {
		t.Fatalf("HTTPS site of the same config, from the tls app's cache: %v", err)
	}
	hc.Close()

	for _, sni := range []string{"", "mail.example.com", "other.example.net"} {
		if leaf := servedLeaf(t, addr, sni); leaf.Issuer.CommonName != "Manual CA" {
			t.Errorf("SNI %q: served %s from %s", sni, leaf.Subject, leaf.Issuer)
		}
	}
}

// TestManualCertificateNotForHostname: a certificate that does not name
// the server's hostname is still the one served, to clients without SNI
// (the hostname is the default SNI) and with any.
func TestManualCertificateNotForHostname(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Manual CA")
	certFile, keyFile := st.WritePair(t, ca.Issue(t, "relay.example.com", "relay.example.com"))
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname": "mx.example.com",
		"tls": map[string]any{"certificate": map[string]any{
			"certificate": certFile, "key": keyFile}},
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	for _, sni := range []string{"", "mx.example.com", "relay.example.com"} {
		if leaf := servedLeaf(t, addr, sni); leaf.Subject.CommonName != "relay.example.com" {
			t.Errorf("SNI %q: served %s from %s", sni, leaf.Subject, leaf.Issuer)
		}
	}
}

// TestManualCertificateReload: files replaced under the same names are
// served after a config reload, the old certificate no longer (it stays
// in the tls app's cache, but is not selected).
func TestManualCertificateReload(t *testing.T) {
	e := st.NewEnv(t)
	oldCA, newCA := st.NewCA(t, "Old CA"), st.NewCA(t, "New CA")
	certFile, keyFile := st.WritePair(t, oldCA.Issue(t, "mail.example.com", "mail.example.com"))
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname": "mail.example.com",
		"tls": map[string]any{"certificate": map[string]any{
			"certificate": certFile, "key": keyFile}},
	})
	app := st.App(map[string]any{"mx": s})
	e.Load(app, nil)
	if leaf := servedLeaf(t, addr, ""); leaf.Issuer.CommonName != "Old CA" {
		t.Fatalf("before the reload: served %s from %s", leaf.Subject, leaf.Issuer)
	}

	newCert, newKey := st.WritePair(t, newCA.Issue(t, "mail.example.com", "mail.example.com"))
	for from, to := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.Load(app, nil) // the same config, reloaded (forced)
	for _, sni := range []string{"", "mail.example.com"} {
		if leaf := servedLeaf(t, addr, sni); leaf.Issuer.CommonName != "New CA" {
			t.Errorf("after the reload, SNI %q: served %s from %s", sni, leaf.Subject, leaf.Issuer)
		}
	}
}
