package senderauth_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-msgauth/dkim"

	"github.com/caddy-smtp/caddy-smtp/checks"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/message"
	"github.com/caddy-smtp/caddy-smtp/senderauth"
)

const authserv = "mx.example.test"

// env is a test DNS server with a signing key published for
// sender.test (selector s1), and the checks under test.
type env struct {
	t   *testing.T
	dns *st.DNS
	key crypto.Signer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	e := &env{t: t, dns: st.StartDNS(t), key: key}
	e.dns.TXT("s1._domainkey.sender.test", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)))
	return e
}

func (e *env) auth(cfg senderauth.Config) *senderauth.Auth {
	e.t.Helper()
	cfg.Resolver = e.dns.Addr()
	a, err := senderauth.New(cfg, authserv, "sender_auth", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// all is spf, dkim and dmarc enforced.
func (e *env) all() *senderauth.Auth {
	return e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}, DKIM: true, DMARC: "enforce"})
}

// msg is a message from ip with that envelope sender and From:
// header, signed by d= signer (if not "") with the env's key.
func (e *env) msg(ip, mailFrom, from, signer string, extra ...string) *checks.Message {
	e.t.Helper()
	data := "Received: from client.test by " + authserv + "; Tue, 1 Dec 2026 00:00:00 +0000\r\n" +
		strings.Join(extra, "") +
		"From: Someone <" + from + ">\r\nTo: b@example.test\r\nSubject: hello\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\n" +
		"Message-ID: <1@sender.test>\r\n\r\nHello.\r\n"
	if signer != "" {
		var b bytes.Buffer
		if err := dkim.Sign(&b, strings.NewReader(data), &dkim.SignOptions{Domain: signer, Selector: "s1", Signer: e.key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}); err != nil {
			e.t.Fatal(err)
		}
		data = b.String()
	}
	return raw(ip, mailFrom, data)
}

func raw(ip, mailFrom, data string) *checks.Message {
	return &checks.Message{QueueID: "Q", Hostname: authserv, ClientIP: netip.MustParseAddr(ip), Helo: "mail.sender.test",
		From: mailFrom, Rcpts: []string{"b@example.test"}, Size: int64(len(data)),
		Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
}

// check runs a and returns the verdict and the Authentication-Results
// value it writes ("" when it writes none).
func check(t *testing.T, a *senderauth.Auth, m *checks.Message) (checks.Verdict, string) {
	t.Helper()
	v, err := a.Check(context.Background(), m)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	r, _ := m.Open()
	var b strings.Builder
	if err := message.EditHeader(&b, r, v.Edits, nil); err != nil {
		t.Fatalf("edits: %v", err)
	}
	var ars []string
	for _, line := range strings.Split(strings.ReplaceAll(b.String(), "\r\n\t", " "), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Authentication-Results: "); ok {
			ars = append(ars, v)
		}
	}
	for _, ar := range ars {
		if strings.HasPrefix(ar, authserv+";") {
			return v, ar
		}
	}
	return v, ""
}

