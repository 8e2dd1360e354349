package smtpapp

// An end-to-end test of ACME issuance: a real ACME server (Let's
// Encrypt's pebble, built from source by the test) issues the
// certificate of a server with a public-looking hostname, and the
// STARTTLS handshake serves it.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// pebbleVersion is the pebble release the test builds and runs.
const pebbleVersion = "v2.10.3"

// pebbleBinary returns the path of a pebble binary, building it with
// `go install` (outside this module: go.mod is not touched) unless a
// working one is cached under the user cache directory.
func pebbleBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, statErr := os.Stat(goTool); statErr != nil {
			t.Fatalf("finding the go command to build pebble: %v", err)
		}
	}

	var cached string
	if cacheRoot, err := os.UserCacheDir(); err == nil {
		cacheDir := filepath.Join(cacheRoot, "caddy-smtp-test")
		if err := os.MkdirAll(cacheDir, 0o755); err == nil {
			cached = filepath.Join(cacheDir, "pebble-"+pebbleVersion)
		}
	}
	if cached != "" {
		if _, err := os.Stat(cached); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := exec.CommandContext(ctx, cached, "-version").CombinedOutput()
			cancel()
			if err == nil {
				return cached
			}
			t.Logf("cached pebble %s does not run (%v: %s); rebuilding", cached, err, out)
		}
	}

	// Build into a fresh directory (next to the cache, so that the
	// rename into place is atomic and concurrent runs do not collide).
	buildParent := t.TempDir()
	if cached != "" {
		buildParent = filepath.Dir(cached)
	}
	gobin, err := os.MkdirTemp(buildParent, "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(gobin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "install", "github.com/letsencrypt/pebble/v2/cmd/pebble@"+pebbleVersion)
	cmd.Dir = gobin // outside this module
	cmd.Env = append(os.Environ(), "GOBIN="+gobin)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pebble %s: %v\n%s", pebbleVersion, err, out)
	}
	t.Logf("built pebble %s in %v", pebbleVersion, time.Since(start).Round(time.Millisecond))
	built := filepath.Join(gobin, "pebble")
	if runtime.GOOS == "windows" {
		built += ".exe"
	}
	if cached == "" {
		// No cache: keep the binary for this test only.
		keep := filepath.Join(t.TempDir(), filepath.Base(built))
		if err := os.Rename(built, keep); err != nil {
			t.Fatal(err)
		}
		return keep
	}
	if err := os.Rename(built, cached); err != nil {
		t.Fatalf("caching pebble: %v", err)
	}
	return cached
}

