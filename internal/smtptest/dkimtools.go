package smtptest

// Independent DKIM implementations for tests: Python's dkimpy (Debian
// python3-dkim) and OpenDKIM (Debian opendkim-tools), each looking keys
// up in the test's DNS server. Each wrapper fails under CI=true when its
// tool is missing, and skips otherwise.

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DKIMKey is a signing key for tests with the TXT record that publishes
// it.
type DKIMKey struct {
	// Alg is "rsa" or "ed25519".
	Alg    string
	Signer crypto.Signer
	// PEM is the private key: PKCS#1 ("RSA PRIVATE KEY") for RSA, PKCS#8
	// ("PRIVATE KEY") for Ed25519.
	PEM []byte
	// Record is the key's TXT record, "v=DKIM1; k=rsa; p=…".
	Record string
}

// NewDKIMKey makes a key: alg "rsa" (2048 bits) or "ed25519".
func NewDKIMKey(t testing.TB, alg string) DKIMKey {
	t.Helper()
	k := DKIMKey{Alg: alg}
	switch alg {
	case "rsa":
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		k.Signer = key
		k.PEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	case "ed25519":
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		k.Signer = key
		k.PEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	default:
		t.Fatalf("NewDKIMKey: algorithm %q: want rsa or ed25519", alg)
	}
	rec, err := DKIMRecord(k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	k.Record = rec
	return k
}

// DKIMRecord is the TXT record that publishes pub (RFC 6376 §3.6.1, RFC
// 8463 §4.2): "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" or
// "v=DKIM1; k=ed25519; p=<base64 of the raw 32-byte key>".
func DKIMRecord(pub crypto.PublicKey) (string, error) {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	}
	return "", fmt.Errorf("DKIMRecord: unsupported key type %T", pub)
}

// parsePrivateKey reads a PEM private key: PKCS#1 RSA, or PKCS#8 RSA or
// Ed25519.
func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, errors.New("no PEM block in the key")
	}
	if b.Type == "RSA PRIVATE KEY" {
		return x509.ParsePKCS1PrivateKey(b.Bytes)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return s, nil
}

// toolMissing fails the test under CI=true and skips it otherwise.
func toolMissing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

var (
	pythonOnce sync.Once
	pythonBin  string
	pythonErr  error
)

// dkimPython is a python3 that has Debian's dkim and dns (dnspython)
// modules: /usr/bin/python3 first, as python3 on PATH may be another
// install without Debian's dist-packages.
func dkimPython(t testing.TB) string {
	t.Helper()
	pythonOnce.Do(func() {
		cands := []string{"/usr/bin/python3"}
		if p, err := exec.LookPath("python3"); err == nil {
			cands = append(cands, p)
		}
		pythonErr = errors.New("no python3")
		for _, p := range cands {
			out, err := exec.Command(p, "-c", "import dkim, dns.resolver, nacl").CombinedOutput()
			if err == nil {
				pythonBin, pythonErr = p, nil
				return
			}
			pythonErr = fmt.Errorf("%s: %v: %s", p, err, bytes.TrimSpace(out))
		}
	})
	if pythonErr != nil {
		toolMissing(t, "python3 with the dkim module is not installed (Debian package python3-dkim): %v", pythonErr)
	}
	return pythonBin
}