func TestSPF(t *testing.T) {
	e := newEnv(t)
	a := e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}})
	e.dns.TXT("mail.sender.test", "v=spf1 a -all")
	e.dns.A("mail.sender.test", "192.0.2.1")
	for _, tc := range []struct {
		name, record, want string
	}{
		{"pass", "v=spf1 ip4:192.0.2.1 -all", "spf=pass smtp.mailfrom=sender.test"},
		{"fail", "v=spf1 ip4:198.51.100.0/24 -all", "spf=fail smtp.mailfrom=sender.test"},
		{"softfail", "v=spf1 ~all", "spf=softfail"},
		{"neutral", "v=spf1 ?all", "spf=neutral"},
		{"none", "", "spf=none"},
		{"bad syntax", "v=spf1 frobnicate:x ip4:192.0.2.1 -all", "spf=permerror"},
		{"include chain", "v=spf1 include:one.test -all", "spf=pass"},
		{"redirect chain", "v=spf1 redirect=two.test", "spf=pass"},
		{"eleven includes", "v=spf1 include:i1.test include:i2.test include:i3.test include:i4.test include:i5.test include:i6.test " +
			"include:i7.test include:i8.test include:i9.test include:i10.test include:i11.test -all", "spf=permerror"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.dns.Remove("sender.test")
			if tc.record != "" {
				e.dns.TXT("sender.test", tc.record)
			}
			e.dns.TXT("one.test", "v=spf1 include:two.test -all")
			e.dns.TXT("two.test", "v=spf1 ip4:192.0.2.0/28 -all")
			for i := 1; i <= 11; i++ {
				e.dns.TXT(fmt.Sprintf("i%d.test", i), "v=spf1 ip4:203.0.113.1 ?all")
			}
			v, ar := check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", ""))
			if v.Action != checks.Accept || !strings.Contains(ar, tc.want) {
				t.Fatalf("%s: %v, header %q", tc.record, v.Action, ar)
			}
			if !strings.Contains(ar, "spf=pass smtp.helo=mail.sender.test") {
				t.Errorf("the HELO identity: %q", ar)
			}
		})
	}
	t.Run("temperror", func(t *testing.T) {
		e.dns.SetDown(true)
		defer e.dns.SetDown(false)
		v, _ := check(t, e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}, Timeout: caddy.Duration(2 * time.Second)}),
			e.msg("192.0.2.1", "a@sender.test", "a@sender.test", ""))
		if v.Action != checks.Tempfail || v.Code != "4.7.24" || v.Edits != nil {
			t.Fatalf("DNS down, on_temperror tempfail: %+v", v)
		}
		v, ar := check(t, e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}, OnTemperror: "accept", Timeout: caddy.Duration(2 * time.Second)}),
			e.msg("192.0.2.1", "a@sender.test", "a@sender.test", ""))
		if v.Action != checks.Accept || !strings.Contains(ar, "spf=temperror") {
			t.Fatalf("DNS down, on_temperror accept: %v %q", v.Action, ar)
		}
	})
	t.Run("fail reject", func(t *testing.T) {
		e.dns.TXT("sender.test", "v=spf1 -all")
		v, _ := check(t, e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{Fail: "reject"}}),
			e.msg("192.0.2.1", "a@sender.test", "a@sender.test", ""))
		if v.Action != checks.Reject || v.Code != "5.7.23" {
			t.Fatalf("spf fail reject: %+v", v)
		}
	})
}

