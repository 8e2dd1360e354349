package smtpapp

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/dkimsign"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// outboundDKIM is a server that signs mail from loopback (its
// relay_networks) for example.test, both algorithms.
func outboundDKIM(t *testing.T) (map[string]any, string) {
	return st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"dkim":           map[string]any{"domains": []string{"example.test"}, "selector": "t1"}})
}

// publish serves the signer's records on a test DNS server.
func publish(t *testing.T, recs []dkimsign.Record) *st.DNS {
	dns := st.StartDNS(t)
	for _, r := range recs {
		dns.TXT(r.Name, r.Value)
	}
	return dns
}

func records(t *testing.T, e *st.Env, server string) []dkimsign.Record {
	t.Helper()
	a, err := caddy.ActiveContext().App("smtp")
	if err != nil {
		t.Fatal(err)
	}
	return a.(*App).Server(server).DKIMSigner().Records()
}

// TestDKIMSignedVerifiedIndependently: what the gateway signs (both
// algorithms, dual signed) verifies with dkimpy and with OpenDKIM, the
// key records served by the test's DNS server: a plain message, one
// with a long folded header, an 8-bit body, one already signed by
// another domain. Mail from outside relay_networks is not signed.
func TestDKIMSignedVerifiedIndependently(t *testing.T) {
	srv, addr := outboundDKIM(t)
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"out": srv}), nil)
	recs := records(t, e, "out")
	if len(recs) != 2 || recs[0].Name != "t1-ed25519._domainkey.example.test" || recs[1].Name != "t1-rsa2048._domainkey.example.test" {
		t.Fatalf("records: %+v", recs)
	}
	dns := publish(t, recs)

	// Another domain's signature, made by dkimpy, already on a message.
	other := st.NewDKIMKey(t, "rsa")
	dns.TXT("o1._domainkey.other.test", other.Record)
	const head = "From: Ann <ann@example.test>\r\nTo: bob@remote.test\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <%s@example.test>\r\n"
	preSigned := string(st.PythonDKIMSign(t, []byte("From: Ann <ann@example.test>\r\nTo: bob@remote.test\r\nSubject: relayed\r\n"+
		"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <pre@example.test>\r\n\r\nSigned upstream.\r\n"), "other.test", "o1", other.PEM, "rsa"))

	for _, tc := range []struct{ name, data, body string }{
		{"plain", "Subject: hello\r\n\r\nHello.\r\n", ""},
		{"long folded header", "Subject: a long subject\r\n\tfolded over\r\n  three lines\r\nReferences: " +
			strings.Repeat("<ref@example.test>\r\n ", 40) + "<last@example.test>\r\n\r\nHi.\r\n", ""},
		{"8-bit body", "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" +
			"Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, naïve café.\r\n", "8BITMIME"},
		{"already signed by another domain", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := strings.Replace(head, "%s", strings.ReplaceAll(tc.name, " ", "-"), 1) + tc.data
			if tc.data == "" {
				data = preSigned
			}
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			mail := "MAIL FROM:<ann@example.test>"
			if tc.body != "" {
				mail += " BODY=" + tc.body
			}
			c.Expect("250", "%s", mail)
			c.Expect("250", "RCPT TO:<bob@remote.test>")
			c.Expect("354", "DATA")
			_, reply := c.Cmd("%s.", data)
			id, ok := strings.CutPrefix(reply, "2.0.0 OK: queued as ")
			if !ok {
				t.Fatalf("reply %q", reply)
			}
			_, msg, err := spool.Peek(e.SpoolDir(), id)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(msg), "\r\nDKIM-Signature:")
			if !strings.HasPrefix(first, "DKIM-Signature: ") || !strings.Contains(first, "a=ed25519-sha256;") ||
				!strings.Contains(first, "s=t1-ed25519;") || !strings.Contains(first, "c=relaxed/relaxed;") {
				t.Fatalf("not signed first with ed25519:\n%.400s", msg)
			}
			results := st.PythonDKIMVerifyEach(t, msg, dns.Addr())
			var ours int
			for _, r := range results {
				if r.Result != "pass" {
					t.Errorf("dkimpy: %s", r)
				}
				if r.Domain == "example.test" {
					ours++
				}
			}
			if tc.data == "" && len(results) != 3 {
				t.Errorf("dkimpy saw %d signatures, want ours and the other domain's", len(results))
			}
			if ours != 2 {
				t.Errorf("dkimpy: %d of our signatures: %v", ours, results)
			}
			if ok, out := st.OpenDKIMVerify(t, msg, dns.Addr()); !ok {
				t.Errorf("opendkim-testmsg: %s", out)
			}
			// One body byte changed: both verifiers fail our signatures.
			bad := []byte(strings.Replace(string(msg), "\r\n\r\n", "\r\n\r\nX", 1))
			for _, r := range st.PythonDKIMVerifyEach(t, bad, dns.Addr()) {
				if r.Domain == "example.test" && r.Result != "fail" {
					t.Errorf("changed body, dkimpy: %s", r)
				}
			}
		})
	}

	// A client outside relay_networks: not signed.
	plain, paddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"dkim": map[string]any{"domains": []string{"example.test"}, "selector": "t1"}})
	e.Load(st.App(map[string]any{"out": srv, "in": plain}), nil)
	c := st.Dial(t, paddr)
	c.Expect("250", "EHLO client.test")
	got := c.Send("ann@example.test", "bob@example.test", strings.Replace(head, "%s", "in", 1)+"Subject: in\r\n\r\nx\r\n.\r\n")
	_, msg, _ := spool.Peek(e.SpoolDir(), strings.TrimPrefix(got, "250 2.0.0 OK: queued as "))
	if strings.Contains(string(msg), "DKIM-Signature") {
		t.Errorf("mail from outside relay_networks was signed")
	}
}