// pyDKIMVerify verifies each DKIM-Signature of the message on stdin with
// dkimpy, keys looked up with dnspython at argv[1] (host) and argv[2]
// (port), and prints one JSON object per signature. A result is pass,
// fail (the signature or body hash does not match), permerror (a bad
// signature header, a missing or bad key record) or temperror (the key
// lookup timed out or got SERVFAIL), as RFC 8601 names them.
const pyDKIMVerify = `
import io, json, logging, sys
import dkim, dkim.util, dns.exception, dns.rdatatype, dns.resolver

res = dns.resolver.Resolver(configure=False)
res.nameservers = [sys.argv[1]]
res.port = int(sys.argv[2])
res.timeout = res.lifetime = float(sys.argv[3])

def txt(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    try:
        a = res.resolve(name, 'TXT', raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return None
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
        raise dkim.DnsTimeoutError('%s: %s' % (type(e).__name__, e))
    for r in a.response.answer:
        if r.rdtype == dns.rdatatype.TXT:
            return b''.join(list(r.items)[0].strings)
    return None

msg = sys.stdin.buffer.read()
sigs = [v for k, v in dkim.DKIM(msg).headers if k.lower() == b'dkim-signature']
out = []
for i, v in enumerate(sigs):
    r = {'index': i}
    try:
        tags = dkim.util.parse_tag_value(v)
        for k, n in ((b'd', 'domain'), (b's', 'selector'), (b'a', 'algorithm')):
            r[n] = tags.get(k, b'').decode('utf-8', 'replace')
    except Exception:
        pass
    buf = io.StringIO()
    log = logging.getLogger('dkim%d' % i)
    log.handlers = [logging.StreamHandler(buf)]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        d = dkim.DKIM(msg, logger=log, timeout=float(sys.argv[3]))
        if d.verify(idx=i, dnsfunc=txt):
            r['result'], r['reason'] = 'pass', ''
        else:
            why = buf.getvalue().strip()
            if 'DnsTimeoutError' in why:
                r['result'] = 'temperror'
            elif why:
                r['result'] = 'permerror'
            else:
                r['result'], why = 'fail', 'signature did not verify'
            r['reason'] = why
    except dkim.ValidationError as e:
        r['result'] = 'fail' if 'body hash mismatch' in str(e) else 'permerror'
        r['reason'] = 'ValidationError: %s' % e
    except Exception as e:
        r['result'], r['reason'] = 'permerror', '%s: %s' % (type(e).__name__, e)
    out.append(r)
print(json.dumps(out))
`

// pyDKIMSign signs the message on stdin with dkimpy, relaxed/relaxed:
// argv[1] selector, argv[2] domain, argv[3] the key file (PKCS#1 PEM for
// RSA, the base64 32-byte seed for Ed25519), argv[4] the algorithm
// (rsa-sha256 or ed25519-sha256). It prints the signed message.
const pyDKIMSign = `
import sys
import dkim
msg = sys.stdin.buffer.read()
key = open(sys.argv[3], 'rb').read()
sep = b'\r\n' if b'\r\n' in msg else b'\n'
sig = dkim.sign(msg, sys.argv[1].encode(), sys.argv[2].encode(), key,
                canonicalize=(b'relaxed', b'relaxed'),
                signature_algorithm=sys.argv[4].encode(), linesep=sep)
sys.stdout.buffer.write(sig + msg)
`

// DKIMResult is one signature's verdict by an independent verifier.
type DKIMResult struct {
	Index     int    `json:"index"` // 0: the topmost DKIM-Signature
	Domain    string `json:"domain"`
	Selector  string `json:"selector"`
	Algorithm string `json:"algorithm"`
	// Result is pass, fail, permerror or temperror (RFC 8601 §2.7.1).
	Result string `json:"result"`
	Reason string `json:"reason"`
}

func (r DKIMResult) String() string {
	s := fmt.Sprintf("signature %d d=%s s=%s a=%s: %s", r.Index, r.Domain, r.Selector, r.Algorithm, r.Result)
	if r.Reason != "" {
		s += " (" + r.Reason + ")"
	}
	return s
}

// dkimLookupTimeout bounds each verifier's key lookup: short, so that a
// test with the DNS server down (temperror) stays quick.
const dkimLookupTimeout = time.Second

// PythonDKIMVerifyEach verifies every DKIM-Signature of msg with Python's
// dkim module (dkimpy, DKIM(msg).verify(idx=i) for each), its keys looked
// up by dnspython at dnsAddr ("ip:port", UDP with TCP on truncation), and
// returns one result per signature, topmost first (none for an unsigned
// message).
func PythonDKIMVerifyEach(t testing.TB, msg []byte, dnsAddr string) []DKIMResult {
	t.Helper()
	py := dkimPython(t)
	host, port, err := net.SplitHostPort(dnsAddr)
	if err != nil {
		t.Fatalf("PythonDKIMVerify: DNS address %q: %v", dnsAddr, err)
	}
	cmd := exec.Command(py, "-c", pyDKIMVerify, host, port, fmt.Sprint(dkimLookupTimeout.Seconds()))
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy verify: %v\n%s", err, stderr.Bytes())
	}
	var results []DKIMResult
	if err := json.Unmarshal(out, &results); err != nil {
		t.Fatalf("dkimpy verify: %v in %q\n%s", err, out, stderr.Bytes())
	}
	return results
}