// selfSignedPEM writes a self-signed certificate and key for 127.0.0.1
// and localhost as PEM files in dir, for pebble's HTTPS listeners.
func selfSignedPEM(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pebble test listener"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, "pebble-https.crt")
	keyFile = filepath.Join(dir, "pebble-https.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// pebbleServer is a running pebble.
type pebbleServer struct {
	dirURL  string       // ACME directory
	mgmtURL string       // management API base
	https   *http.Client // trusts pebble's listener certificate
	certPEM string       // that certificate, for Caddy's trusted roots
}

// startPebble runs pebble on free loopback ports with validation
// skipped, and waits until its directory answers. It is killed when the
// test ends.
func startPebble(t *testing.T) *pebbleServer {
	t.Helper()
	bin := pebbleBinary(t)
	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedPEM(t, dir)

	listen := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	mgmt := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": mgmt,
		"certificate":             certFile,
		"privateKey":              keyFile,
		// Nothing listens on these: with PEBBLE_VA_ALWAYS_VALID the
		// VA never connects.
		"httpPort":                       st.FreePort(t),
		"tlsPort":                        st.FreePort(t),
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"keyAlgorithm":                   "ecdsa",
	}}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfgJSON, 0o644); err != nil {
		t.Fatal(err)
	}

	logFile, err := os.Create(filepath.Join(dir, "pebble.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfgFile)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_ALWAYS_VALID=1", // no challenge is really validated
		"PEBBLE_VA_NOSLEEP=1",      // no random validation delay
		"PEBBLE_WFE_NONCEREJECT=0", // no deliberate badNonce errors
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting pebble: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		logFile.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("pebble log:\n%s", out)
		}
	})

	p := &pebbleServer{
		dirURL:  "https://" + listen + "/dir",
		mgmtURL: "https://" + mgmt,
		certPEM: certFile,
		https: &http.Client{
			Timeout: 5 * time.Second,
			Transport: &http.Transport{
				Proxy:           nil,
				TLSClientConfig: &tls.Config{RootCAs: pool},
			},
		},
	}
	t.Cleanup(p.https.CloseIdleConnections)

	// Wait for both the ACME directory and the management API.
	deadline := time.Now().Add(30 * time.Second)
	var lastErr error
	for _, u := range []string{p.dirURL, p.mgmtURL + "/roots/0"} {
		for {
			select {
			case err := <-exited:
				exited <- err // for the cleanup
				t.Fatalf("pebble exited before answering: %v", err)
			default:
			}
			if _, lastErr = p.get(u); lastErr == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pebble did not answer %s: %v", u, lastErr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p
}

// get fetches u and fails unless the status is 200.
func (p *pebbleServer) get(u string) ([]byte, error) {
	resp, err := p.https.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// mgmtCert fetches one PEM certificate from pebble's management API
// (/roots/0, /intermediates/0).
func (p *pebbleServer) mgmtCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	body, err := p.get(p.mgmtURL + path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(body)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate in %q", path, body)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

func TestACMEWithPebble(t *testing.T) {
	const hostname = "mx.example.com"
	p := startPebble(t) // before newEnv: cleanups stop Caddy before pebble
	e := st.NewEnv(t)

	srv, addr := st.ServerConfig(t, map[string]any{
		"hostname": hostname,
		"tls":      map[string]any{"level": "may"},
	})
	tlsApp := map[string]any{"automation": map[string]any{"policies": []any{
		map[string]any{
			"subjects": []string{hostname},
			"issuers": []any{map[string]any{
				"module":                  "acme",
				"ca":                      p.dirURL,
				"trusted_roots_pem_files": []string{p.certPEM},
				// Pebble accepts every challenge unseen; keep Caddy
				// off ports 80 and 443 all the same.
				"challenges": map[string]any{
					"http":     map[string]any{"alternate_port": st.FreePort(t)},
					"tls-alpn": map[string]any{"disabled": true},
				},
			}},
		},
	}}}
	e.Load(st.App(map[string]any{"mx": srv}), map[string]any{"tls": tlsApp})

	root := p.mgmtCert(t, "/roots/0")
	intermediate := p.mgmtCert(t, "/intermediates/0")
	pebbleRoots := x509.NewCertPool()
	pebbleRoots.AddCert(root)

	// The handshake succeeds only once the ACME certificate is served:
	// nothing else verifies against pebble's root for this name.
	st.WaitTLS(t, addr, st.TLSConfig(pebbleRoots, hostname))

	// A sender without SNI, as many MTAs are, gets the same certificate.
	var served []*x509.Certificate
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	err := c.StartTLS(&tls.Config{
		InsecureSkipVerify: true, // checked below, against pebble's root
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.ServerName != "" {
				return fmt.Errorf("client sent SNI %q, want none", cs.ServerName)
			}
			served = cs.PeerCertificates
			return nil
		},
	})
	if err != nil {
		t.Fatalf("STARTTLS without SNI: %v", err)
	}
	if len(served) == 0 {
		t.Fatal("no certificate served")
	}
	leaf := served[0]
	if !slices.Contains(leaf.DNSNames, hostname) {
		t.Errorf("leaf DNS names %v, want %s", leaf.DNSNames, hostname)
	}
	if !bytes.Equal(leaf.RawIssuer, intermediate.RawSubject) {
		t.Errorf("leaf issuer %q, want pebble's intermediate %q", leaf.Issuer, intermediate.Subject)
	}
	if err := leaf.CheckSignatureFrom(intermediate); err != nil {
		t.Errorf("leaf not signed by pebble's intermediate: %v", err)
	}
	if strings.Contains(leaf.Issuer.String(), "Caddy Local Authority") {
		t.Errorf("leaf issued by Caddy's local CA (%s), want pebble", leaf.Issuer)
	}
	inter := x509.NewCertPool()
	for _, ic := range served[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:       hostname,
		Roots:         pebbleRoots,
		Intermediates: inter,
	}); err != nil {
		t.Errorf("served chain does not verify against pebble's root: %v", err)
	}

	// And the session carries mail.
	c.Expect("250", "EHLO client.test")
	if got := c.Send("sender@remote.test", "user@example.test", st.Message); !strings.HasPrefix(got, "250") {
		t.Fatalf("message over TLS without SNI: got %q, want 250", got)
	}
	c.Expect("221", "QUIT")
}