func TestDMARC(t *testing.T) {
	e := newEnv(t)
	a := e.all()
	e.dns.TXT("mail.sender.test", "v=spf1 -all")
	e.dns.TXT("sender.test", "v=spf1 ip4:192.0.2.1 -all")
	e.dns.TXT("bounces.sender.test", "v=spf1 ip4:192.0.2.1 -all")
	e.dns.TXT("other.test", "v=spf1 ip4:192.0.2.1 -all")
	for _, tc := range []struct {
		name, record, mailFrom, from, signer string
		want                                 checks.Action
		header                               string
	}{
		{"reject, aligned by SPF", "v=DMARC1; p=reject", "a@sender.test", "a@sender.test", "", checks.Accept, "dmarc=pass header.from=sender.test"},
		{"reject, aligned by DKIM", "v=DMARC1; p=reject", "a@other.test", "a@sender.test", "sender.test", checks.Accept, "dmarc=pass"},
		{"reject, unaligned", "v=DMARC1; p=reject", "a@other.test", "a@sender.test", "", checks.Reject, "dmarc=fail"},
		{"quarantine, unaligned", "v=DMARC1; p=quarantine", "a@other.test", "a@sender.test", "", checks.Quarantine, "dmarc=fail reason=\"p=quarantine\""},
		{"relaxed SPF alignment", "v=DMARC1; p=reject", "a@bounces.sender.test", "a@sender.test", "", checks.Accept, "dmarc=pass"},
		{"strict SPF alignment", "v=DMARC1; p=reject; aspf=s", "a@bounces.sender.test", "a@sender.test", "", checks.Reject, "dmarc=fail"},
		{"relaxed DKIM alignment", "v=DMARC1; p=reject", "a@other.test", "a@news.sender.test", "sender.test", checks.Accept, "dmarc=pass header.from=news.sender.test"},
		{"strict DKIM alignment", "v=DMARC1; p=reject; adkim=s", "a@other.test", "a@news.sender.test", "sender.test", checks.Reject, "dmarc=fail"},
		{"none policy", "v=DMARC1; p=none", "a@other.test", "a@sender.test", "", checks.Accept, "dmarc=fail reason=\"p=none\""},
		{"pct 0: one policy down", "v=DMARC1; p=reject; pct=0", "a@other.test", "a@sender.test", "", checks.Quarantine, "dmarc=fail"},
		{"no record", "", "a@other.test", "a@sender.test", "", checks.Accept, "dmarc=none"},
		// RFC 7489 6.3: bad optional tags get their defaults; tags and
		// values are case-insensitive.
		{"junk tags", "v=DMARC1; p=reject; junk; =x; fo=q; rf=iodef; ri=1d; pct=100%;;", "a@other.test", "a@sender.test", "", checks.Reject, "dmarc=fail"},
		{"upper case", "v=DMARC1; P=Reject; ADKIM=S", "a@other.test", "a@sender.test", "", checks.Reject, "dmarc=fail"},
		{"no valid p, rua", "v=DMARC1; p=maybe; rua=mailto:d@sender.test", "a@other.test", "a@sender.test", "", checks.Accept, "dmarc=fail reason=\"p=none\""},
		{"no valid p", "v=DMARC1; p=maybe", "a@other.test", "a@sender.test", "", checks.Accept, "dmarc=none"},
		// Forwarded: the forwarder's IP fails SPF, the signature passes.
		{"forwarded", "v=DMARC1; p=reject", "a@sender.test", "a@sender.test", "sender.test", checks.Accept, "dmarc=pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.dns.Remove("_dmarc.sender.test")
			if tc.record != "" {
				e.dns.TXT("_dmarc.sender.test", tc.record)
			}
			ip := "192.0.2.1"
			if tc.name == "forwarded" {
				ip = "198.51.100.7"
			}
			v, ar := check(t, a, e.msg(ip, tc.mailFrom, tc.from, tc.signer))
			if tc.want == checks.Reject {
				ar = v.Reason // a refused message gets no header
			}
			if v.Action != tc.want || !strings.Contains(ar, tc.header) {
				t.Fatalf("%v (%s), header %q; want %v, %q", v.Action, v.Reason, ar, tc.want, tc.header)
			}
			if tc.want == checks.Reject && (v.Code != "" || !strings.Contains(v.Reply, "DMARC policy of ") || !strings.Contains(v.Reply, "sender.test rejects")) {
				t.Errorf("reject reply: %+v", v)
			}
		})
	}
	t.Run("subdomain policy", func(t *testing.T) {
		e.dns.Remove("_dmarc.sender.test")
		e.dns.TXT("_dmarc.sender.test", "v=DMARC1; p=none; sp=reject")
		v, _ := check(t, a, e.msg("192.0.2.1", "a@other.test", "a@news.sender.test", ""))
		if v.Action != checks.Reject || !strings.Contains(v.Reply, "news.sender.test") {
			t.Fatalf("sp=reject for a subdomain: %v %q", v.Action, v.Reply)
		}
		v, _ = check(t, a, e.msg("192.0.2.1", "a@other.test", "a@sender.test", ""))
		if v.Action != checks.Accept {
			t.Fatalf("p=none for the domain itself: %v", v.Action)
		}
	})
	t.Run("several records are none", func(t *testing.T) {
		for _, order := range [][]string{{"v=DMARC1; p=none", "v=DMARC1; p=reject"}, {"v=DMARC1; p=reject", "v=DMARC1; p=none"}} {
			e.dns.TXT("_dmarc.sender.test", order...)
			v, ar := check(t, a, e.msg("192.0.2.1", "a@other.test", "a@sender.test", ""))
			if v.Action != checks.Accept || !strings.Contains(ar, "dmarc=none") {
				t.Fatalf("%q: %v %q", order, v.Action, ar)
			}
		}
	})
	t.Run("several authors: the strictest", func(t *testing.T) {
		e.dns.TXT("_dmarc.sender.test", "v=DMARC1; p=none")
		e.dns.TXT("_dmarc.bank.test", "v=DMARC1; p=reject")
		m := raw("192.0.2.1", "a@other.test", "From: a@sender.test, ceo@bank.test\r\nSubject: x\r\n\r\nx\r\n")
		if v, _ := check(t, a, m); v.Action != checks.Reject || !strings.Contains(v.Reply, "bank.test") {
			t.Fatalf("%+v", v)
		}
	})
	t.Run("a weak failing author does not decide for one whose DNS fails", func(t *testing.T) {
		e.dns.TXT("_dmarc.x.test", "v=DMARC1; p=none")
		e.dns.SetServfailName("_dmarc.victim.test")
		m := raw("192.0.2.1", "a@other.test", "From: a@x.test, ceo@victim.test\r\nSubject: x\r\n\r\nx\r\n")
		if v, _ := check(t, a, m); v.Action != checks.Tempfail {
			t.Fatalf("%+v", v)
		}
	})
	t.Run("no single From: under enforce", func(t *testing.T) {
		e.dns.TXT("_dmarc.sender.test", "v=DMARC1; p=reject")
		for _, h := range []string{"From: a@sender.test\r\nFrom: b@sender.test\r\n", "From: <ceo@bank.test>>\r\n", "Subject: no from\r\n"} {
			if v, _ := check(t, a, raw("192.0.2.1", "a@other.test", h+"\r\nx\r\n")); v.Action != checks.Reject {
				t.Errorf("%q: %v", h, v.Action)
			}
		}
		// A display name in a charset Go does not know still parses.
		m := raw("192.0.2.1", "a@other.test", "From: =?x-unknown?Q?CEO?= <ceo@sender.test>\r\n\r\nx\r\n")
		if v, _ := check(t, a, m); v.Action != checks.Reject || !strings.Contains(v.Reply, "DMARC policy of sender.test") {
			t.Errorf("unknown charset: %+v", v)
		}
	})
	t.Run("report only", func(t *testing.T) {
		e.dns.TXT("_dmarc.sender.test", "v=DMARC1; p=reject")
		ro := e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}, DKIM: true, DMARC: "report_only"})
		v, ar := check(t, ro, e.msg("192.0.2.1", "a@other.test", "a@sender.test", ""))
		if v.Action != checks.Accept || !strings.Contains(ar, "dmarc=fail") {
			t.Fatalf("report_only: %v %q", v.Action, ar)
		}
	})
	t.Run("DNS down", func(t *testing.T) {
		e.dns.SetDown(true)
		defer e.dns.SetDown(false)
		a := e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{}, DKIM: true, DMARC: "enforce", Timeout: caddy.Duration(2 * time.Second)})
		v, _ := check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "sender.test"))
		if v.Action != checks.Tempfail {
			t.Fatalf("DNS down: %+v", v)
		}
	})
}

