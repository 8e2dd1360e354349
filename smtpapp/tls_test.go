package smtpapp

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestClientAuth runs each client_auth mode against clients with no
// certificate, a trusted one, and an untrusted one.
func TestClientAuth(t *testing.T) {
	e := st.NewEnv(t)
	partners := st.NewCA(t, "Partner CA")
	stranger := st.NewCA(t, "Stranger CA")
	trusted := partners.Issue(t, "trusted.partner.test")
	untrusted := stranger.Issue(t, "untrusted.stranger.test")

	mk := func(mode string, level string, ca bool) (map[string]any, string) {
		tlsCfg := map[string]any{"level": level, "client_auth": mode}
		if ca {
			tlsCfg["client_ca"] = []string{partners.PEMFile}
		}
		return st.ServerConfig(t, map[string]any{"tls": tlsCfg})
	}
	none, noneAddr := mk("none", "may", false)
	req, reqAddr := mk("request", "may", true)
	reqNoCA, reqNoCAAddr := mk("request", "may", false)
	requ, requAddr := mk("require", "encrypt", true)
	requAny, requAnyAddr := mk("require", "encrypt", false)
	e.Load(st.App(map[string]any{"none": none, "request": req, "request-noca": reqNoCA,
		"require": requ, "require-any": requAny}), nil)

	type result struct {
		requested bool
		err       error
		port      int
	}
	try := func(addr string, cert *tls.Certificate) result {
		var r result
		cfg := st.TLSConfig(nil, "")
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			r.requested = true
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}
		c := st.Dial(t, addr)
		r.port = c.Conn.LocalAddr().(*net.TCPAddr).Port
		c.Expect("250", "EHLO client.test")
		if r.err = c.StartTLS(cfg); r.err != nil {
			return r
		}
		// With TLS 1.3 a refused client certificate shows up on the
		// first read after the handshake.
		if code, msg := c.Cmd("EHLO client.test"); code != 250 {
			r.err = &tlsRefused{msg}
			return r
		}
		if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
			t.Fatalf("DATA over TLS: %s", got)
		}
		c.Cmd("QUIT")
		return r
	}
	for _, a := range []string{noneAddr, reqAddr, reqNoCAAddr, requAddr, requAnyAddr} {
		st.WaitTLS(t, a, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{trusted}})
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
			before := len(e.LogLines("message accepted"))
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
			if len(e.LogLines("message accepted")) != before+1 {
				t.Fatal("message not accepted")
			}
			// The connection's log line says who the client was and
			// whether its certificate verified.
			var line map[string]any
			for deadline := time.Now().Add(5 * time.Second); line == nil && time.Now().Before(deadline); {
				for _, l := range e.LogLines("connection closed") {
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
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, nil)
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))

	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("220", "STARTTLS")
	// Not a ClientHello: the handshake fails on the server.
	c.Conn.Write([]byte("EHLO this is not TLS\r\nMAIL FROM:<a@b.test>\r\n"))
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := c.Conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if strings.Contains(string(got), "550") || strings.Contains(string(got), "250") {
		t.Fatalf("server answered in plaintext after a failed handshake: %q", got)
	}
	e.WaitLog("tls handshake failed")
}

// TestStartTLSPipelining: commands pipelined after STARTTLS, in the same
// packet, must never run inside the TLS session (CVE-2011-0411 class).
func TestStartTLSPipelining(t *testing.T) {
	e := st.NewEnv(t)
	may, mayAddr := st.ServerConfig(t, nil)
	enc, encAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt"}})
	e.Load(st.App(map[string]any{"may": may, "encrypt": enc}), nil)
	for _, addr := range []string{mayAddr, encAddr} {
		st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Conn.Write([]byte("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<b@example.test>\r\n"))
		if code, msg := c.Read(); code != 220 {
			t.Fatalf("STARTTLS: %d %s", code, msg)
		}
		tc := tls.Client(c.Conn, st.TLSConfig(nil, ""))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("%s: handshake: %v", addr, err)
		}
		c.Conn = tc
		c.Text = st.NewText(tc)
		c.Expect("250", "EHLO client.test")
		// Had the injected MAIL run, DATA would find a sender.
		c.Expect("502 5.5.1 Missing RCPT TO command.", "DATA")
		c.Expect("502 5.5.1 Missing MAIL FROM command.", "RCPT TO:<b@example.test>")
	}
}