// PythonDKIMVerify is PythonDKIMVerifyEach summed up: ok when the message
// has signatures and every one passes; output has one line per
// signature.
func PythonDKIMVerify(t testing.TB, msg []byte, dnsAddr string) (ok bool, output string) {
	t.Helper()
	results := PythonDKIMVerifyEach(t, msg, dnsAddr)
	ok = len(results) > 0
	var lines []string
	for _, r := range results {
		ok = ok && r.Result == "pass"
		lines = append(lines, r.String())
	}
	if len(results) == 0 {
		lines = append(lines, "no DKIM-Signature")
	}
	return ok, strings.Join(lines, "\n")
}

// PythonDKIMSign signs msg with dkimpy's dkim.sign, relaxed/relaxed, as
// domain and selector with keyPEM (PKCS#1 or PKCS#8 PEM, RSA or Ed25519;
// converted to the forms dkimpy reads), alg "rsa" (rsa-sha256) or
// "ed25519" (ed25519-sha256), and returns the signed message: the new
// DKIM-Signature on top, with the message's own line ending. dkimpy signs
// the headers RFC 6376 §5.4.1 suggests and oversigns From and the like.
func PythonDKIMSign(t testing.TB, msg []byte, domain, selector string, keyPEM []byte, alg string) []byte {
	t.Helper()
	py := dkimPython(t)
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		t.Fatalf("PythonDKIMSign: %v", err)
	}
	var keyText []byte
	var sigAlg string
	switch k := key.(type) {
	case *rsa.PrivateKey:
		keyText = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		sigAlg = "rsa-sha256"
	case ed25519.PrivateKey:
		keyText = []byte(base64.StdEncoding.EncodeToString(k.Seed()))
		sigAlg = "ed25519-sha256"
	default:
		t.Fatalf("PythonDKIMSign: unsupported key type %T", key)
	}
	if want := map[string]string{"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[alg]; want != sigAlg {
		t.Fatalf("PythonDKIMSign: algorithm %q with a %T key", alg, key)
	}
	keyFile := filepath.Join(t.TempDir(), "dkim.key")
	if err := os.WriteFile(keyFile, keyText, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", pyDKIMSign, selector, domain, keyFile, sigAlg)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dkimpy sign: %v\n%s", err, stderr.Bytes())
	}
	return out
}

// opendkimTestmsg is Debian's opendkim-testmsg (in /usr/sbin).
func opendkimTestmsg(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("opendkim-testmsg"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/opendkim-testmsg"); err == nil {
		return "/usr/sbin/opendkim-testmsg"
	}
	toolMissing(t, "opendkim-testmsg is not installed (Debian package opendkim-tools)")
	return ""
}

// OpenDKIMVerify verifies msg with OpenDKIM's opendkim-testmsg, its key
// looked up through dnsAddr. ok is opendkim-testmsg's exit status 0:
// libopendkim's dkim_eom passed, which with several signatures means the
// one it picks, a passing one if there is any (use PythonDKIMVerifyEach
// for each signature's verdict). output is what it printed, e.g.
// "dkim_eom(): Bad signature" or "... No signature".
//
// How the key lookup reaches dnsAddr: opendkim-testmsg has no resolver
// option and libopendkim asks glibc's stub resolver (res_ninit and
// res_nquery), which reads /etc/resolv.conf and only talks to port 53.
// So opendkim-testmsg runs in a mount namespace of its own (unshare -m)
// where a private resolv.conf ("nameserver <ip>", timeout:1 attempts:1)
// is bind-mounted over /etc/resolv.conf; the machine's file is not
// touched. When dnsAddr's port is not 53, a forwarder on a random
// 127.77.x.y:53 (UDP and TCP; the whole 127/8 is loopback on Linux)
// relays each query to dnsAddr and stays silent when dnsAddr does. It
// needs root (mount namespace, port 53), as CI has; without root it
// skips, or fails under CI=true.
func OpenDKIMVerify(t testing.TB, msg []byte, dnsAddr string) (ok bool, output string) {
	t.Helper()
	bin := opendkimTestmsg(t)
	if os.Geteuid() != 0 {
		toolMissing(t, "OpenDKIMVerify needs root: a mount namespace for its resolv.conf and a DNS forwarder on port 53")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		toolMissing(t, "unshare is not installed (Debian package util-linux)")
	}
	host, port, err := net.SplitHostPort(dnsAddr)
	if err != nil {
		t.Fatalf("OpenDKIMVerify: DNS address %q: %v", dnsAddr, err)
	}
	if port != "53" {
		host = forwardDNS53(t, dnsAddr)
	}
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+host+"\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount --bind "$1" /etc/resolv.conf && exec "$2" -t "$3"`, "sh", resolv, bin, dir)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("opendkim-testmsg: %v\n%s", err, out)
	}
	return err == nil, strings.TrimSpace(string(out))
}