// TestForgedAuthenticationResults: one claiming our authserv-id goes,
// another server's stays, and ours is first.
func TestForgedAuthenticationResults(t *testing.T) {
	e := newEnv(t)
	e.dns.TXT("sender.test", "v=spf1 ip4:192.0.2.1 -all")
	a := e.all()
	m := e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "",
		"Authentication-Results: "+strings.ToUpper(authserv)+"; dkim=pass header.d=bank.test; dmarc=pass\r\n",
		"Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=x.test\r\n",
		"Authentication-Results: "+authserv+" 1; spf=pass\r\n")
	v, err := a.Check(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := m.Open()
	var b strings.Builder
	message.EditHeader(&b, r, v.Edits, nil)
	out := b.String()
	if n := strings.Count(out, "Authentication-Results:"); n != 2 {
		t.Fatalf("%d Authentication-Results fields:\n%s", n, out)
	}
	if !strings.HasPrefix(out, "Authentication-Results: "+authserv+";\r\n\tspf=pass") ||
		!strings.Contains(out, "Authentication-Results: relay.other.test;") || strings.Contains(out, "bank.test") {
		t.Fatalf("header:\n%s", out)
	}
	if !strings.Contains(v.Reason, "2 forged") {
		t.Errorf("reason %q", v.Reason)
	}
}

