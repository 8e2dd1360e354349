package smtptest

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
)

// dkimTestMessage has a folded header and an 8-bit body, with CRLF
// line ends.
const dkimTestMessage = "From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: a test\r\n" +
	"  folded over two lines\r\n" +
	"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n" +
	"Message-ID: <dkim-test@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	"Grüße, a body line.\r\n" +
	"Second line.\r\n"

func TestDKIMKeyRecords(t *testing.T) {
	rsaKey := NewDKIMKey(t, "rsa")
	p, ok := strings.CutPrefix(rsaKey.Record, "v=DKIM1; k=rsa; p=")
	if !ok {
		t.Fatalf("RSA record %q", rsaKey.Record)
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKIXPublicKey(der); err != nil {
		t.Errorf("RSA p= is not a SubjectPublicKeyInfo: %v", err)
	}
	edKey := NewDKIMKey(t, "ed25519")
	p, ok = strings.CutPrefix(edKey.Record, "v=DKIM1; k=ed25519; p=")
	if raw, err := base64.StdEncoding.DecodeString(p); !ok || err != nil || len(raw) != 32 {
		t.Errorf("Ed25519 record %q: want the raw 32-byte key", edKey.Record)
	}
	for _, k := range []DKIMKey{rsaKey, edKey} {
		if _, err := parsePrivateKey(k.PEM); err != nil {
			t.Errorf("%s PEM: %v", k.Alg, err)
		}
	}
}

// expectVerify checks both verifiers' verdicts on msg; want is the
// Python verdict of its only signature.
func expectVerify(t *testing.T, what string, msg []byte, dnsAddr, want string) {
	t.Helper()
	res := PythonDKIMVerifyEach(t, msg, dnsAddr)
	if len(res) != 1 || res[0].Result != want {
		t.Errorf("%s: dkimpy %v, want one %s", what, res, want)
	}
	ok, out := OpenDKIMVerify(t, msg, dnsAddr)
	if ok != (want == "pass") {
		t.Errorf("%s: opendkim-testmsg ok=%v (%q), want %s", what, ok, out, want)
	}
	t.Logf("%s: dkimpy %v; opendkim-testmsg %v %q", what, res, ok, out)
}

func TestDKIMToolsPythonSigned(t *testing.T) {
	d := StartDNS(t)
	for _, alg := range []string{"rsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			key := NewDKIMKey(t, alg)
			name := "py-" + alg + "._domainkey.example.com"
			d.TXT(name, key.Record)
			signed := PythonDKIMSign(t, []byte(dkimTestMessage), "example.com", "py-"+alg, key.PEM, alg)
			wantA := map[string]string{"rsa": "a=rsa-sha256", "ed25519": "a=ed25519-sha256"}[alg]
			if !bytes.HasPrefix(signed, []byte("DKIM-Signature:")) || !bytes.Contains(signed, []byte(wantA)) ||
				!bytes.Contains(signed, []byte("c=relaxed/relaxed")) || !bytes.HasSuffix(signed, []byte(dkimTestMessage)) {
				t.Fatalf("signed message:\n%s", signed)
			}
			if ok, out := PythonDKIMVerify(t, signed, d.Addr()); !ok {
				t.Errorf("PythonDKIMVerify: %s", out)
			}
			n := d.Queries()
			expectVerify(t, "signed", signed, d.Addr(), "pass")
			if d.Queries() < n+2 {
				t.Errorf("the verifiers made %d queries to the test's DNS server, want one each at least", d.Queries()-n)
			}
			expectVerify(t, "one body byte changed", bytes.Replace(signed, []byte("Second"), []byte("second"), 1), d.Addr(), "fail")
			expectVerify(t, "a header changed", bytes.Replace(signed, []byte("Subject: a test"), []byte("Subject: a best"), 1), d.Addr(), "fail")
			d.Remove(name)
			expectVerify(t, "no key record", signed, d.Addr(), "permerror")
		})
	}
}