// forwardDNS53 serves a DNS forwarder to upstream on port 53 of a random
// 127.77.x.y until the test ends, and returns that address.
func forwardDNS53(t testing.TB, upstream string) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		network := "udp"
		if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
			network = "tcp"
		}
		c := &dns.Client{Net: network, UDPSize: dns.MaxMsgSize, Timeout: dkimLookupTimeout}
		if r, _, err := c.Exchange(req, upstream); err == nil {
			w.WriteMsg(r)
		}
	})
	var err error
	for try := 0; try < 20; try++ {
		n, _ := rand.Int(rand.Reader, big.NewInt(254*254))
		ip := fmt.Sprintf("127.77.%d.%d", n.Int64()/254+1, n.Int64()%254+1)
		if _, err = serveDNS(t, net.JoinHostPort(ip, "53"), handler); err == nil {
			return ip
		}
	}
	t.Fatalf("DNS forwarder on a 127.77.x.y:53: %v", err)
	return ""
}

// pyOpenDKIMSign signs the message on stdin with libopendkim itself
// (Debian libopendkim11, which opendkim-testmsg drives), through ctypes,
// making the calls opendkim-testmsg makes (dkim_init, dkim_sign,
// dkim_chunk, dkim_eom, dkim_getsighdr_d) but asking for
// relaxed/relaxed and the algorithm in argv[4] (DKIM_SIGN_RSASHA256 1,
// DKIM_SIGN_ED25519SHA256 2): opendkim-testmsg always signs rsa-sha1,
// which RFC 8301 forbids. argv[1] domain, argv[2] selector, argv[3] the
// PEM key file. It prints the signed message.
const pyOpenDKIMSign = `
import ctypes, sys
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_ssize_t, c_uint, c_void_p
lib = ctypes.CDLL('libopendkim.so.11')
lib.dkim_init.restype = c_void_p
lib.dkim_init.argtypes = [c_void_p, c_void_p]
lib.dkim_options.argtypes = [c_void_p, c_int, c_int, c_void_p, c_size_t]
lib.dkim_sign.restype = c_void_p
lib.dkim_sign.argtypes = [c_void_p, c_char_p, c_void_p, c_char_p, c_char_p, c_char_p,
                          c_int, c_int, c_int, c_ssize_t, POINTER(c_int)]
lib.dkim_chunk.argtypes = [c_void_p, c_char_p, c_size_t]
lib.dkim_eom.argtypes = [c_void_p, c_void_p]
lib.dkim_getsighdr_d.argtypes = [c_void_p, c_size_t, POINTER(c_void_p), POINTER(c_size_t)]
lib.dkim_getresultstr.restype = c_char_p
lib.dkim_getresultstr.argtypes = [c_int]
lib.dkim_geterror.restype = c_char_p
lib.dkim_geterror.argtypes = [c_void_p]
lib.dkim_free.argtypes = [c_void_p]
lib.dkim_close.argtypes = [c_void_p]

def check(what, st, d=None):
    if st != 0:
        err = lib.dkim_geterror(d) if d else None
        sys.exit('%s: %s%s' % (what, lib.dkim_getresultstr(st).decode(),
                 (': ' + err.decode()) if err else ''))

msg = sys.stdin.buffer.read()
key = open(sys.argv[3], 'rb').read()
sep = b'\r\n' if b'\r\n' in msg else b'\n'
dk = lib.dkim_init(None, None)
if not dk:
    sys.exit('dkim_init failed')
flags = c_uint(0x100)  # DKIM_LIBFLAGS_FIXCRLF: a bare LF is a line end
lib.dkim_options(dk, 1, 0, byref(flags), ctypes.sizeof(flags))
st = c_int(0)
d = lib.dkim_sign(dk, b'caddy-smtp-test', None, key, sys.argv[2].encode(), sys.argv[1].encode(),
                  1, 1, int(sys.argv[4]), -1, byref(st))
if not d:
    check('dkim_sign', st.value or 7)
check('dkim_chunk', lib.dkim_chunk(d, msg, len(msg)), d)
check('dkim_chunk', lib.dkim_chunk(d, None, 0), d)
check('dkim_eom', lib.dkim_eom(d, None), d)
buf, n = c_void_p(), c_size_t()
check('dkim_getsighdr_d', lib.dkim_getsighdr_d(d, len('DKIM-Signature: '), byref(buf), byref(n)), d)
value = ctypes.string_at(buf, n.value).replace(b'\r\n', b'\n').replace(b'\n', sep)
sys.stdout.buffer.write(b'DKIM-Signature: ' + value + sep + msg)
lib.dkim_free(d)
lib.dkim_close(dk)
`

