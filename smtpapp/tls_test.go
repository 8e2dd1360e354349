package smtpapp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a throwaway certificate authority for client and server
// certificates in tests.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemFile string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	f := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return &testCA{cert: cert, key: key, pemFile: f}
}

// issue makes a leaf certificate for cn, for client or server use.
func (ca *testCA) issue(t *testing.T, cn string, dnsNames ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// writePair writes a certificate and key as PEM files.
func writePair(t *testing.T, c tls.Certificate) (certFile, keyFile string) {
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// TestClientAuth runs each client_auth mode against clients with no
// certificate, a trusted one, and an untrusted one.
func TestClientAuth(t *testing.T) {
	e := newEnv(t)
	partners := newTestCA(t, "Partner CA")
	stranger := newTestCA(t, "Stranger CA")
	trusted := partners.issue(t, "trusted.partner.test")
	untrusted := stranger.issue(t, "untrusted.stranger.test")

	mk := func(mode string, level string, ca bool) (map[string]any, string) {
		tlsCfg := map[string]any{"level": level, "client_auth": mode}
		if ca {
			tlsCfg["client_ca"] = []string{partners.pemFile}
		}
		return server(t, map[string]any{"tls": tlsCfg})
	}
	none, noneAddr := mk("none", "may", false)
	req, reqAddr := mk("request", "may", true)
	reqNoCA, reqNoCAAddr := mk("request", "may", false)
	requ, requAddr := mk("require", "encrypt", true)
	requAny, requAnyAddr := mk("require", "encrypt", false)
	e.load(app(map[string]any{"none": none, "request": req, "request-noca": reqNoCA,
		"require": requ, "require-any": requAny}), nil)

	type result struct {
		requested bool
		err       error
		port      int
	}
	try := func(addr string, cert *tls.Certificate) result {
		var r result
		cfg := tlsConfig(nil, "")
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			r.requested = true
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}
		c := dial(t, addr)
		r.port = c.conn.LocalAddr().(*net.TCPAddr).Port
		c.expect("250", "EHLO client.test")
		if r.err = c.startTLS(cfg); r.err != nil {
			return r
		}
		// With TLS 1.3 a refused client certificate shows up on the
		// first read after the handshake.
		if code, msg := c.cmd("EHLO client.test"); code != 250 {
			r.err = &tlsRefused{msg}
			return r
		}
		if got := c.send("a@remote.test", "b@example.test", testMessage); !strings.HasPrefix(got, "250") {
			t.Fatalf("DATA over TLS: %s", got)
		}
		c.cmd("QUIT")
		return r
	}
	for _, a := range []string{noneAddr, reqAddr, reqNoCAAddr, requAddr, requAnyAddr} {
		waitTLS(t, a, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{trusted}})
	}

	cases := []struct {
		name          string
		addr          string
		cert          *tls.Certificate
		wantRequested bool
		wantOK        bool
		wantSubject   string
		wantVerified  bool
	}{
		{"none/no-cert", noneAddr, nil, false, true, "", false},
		{"request/no-cert", reqAddr, nil, true, true, "", false},
		{"request/trusted", reqAddr, &trusted, true, true, "CN=trusted.partner.test", true},
		{"request/untrusted", reqAddr, &untrusted, true, true, "CN=untrusted.stranger.test", false},
		{"request-noca/any", reqNoCAAddr, &trusted, true, true, "CN=trusted.partner.test", false},
		{"require/no-cert", requAddr, nil, true, false, "", false},
		{"require/untrusted", requAddr, &untrusted, true, false, "", false},
		{"require/trusted", requAddr, &trusted, true, true, "CN=trusted.partner.test", true},
		{"require-any/no-cert", requAnyAddr, nil, true, false, "", false},
		{"require-any/untrusted", requAnyAddr, &untrusted, true, true, "CN=untrusted.stranger.test", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(e.logLines("message accepted"))
			r := try(tc.addr, tc.cert)
			if r.requested != tc.wantRequested {
				t.Errorf("certificate requested: %v, want %v", r.requested, tc.wantRequested)
			}
			if (r.err == nil) != tc.wantOK {
				t.Fatalf("handshake error %v, want ok=%v", r.err, tc.wantOK)
			}
			if !tc.wantOK {
				return
			}
			if len(e.logLines("message accepted")) != before+1 {
				t.Fatal("message not accepted")
			}
			// The connection's log line says who the client was and
			// whether its certificate verified.
			var line map[string]any
			for deadline := time.Now().Add(5 * time.Second); line == nil && time.Now().Before(deadline); {
				for _, l := range e.logLines("connection closed") {
					if l["remote_port"] == float64(r.port) {
						line = l
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			if line == nil {
				t.Fatalf("no connection closed line for port %d", r.port)
			}
			subj, _ := line["client_cert_subject"].(string)
			if subj != tc.wantSubject {
				t.Errorf("logged client_cert_subject %q, want %q (%v)", subj, tc.wantSubject, line)
			}
			if tc.wantSubject != "" && line["client_cert_verified"] != tc.wantVerified {
				t.Errorf("logged client_cert_verified %v, want %v", line["client_cert_verified"], tc.wantVerified)
			}
		})
	}
}

type tlsRefused struct{ msg string }

func (e *tlsRefused) Error() string { return "refused after handshake: " + e.msg }

// TestStartTLSFailureCloses: after a failed handshake the server hangs
// up, as Postfix does, instead of going on in plaintext (go-smtp's 550).
func TestStartTLSFailureCloses(t *testing.T) {
	e := newEnv(t)
	s, addr := server(t, nil)
	e.load(app(map[string]any{"mx": s}), nil)
	waitTLS(t, addr, tlsConfig(nil, ""))

	c := dial(t, addr)
	c.expect("250", "EHLO client.test")
	c.expect("220", "STARTTLS")
	// Not a ClientHello: the handshake fails on the server.
	c.conn.Write([]byte("EHLO this is not TLS\r\nMAIL FROM:<a@b.test>\r\n"))
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := c.conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if strings.Contains(string(got), "550") || strings.Contains(string(got), "250") {
		t.Fatalf("server answered in plaintext after a failed handshake: %q", got)
	}
	e.waitLog("tls handshake failed")
}

// TestStartTLSPipelining: commands pipelined after STARTTLS, in the same
// packet, must never run inside the TLS session (CVE-2011-0411 class).
func TestStartTLSPipelining(t *testing.T) {
	e := newEnv(t)
	may, mayAddr := server(t, nil)
	enc, encAddr := server(t, map[string]any{"tls": map[string]any{"level": "encrypt"}})
	e.load(app(map[string]any{"may": may, "encrypt": enc}), nil)
	for _, addr := range []string{mayAddr, encAddr} {
		waitTLS(t, addr, tlsConfig(nil, ""))
		c := dial(t, addr)
		c.expect("250", "EHLO client.test")
		c.conn.Write([]byte("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<b@example.test>\r\n"))
		if code, msg := c.read(); code != 220 {
			t.Fatalf("STARTTLS: %d %s", code, msg)
		}
		tc := tls.Client(c.conn, tlsConfig(nil, ""))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("%s: handshake: %v", addr, err)
		}
		c.conn = tc
		c.text = newText(tc)
		c.expect("250", "EHLO client.test")
		// Had the injected MAIL run, DATA would find a sender.
		c.expect("502 5.5.1 Missing RCPT TO command.", "DATA")
		c.expect("502 5.5.1 Missing MAIL FROM command.", "RCPT TO:<b@example.test>")
	}
}

// TestImplicitTLS serves TLS from the first byte (port 465 style).
func TestImplicitTLS(t *testing.T) {
	e := newEnv(t)
	s, addr := server(t, map[string]any{"tls": map[string]any{"level": "encrypt", "implicit": true}})
	e.load(app(map[string]any{"submissions": s}), nil)
	var last error
	for i := 0; i < 100; i++ {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: e.localCARoot(), ServerName: "localhost"})
		if err != nil {
			last = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c := &client{t: t, conn: conn, text: newText(conn)}
		if code, _ := c.read(); code != 220 {
			t.Fatalf("greeting over implicit TLS: %d", code)
		}
		if ehlo := c.expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
			t.Fatalf("STARTTLS offered on implicit TLS: %q", ehlo)
		}
		if got := c.send("a@remote.test", "b@example.test", testMessage); !strings.HasPrefix(got, "250") {
			t.Fatalf("DATA: %s", got)
		}
		conn.Close()
		return
	}
	t.Fatalf("no implicit TLS handshake: %v", last)
}