func TestDKIMToolsOpenDKIMSigned(t *testing.T) {
	d := StartDNS(t)
	lf := strings.ReplaceAll(dkimTestMessage, "\r\n", "\n")
	for _, alg := range []string{"rsa", "ed25519"} {
		key := NewDKIMKey(t, alg)
		d.TXT("od-"+alg+"._domainkey.example.com", key.Record)
		for _, msg := range []string{dkimTestMessage, lf} {
			signed := OpenDKIMSign(t, []byte(msg), "example.com", "od-"+alg, key.PEM)
			wantA := map[string]string{"rsa": "a=rsa-sha256", "ed25519": "a=ed25519-sha256"}[alg]
			if !bytes.Contains(signed, []byte(wantA)) || !bytes.Contains(signed, []byte("c=relaxed/relaxed")) || !bytes.HasSuffix(signed, []byte(msg)) {
				t.Fatalf("signed message:\n%q", signed)
			}
			if ends := bytes.Count(signed, []byte("\r\n")); (msg == lf) != (ends == 0) {
				t.Errorf("%s: line ends not the message's:\n%q", alg, signed)
			}
			expectVerify(t, alg+" by libopendkim", signed, d.Addr(), "pass")
		}
	}

	// opendkim-testmsg's own signing: rsa-sha1, relaxed/simple.
	key := NewDKIMKey(t, "rsa")
	d.TXT("sha1._domainkey.example.com", key.Record)
	signed := OpenDKIMTestmsgSign(t, []byte(dkimTestMessage), "example.com", "sha1", key.PEM)
	if !bytes.Contains(signed, []byte("a=rsa-sha1")) || !bytes.Contains(signed, []byte("c=relaxed/simple")) {
		t.Fatalf("opendkim-testmsg signed:\n%q", signed)
	}
	expectVerify(t, "rsa-sha1 by opendkim-testmsg", signed, d.Addr(), "pass")
}

func TestDKIMToolsTwoSignatures(t *testing.T) {
	d := StartDNS(t)
	ours, theirs := NewDKIMKey(t, "ed25519"), NewDKIMKey(t, "rsa")
	d.TXT("a._domainkey.example.com", ours.Record)
	// The other domain's key is not published: its signature is a
	// permerror, ours passes.
	signed := PythonDKIMSign(t, []byte(dkimTestMessage), "example.com", "a", ours.PEM, "ed25519")
	signed = PythonDKIMSign(t, signed, "other.example", "b", theirs.PEM, "rsa")
	res := PythonDKIMVerifyEach(t, signed, d.Addr())
	if len(res) != 2 || res[0].Domain != "other.example" || res[0].Result != "permerror" ||
		res[1].Domain != "example.com" || res[1].Selector != "a" || res[1].Algorithm != "ed25519-sha256" || res[1].Result != "pass" {
		t.Errorf("dkimpy: %v", res)
	}
	if ok, out := PythonDKIMVerify(t, signed, d.Addr()); ok || !strings.Contains(out, "signature 1 d=example.com s=a a=ed25519-sha256: pass") {
		t.Errorf("PythonDKIMVerify: %v %s", ok, out)
	}
	if ok, out := OpenDKIMVerify(t, signed, d.Addr()); !ok {
		t.Errorf("opendkim-testmsg, one signature passing: %s", out)
	}
	if ok, out := PythonDKIMVerify(t, []byte(dkimTestMessage), d.Addr()); ok || out != "no DKIM-Signature" {
		t.Errorf("unsigned: %v %s", ok, out)
	}
	if ok, out := OpenDKIMVerify(t, []byte(dkimTestMessage), d.Addr()); ok {
		t.Errorf("opendkim-testmsg, unsigned: %s", out)
	}
}

func TestDKIMToolsDNSTrouble(t *testing.T) {
	t.Parallel()
	d := StartDNS(t)
	key := NewDKIMKey(t, "rsa")
	d.TXT("t._domainkey.example.com", key.Record)
	signed := PythonDKIMSign(t, []byte(dkimTestMessage), "example.com", "t", key.PEM, "rsa")
	d.SetServfail(true)
	expectVerify(t, "SERVFAIL", signed, d.Addr(), "temperror")
	d.SetServfail(false)
	d.SetDown(true)
	expectVerify(t, "server down", signed, d.Addr(), "temperror")
}