// TestDKIMKeysSurvive: the keys are the same after a config reload, a
// restart of the app on the same storage, and in a second process on
// that storage (another node): nothing of them is in the config.
func TestDKIMKeysSurvive(t *testing.T) {
	srv, _ := outboundDKIM(t)
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"out": srv}), nil)
	first := records(t, e, "out")
	srv2, _ := outboundDKIM(t)
	e.Load(st.App(map[string]any{"out": srv2}), nil) // a reload
	if got := records(t, e, "out"); !sameRecords(got, first) {
		t.Fatalf("after a reload: %+v, want %+v", got, first)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	srv3, _ := outboundDKIM(t)
	e.Load(st.App(map[string]any{"out": srv3}), nil) // a restart
	if got := records(t, e, "out"); !sameRecords(got, first) {
		t.Fatalf("after a restart: %+v, want %+v", got, first)
	}
	// Another process on the same storage directory.
	cmd := exec.Command(os.Args[0], "-test.run=^TestDKIMNodeProcess$")
	cmd.Env = append(os.Environ(), "DKIM_NODE_STORAGE="+filepath.Join(e.Dir, "storage"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("second node: %v\n%s", err, out)
	}
	var node []dkimsign.Record
	line := out[strings.Index(string(out), "RECORDS ")+len("RECORDS "):]
	line = line[:strings.IndexByte(string(line), '\n')]
	if err := json.Unmarshal(line, &node); err != nil {
		t.Fatalf("second node's output: %v\n%s", err, out)
	}
	if !sameRecords(node, first) {
		t.Fatalf("second node: %+v, want %+v", node, first)
	}
}

// TestDKIMNodeProcess is the second node of TestDKIMKeysSurvive, run
// in its own process: it loads the keys of the same config from the
// storage directory it is given and prints their records.
func TestDKIMNodeProcess(t *testing.T) {
	dir := os.Getenv("DKIM_NODE_STORAGE")
	if dir == "" {
		t.Skip("run by TestDKIMKeysSurvive")
	}
	s, err := dkimsign.New(context.Background(), &certmagic.FileStorage{Path: dir},
		&dkimsign.Config{Domains: []string{"example.test"}, Selector: "t1"}, "dkim", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s.Records())
	os.Stdout.WriteString("RECORDS " + string(b) + "\n")
}

func sameRecords(a, b []dkimsign.Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Value != b[i].Value {
			return false
		}
	}
	return len(a) > 0
}