// TestImplicitTLS serves TLS from the first byte (port 465 style).
func TestImplicitTLS(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt", "implicit": true}})
	e.Load(st.App(map[string]any{"submissions": s}), nil)
	var last error
	for i := 0; i < 100; i++ {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: e.LocalCARoot(), ServerName: "localhost"})
		if err != nil {
			last = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
		if code, _ := c.Read(); code != 220 {
			t.Fatalf("greeting over implicit TLS: %d", code)
		}
		if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
			t.Fatalf("STARTTLS offered on implicit TLS: %q", ehlo)
		}
		if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
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
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"hostname": "mx.internal"})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
	roots := e.LocalCARoot()
	// With SNI, verified against the local CA root.
	st.WaitTLS(t, addr, st.TLSConfig(roots, "mx.internal"))
	// Without SNI (as many MTAs): the hostname's certificate.
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	leaf := c.Conn.(*tls.Conn).ConnectionState().PeerCertificates
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: roots, DNSName: "mx.internal", Intermediates: st.Pool(leaf[1:])}); err != nil {
		t.Fatalf("certificate served without SNI does not verify for mx.internal: %v", err)
	}
	if !strings.Contains(leaf[0].Issuer.CommonName, "Caddy Local Authority") {
		t.Fatalf("issuer %q is not Caddy's local CA", leaf[0].Issuer)
	}
}

// TestManualCertificate serves certificate and key files instead of a
// managed certificate.
func TestManualCertificate(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Manual CA")
	certFile, keyFile := st.WritePair(t, ca.Issue(t, "mail.example.com", "mail.example.com"))
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname": "mail.example.com",
		"tls": map[string]any{"level": "may", "certificate": map[string]any{
			"certificate": certFile, "key": keyFile}},
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	roots := st.Pool([]*x509.Certificate{ca.Cert})
	// Served at once (nothing to obtain), for the name and without SNI.
	for _, name := range []string{"mail.example.com", ""} {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		cfg := &tls.Config{RootCAs: roots, ServerName: name}
		if name == "" {
			cfg = &tls.Config{InsecureSkipVerify: true}
		}
		if err := c.StartTLS(cfg); err != nil {
			t.Fatalf("SNI %q: %v", name, err)
		}
		leaf := c.Conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		if leaf.Subject.CommonName != "mail.example.com" || leaf.Issuer.CommonName != "Manual CA" {
			t.Fatalf("SNI %q: served %s from %s", name, leaf.Subject, leaf.Issuer)
		}
	}
	// A missing file is a config error that names the field.
	bad, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"certificate": map[string]any{
		"certificate": certFile + ".missing", "key": keyFile}}})
	if err := e.LoadErr(st.App(map[string]any{"mx": bad})); err == nil || !strings.Contains(err.Error(), "servers.mx.tls.certificate") {
		t.Fatalf("missing certificate file: %v", err)
	}
}

// TestSessionTicketsOff: with session_tickets false no ticket is issued,
// so a second connection cannot resume.
func TestSessionTicketsOff(t *testing.T) {
	e := st.NewEnv(t)
	on, onAddr := st.ServerConfig(t, nil)
	off, offAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"session_tickets": false}})
	e.Load(st.App(map[string]any{"on": on, "off": off}), nil)
	for _, tc := range []struct {
		addr   string
		resume bool
	}{{onAddr, true}, {offAddr, false}} {
		st.WaitTLS(t, tc.addr, st.TLSConfig(nil, ""))
		cfg := st.TLSConfig(nil, "localhost")
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		var resumed bool
		for i := 0; i < 2; i++ {
			c := st.Dial(t, tc.addr)
			c.Expect("250", "EHLO client.test")
			if err := c.StartTLS(cfg); err != nil {
				t.Fatal(err)
			}
			c.Expect("250", "EHLO client.test") // reads the TLS 1.3 ticket
			resumed = c.Conn.(*tls.Conn).ConnectionState().DidResume
			c.Cmd("QUIT")
		}
		if resumed != tc.resume {
			t.Errorf("%s: resumed=%v, want %v", tc.addr, resumed, tc.resume)
		}
	}
}