// TestInternalCA: a non-public hostname gets its certificate from
// Caddy's internal CA, served also to clients that send no SNI.
func TestInternalCA(t *testing.T) {
	e := newEnv(t)
	s, addr := server(t, map[string]any{"hostname": "mx.internal"})
	e.load(app(map[string]any{"mx": s}), nil)
	waitTLS(t, addr, tlsConfig(nil, ""))
	roots := e.localCARoot()
	// With SNI, verified against the local CA root.
	waitTLS(t, addr, tlsConfig(roots, "mx.internal"))
	// Without SNI (as many MTAs): the hostname's certificate.
	c := dial(t, addr)
	c.expect("250", "EHLO client.test")
	if err := c.startTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	leaf := c.conn.(*tls.Conn).ConnectionState().PeerCertificates
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: "mx.internal", Intermediates: pool(leaf[1:])}); err != nil {
		t.Fatalf("certificate served without SNI does not verify for mx.internal: %v", err)
	}
	if !strings.Contains(leaf[0].Issuer.CommonName, "Caddy Local Authority") {
		t.Fatalf("issuer %q is not Caddy's local CA", leaf[0].Issuer)
	}
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestManualCertificate serves certificate and key files instead of a
// managed certificate.
func TestManualCertificate(t *testing.T) {
	e := newEnv(t)
	ca := newTestCA(t, "Manual CA")
	certFile, keyFile := writePair(t, ca.issue(t, "mail.example.com", "mail.example.com"))
	s, addr := server(t, map[string]any{
		"hostname": "mail.example.com",
		"tls": map[string]any{"level": "may", "certificate": map[string]any{
			"certificate": certFile, "key": keyFile}},
	})
	e.load(app(map[string]any{"mx": s}), nil)
	roots := pool([]*x509.Certificate{ca.cert})
	// Served at once (nothing to obtain), for the name and without SNI.
	for _, name := range []string{"mail.example.com", ""} {
		c := dial(t, addr)
		c.expect("250", "EHLO client.test")
		cfg := &tls.Config{RootCAs: roots, ServerName: name}
		if name == "" {
			cfg = &tls.Config{InsecureSkipVerify: true}
		}
		if err := c.startTLS(cfg); err != nil {
			t.Fatalf("SNI %q: %v", name, err)
		}
		leaf := c.conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		if leaf.Subject.CommonName != "mail.example.com" || leaf.Issuer.CommonName != "Manual CA" {
			t.Fatalf("SNI %q: served %s from %s", name, leaf.Subject, leaf.Issuer)
		}
	}
	// A missing file is a config error that names the field.
	bad, _ := server(t, map[string]any{"tls": map[string]any{"certificate": map[string]any{
		"certificate": certFile + ".missing", "key": keyFile}}})
	if err := e.loadErr(app(map[string]any{"mx": bad})); err == nil || !strings.Contains(err.Error(), "servers.mx.tls.certificate") {
		t.Fatalf("missing certificate file: %v", err)
	}
}

// TestSessionTicketsOff: with session_tickets false no ticket is issued,
// so a second connection cannot resume.
func TestSessionTicketsOff(t *testing.T) {
	e := newEnv(t)
	on, onAddr := server(t, nil)
	off, offAddr := server(t, map[string]any{"tls": map[string]any{"session_tickets": false}})
	e.load(app(map[string]any{"on": on, "off": off}), nil)
	for _, tc := range []struct {
		addr   string
		resume bool
	}{{onAddr, true}, {offAddr, false}} {
		waitTLS(t, tc.addr, tlsConfig(nil, ""))
		cfg := tlsConfig(nil, "localhost")
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		var resumed bool
		for i := 0; i < 2; i++ {
			c := dial(t, tc.addr)
			c.expect("250", "EHLO client.test")
			if err := c.startTLS(cfg); err != nil {
				t.Fatal(err)
			}
			c.expect("250", "EHLO client.test") // reads the TLS 1.3 ticket
			resumed = c.conn.(*tls.Conn).ConnectionState().DidResume
			c.cmd("QUIT")
		}
		if resumed != tc.resume {
			t.Errorf("%s: resumed=%v, want %v", tc.addr, resumed, tc.resume)
		}
	}
}