// OpenDKIMSign signs msg with OpenDKIM's library as domain and selector
// with keyPEM (PEM, PKCS#1 or PKCS#8), and returns the signed message,
// the new DKIM-Signature on top with the message's own line ending: an
// RSA key signs rsa-sha256, an Ed25519 key ed25519-sha256 (this
// libopendkim 2.11 has both), c=relaxed/relaxed, libopendkim's default
// header list (no oversigning). It drives libopendkim.so.11 from python3
// (ctypes) with the calls of opendkim-testmsg, because
// opendkim-testmsg's own signing is fixed at rsa-sha1 and
// relaxed/simple (see OpenDKIMTestmsgSign).
func OpenDKIMSign(t testing.TB, msg []byte, domain, selector string, keyPEM []byte) []byte {
	t.Helper()
	opendkimTestmsg(t) // the library comes with opendkim-tools
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		t.Fatalf("OpenDKIMSign: %v", err)
	}
	alg := "1" // DKIM_SIGN_RSASHA256
	if _, ok := key.(ed25519.PrivateKey); ok {
		alg = "2" // DKIM_SIGN_ED25519SHA256
	}
	py, err := exec.LookPath("python3")
	if _, statErr := os.Stat("/usr/bin/python3"); statErr == nil {
		py, err = "/usr/bin/python3", nil
	}
	if err != nil {
		toolMissing(t, "OpenDKIMSign needs python3 (for ctypes)")
	}
	keyFile := filepath.Join(t.TempDir(), "dkim.key")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", pyOpenDKIMSign, domain, selector, keyFile, alg)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("libopendkim sign: %v\n%s", err, stderr.Bytes())
	}
	return out
}

// OpenDKIMTestmsgSign signs msg with opendkim-testmsg -d domain -s
// selector -k keyfile as it is: rsa-sha1 (which RFC 8301 forbids to sign
// and to verify with), c=relaxed/simple, libopendkim's default header
// list; an RSA key only (an Ed25519 key fails: it always asks for
// rsa-sha1). For tests of how an rsa-sha1 signature is judged. Given a
// CRLF message it ends the new header with CRLF too (-C).
func OpenDKIMTestmsgSign(t testing.TB, msg []byte, domain, selector string, keyPEM []byte) []byte {
	t.Helper()
	bin := opendkimTestmsg(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "dkim.key")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-d", domain, "-s", selector, "-k", keyFile, "-t", dir}
	if bytes.Contains(msg, []byte("\r\n")) {
		args = append(args, "-C")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("opendkim-testmsg sign: %v\n%s", err, stderr.Bytes())
	}
	return out
}
