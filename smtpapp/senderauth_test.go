package smtpapp

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// TestSenderAuthServer: through a real server, with SPF, DKIM and
// DMARC served by the test's DNS server: the spooled message carries
// one Authentication-Results under the server's hostname (a forged one
// gone); DMARC p=reject is 550 5.7.1 at the end of data with nothing
// queued; p=quarantine is 250 and the quarantine; a forwarded message
// (SPF fails, DKIM passes) is queued; relay_networks clients are not
// checked; results are counted per method.
func TestSenderAuthServer(t *testing.T) {
	dns := st.StartDNS(t)
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	dns.TXT("s1._domainkey.sender.test", "v=DKIM1; k=ed25519; p="+base64.StdEncoding.EncodeToString(pub))
	dns.TXT("sender.test", "v=spf1 ip4:127.0.0.1 -all")
	dns.TXT("_dmarc.sender.test", "v=DMARC1; p=reject")
	dns.TXT("_dmarc.quarantine.test", "v=DMARC1; p=quarantine")
	dns.TXT("client.test", "v=spf1 -all")

	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "hostname": "mx.example.test",
		"sender_auth": map[string]any{"spf": map[string]any{}, "dkim": true, "dmarc": "enforce", "resolver": dns.Addr()}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"mx": srv}), nil)

	send := func(mailFrom, data string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		return c.Send(mailFrom, "b@example.test", data+".\r\n")
	}
	body := func(from, extra string) string {
		return extra + "From: <" + from + ">\r\nTo: b@example.test\r\nSubject: hi\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nHello.\r\n"
	}
	signed := func(data string) string {
		var b strings.Builder
		if err := dkim.Sign(&b, strings.NewReader(data), &dkim.SignOptions{Domain: "sender.test", Selector: "s1", Signer: key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	queued := func(reply string) (*spool.Envelope, string) {
		t.Helper()
		id, ok := strings.CutPrefix(reply, "250 2.0.0 OK: queued as ")
		if !ok {
			t.Fatalf("reply %q", reply)
		}
		for _, dir := range []string{e.SpoolDir(), filepath.Join(e.SpoolDir(), quarantineDir)} {
			if env, msg, err := spool.Peek(dir, id); err == nil {
				return env, string(msg)
			}
		}
		t.Fatalf("%s is not spooled", id)
		return nil, ""
	}

	// Aligned SPF pass, and a forged verdict under our authserv-id.
	env, msg := queued(send("a@sender.test", body("a@sender.test", "Authentication-Results: mx.example.test; dmarc=pass\r\n")))
	if env.Quarantine != nil || strings.Count(msg, "Authentication-Results:") != 1 ||
		!strings.HasPrefix(msg, "Authentication-Results: mx.example.test;\r\n\tspf=none smtp.helo=client.test") && !strings.HasPrefix(msg, "Authentication-Results: mx.example.test;\r\n\tspf=fail smtp.helo=client.test") {
		t.Fatalf("spooled:\n%s", msg)
	}
	for _, want := range []string{"spf=pass smtp.mailfrom=sender.test", "dkim=none", "dmarc=pass header.from=sender.test"} {
		if !strings.Contains(msg, want) {
			t.Errorf("no %q in:\n%s", want, msg)
		}
	}

	// Unaligned, p=reject: refused at the end of data, nothing queued.
	before := len(e.SpoolIDs())
	if got := send("a@client.test", body("a@sender.test", "")); !strings.HasPrefix(got, "550 5.7.1 DMARC policy of sender.test rejects") {
		t.Fatalf("p=reject: %s", got)
	}
	if n := len(e.SpoolIDs()); n != before {
		t.Fatalf("a refused message was queued")
	}

	// Forwarded: the envelope fails SPF, the signature passes.
	_, msg = queued(send("a@client.test", signed(body("a@sender.test", ""))))
	if !strings.Contains(msg, "dkim=pass header.d=sender.test") || !strings.Contains(msg, "dmarc=pass") {
		t.Fatalf("forwarded:\n%s", msg)
	}

	// p=quarantine: 250, kept in the quarantine.
	env, _ = queued(send("a@client.test", body("a@quarantine.test", "")))
	if env.Quarantine == nil || env.Quarantine.Check != "sender_auth" || !strings.Contains(env.Quarantine.Reason, "dmarc=fail policy=quarantine") {
		t.Fatalf("p=quarantine: %+v", env.Quarantine)
	}

	lines := e.LogLines("check accept")
	if len(lines) < 2 || lines[0]["check"] != "sender_auth" || !strings.Contains(fmt.Sprint(lines[0]["reason"]), "dmarc=pass") {
		t.Errorf("check lines: %v", lines)
	}
}