// TestDKIMResults: a good signature passes; a body byte changed, a
// signed header changed, a key record missing give the RFC's results;
// hostile signatures end in fail or permerror, quickly.
func TestDKIMResults(t *testing.T) {
	e := newEnv(t)
	a := e.auth(senderauth.Config{DKIM: true})
	signed := func() string {
		r, _ := e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "sender.test").Open()
		b, _ := io.ReadAll(r)
		return string(b)
	}
	good := signed()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	e.dns.TXT("r1._domainkey.rsa.test", "v=DKIM1; k=rsa; p="+base64.StdEncoding.EncodeToString(der))
	var rsaSigned bytes.Buffer
	dkim.Sign(&rsaSigned, strings.NewReader("From: a@rsa.test\r\nSubject: x\r\n\r\nbody\r\n"), &dkim.SignOptions{
		Domain: "rsa.test", Selector: "r1", Signer: rsaKey, HeaderCanonicalization: dkim.CanonicalizationRelaxed})
	for _, tc := range []struct{ name, data, want string }{
		{"ed25519 pass", good, "dkim=pass header.d=sender.test header.i=@sender.test"},
		{"rsa pass", rsaSigned.String(), "dkim=pass header.d=rsa.test"},
		{"body byte changed", strings.Replace(good, "Hello.", "Hello!", 1), "dkim=fail"},
		{"header changed", strings.Replace(good, "Subject: hello", "Subject: jello", 1), "dkim=fail"},
		{"key missing", strings.Replace(good, "s=s1", "s=gone", 1), "dkim=permerror"},
		{"no signature", "From: a@sender.test\r\n\r\nx\r\n", "dkim=none"},
		{"l= beyond the body", "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=sender.test; s=s1; l=99999; h=from; bh=" +
			base64.StdEncoding.EncodeToString(make([]byte, 32)) + "; b=AAAA\r\nFrom: a@sender.test\r\n\r\nx\r\n", "dkim="},
		{"64 KiB b=", "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=sender.test; s=s1; h=from; bh=" +
			base64.StdEncoding.EncodeToString(make([]byte, 32)) + "; b=" + strings.Repeat("QUFB", 16<<10) + "\r\nFrom: a@sender.test\r\n\r\nx\r\n", "dkim="},
		{"h= of 1000 headers", "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=sender.test; s=s1; h=" +
			strings.TrimSuffix(strings.Repeat("from:", 1000), ":") + "; bh=" + base64.StdEncoding.EncodeToString(make([]byte, 32)) +
			"; b=AAAA\r\nFrom: a@sender.test\r\n\r\nx\r\n", "dkim="},
		{"a folded field of 1 MiB", good[:strings.Index(good, "\r\nFrom:")+2] + "X-Long: a\r\n" + strings.Repeat(" y\r\n", 250000) +
			good[strings.Index(good, "\r\nFrom:")+2:], "dkim=permerror reason=\"a header"},
		// The same behind a line that is no field (where our own header
		// reader stops, and go-msgauth's does not).
		{"a folded field behind a junk line", good[:strings.Index(good, "\r\nFrom:")+2] + "junk line\r\nX-Long: a\r\n" +
			strings.Repeat(" y\r\n", 80000) + good[strings.Index(good, "\r\nFrom:")+2:], "dkim=permerror reason=\"a header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			v, ar := check(t, a, raw("192.0.2.1", "a@sender.test", tc.data))
			if v.Action != checks.Accept || !strings.Contains(ar, tc.want) {
				t.Fatalf("%v, header %q, want %q", v.Action, ar, tc.want)
			}
			if strings.HasSuffix(tc.want, "=") && !(strings.Contains(ar, "dkim=fail") || strings.Contains(ar, "dkim=permerror")) {
				t.Fatalf("hostile signature: %q", ar)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("took %v", took) // a sanity bound, not a timing assertion
			}
		})
	}
}

// TestRelayAndAuthenticatedSkipped: mail from relay_networks and from
// authenticated clients is not checked and gets no header.
func TestRelayAndAuthenticatedSkipped(t *testing.T) {
	e := newEnv(t)
	a := e.all()
	for _, m := range []*checks.Message{e.msg("192.0.2.1", "a@other.test", "a@sender.test", ""), e.msg("192.0.2.1", "a@other.test", "a@sender.test", "")} {
		m.Relay = m.Auth == ""
		v, ar := check(t, a, m)
		if v.Action != checks.Accept || ar != "" || len(v.Edits) != 0 {
			t.Fatalf("%v %q %v", v.Action, ar, v.Edits)
		}
		m.Relay, m.Auth = false, "user"
		v, ar = check(t, a, m)
		if v.Action != checks.Accept || ar != "" {
			t.Fatalf("authenticated: %v %q", v.Action, ar)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []senderauth.Config{
		{},
		{DMARC: "enforce"},
		{SPF: &senderauth.SPFConfig{}, DMARC: "enforce"},
		{SPF: &senderauth.SPFConfig{}, DKIM: true, DMARC: "maybe"},
		{SPF: &senderauth.SPFConfig{Fail: "bounce"}},
		{DKIM: true, OnTemperror: "ignore"},
		{DKIM: true, Resolver: "[::1"},
	} {
		if _, err := senderauth.New(c, authserv, "sender_auth", nil); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// TestDKIMIndependentSigners: messages signed by dkimpy (RSA and
// Ed25519) and by OpenDKIM verify as pass here; one body byte changed,
// a signed header changed, the key record missing give fail, fail and
// permerror.
func TestDKIMIndependentSigners(t *testing.T) {
	e := newEnv(t)
	a := e.auth(senderauth.Config{DKIM: true})
	const msg = "From: Ann <ann@signer.test>\r\nTo: b@example.test\r\nSubject: signed elsewhere\r\n" +
		"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <ind@signer.test>\r\n\r\nSigned by a tool nobody here wrote.\r\n"
	rsaKey, edKey := st.NewDKIMKey(t, "rsa"), st.NewDKIMKey(t, "ed25519")
	e.dns.TXT("py-rsa._domainkey.signer.test", rsaKey.Record)
	e.dns.TXT("py-ed._domainkey.signer.test", edKey.Record)
	e.dns.TXT("od-rsa._domainkey.signer.test", rsaKey.Record)
	e.dns.TXT("od-ed._domainkey.signer.test", edKey.Record)
	for _, tc := range []struct {
		name   string
		signed []byte
	}{
		{"dkimpy rsa", st.PythonDKIMSign(t, []byte(msg), "signer.test", "py-rsa", rsaKey.PEM, "rsa")},
		{"dkimpy ed25519", st.PythonDKIMSign(t, []byte(msg), "signer.test", "py-ed", edKey.PEM, "ed25519")},
		{"opendkim rsa", st.OpenDKIMSign(t, []byte(msg), "signer.test", "od-rsa", rsaKey.PEM)},
		{"opendkim ed25519", st.OpenDKIMSign(t, []byte(msg), "signer.test", "od-ed", edKey.PEM)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signed := string(tc.signed)
			sel := regexp.MustCompile(`[\s;]s=([A-Za-z0-9-]+)`).FindStringSubmatch(signed)[1]
			for _, c := range []struct{ name, data, want string }{
				{"as signed", signed, "dkim=pass header.d=signer.test"},
				{"body byte changed", strings.Replace(signed, "nobody", "nobodY", 1), "dkim=fail"},
				{"header changed", strings.Replace(signed, "Subject: signed", "Subject: Signed", 1), "dkim=fail"},
				{"key record missing", strings.Replace(signed, "s="+sel, "s=missing", 1), "dkim=permerror"},
			} {
				_, ar := check(t, a, raw("192.0.2.1", "ann@signer.test", c.data))
				if !strings.Contains(ar, c.want) {
					t.Errorf("%s: %q, want %q", c.name, ar, c.want)
				}
			}
		})
	}
}

// TestHeaderInjection: what a sender chose (HELO, selector, identity)
// cannot add a result to our header or break its quoting.
func TestHeaderInjection(t *testing.T) {
	e := newEnv(t)
	a := e.all()
	m := e.msg("192.0.2.1", "", "a@sender.test", "")
	m.Helo = `a\";dmarc=pass;x=\"`
	_, ar := check(t, a, m)
	if strings.Count(ar, "dmarc=") != 1 || strings.Contains(ar, "dmarc=pass") {
		t.Fatalf("HELO injected a result: %q", ar)
	}
	r, _ := e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "sender.test").Open()
	b, _ := io.ReadAll(r)
	signed := strings.Replace(string(b), "s=s1", `s=a\"b;dmarc=pass`, 1)
	_, ar = check(t, a, raw("192.0.2.1", "a@sender.test", signed))
	if strings.Count(ar, "dmarc=") != 1 {
		t.Fatalf("selector injected a result: %q", ar)
	}
}

// TestForgedVariants: an authserv-id in a comment, quoted, or with a
// final dot is still ours, and removed; also for relay_networks mail.
func TestForgedVariants(t *testing.T) {
	e := newEnv(t)
	a := e.auth(senderauth.Config{DKIM: true})
	for _, forged := range []string{"(x;y) " + authserv + "; dmarc=pass", authserv + "(c); dmarc=pass", `"` + authserv + `"; dmarc=pass`, "(c) " + authserv + ".; dmarc=pass"} {
		for _, relay := range []bool{false, true} {
			m := e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "", "Authentication-Results: "+forged+"\r\n")
			m.Relay = relay
			v, err := a.Check(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			r, _ := m.Open()
			var b strings.Builder
			message.EditHeader(&b, r, v.Edits, nil)
			if strings.Contains(b.String(), "dmarc=pass") {
				t.Errorf("%q (relay %v) kept:\n%s", forged, relay, b.String())
			}
		}
	}
}

// TestTemperrorScope: DNS trouble that cannot change the outcome is no
// tempfail: the HELO's for a non-null sender, a signature not aligned
// with the author.
func TestTemperrorScope(t *testing.T) {
	e := newEnv(t)
	a := e.auth(senderauth.Config{SPF: &senderauth.SPFConfig{Fail: "Reject"}, DKIM: true, Timeout: caddy.Duration(3 * time.Second)})
	e.dns.TXT("sender.test", "v=spf1 ip4:192.0.2.1 -all")
	e.dns.SetServfailName("mail.sender.test") // the HELO's SPF lookup
	v, ar := check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", ""))
	if v.Action != checks.Accept || !strings.Contains(ar, "spf=pass smtp.mailfrom=sender.test") ||
		!strings.Contains(ar, "spf=temperror smtp.helo=mail.sender.test") {
		t.Fatalf("HELO temperror: %v %q", v.Action, ar)
	}
	// A mailing list's signature whose key lookup fails: not aligned
	// with the author, so no tempfail.
	e.dns.SetServfailName("s1._domainkey.list.test")
	v, ar = check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "list.test"))
	if v.Action != checks.Accept || !strings.Contains(ar, "dkim=temperror") {
		t.Fatalf("unaligned DKIM temperror: %v %q", v.Action, ar)
	}
	// The author's own signature whose key lookup fails: tempfail.
	e.dns.SetServfailName("s1._domainkey.sender.test")
	if v, _ := check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "sender.test")); v.Action != checks.Tempfail {
		t.Fatalf("aligned DKIM temperror: %v", v.Action)
	}
	// spf { fail Reject } in any case.
	e.dns.TXT("sender.test", "v=spf1 -all")
	if v, _ := check(t, a, e.msg("192.0.2.1", "a@sender.test", "a@sender.test", "")); v.Action != checks.Reject {
		t.Fatalf("fail Reject: %v", v.Action)
	}
}
