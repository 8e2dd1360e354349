package smtpcmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/admin"
	"github.com/caddy-smtp/caddy-smtp/dkimsign"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/smtpcmd"
)

// dkimRecords makes keys for domain (selector s1, both algorithms) in
// a fresh storage and returns their records as GET /smtp/dns has them.
func dkimRecords(t *testing.T, domain string) []admin.DNSRecord {
	t.Helper()
	s, err := dkimsign.New(context.Background(), &certmagic.FileStorage{Path: t.TempDir()},
		&dkimsign.Config{Domains: []string{domain}, Selector: "s1"}, "dkim", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	var out []admin.DNSRecord
	for _, r := range s.Records() {
		out = append(out, admin.DNSRecord{Name: r.Name, Type: r.Type, Value: r.Value})
	}
	return out
}

// resolverAt is a resolver that asks only the DNS server at addr.
func resolverAt(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

// TestCheckDKIM: each status against what a real DNS server (over UDP,
// and TCP for the long RSA record) publishes: the key's record (an RSA
// one in two strings, and with other spacing), none, another key, a
// revoked one, the key's beside another record, junk; SERVFAIL; other
// names of GET /smtp/dns are no selectors of the domain.
func TestCheckDKIM(t *testing.T) {
	d := st.StartDNS(t)
	recs := dkimRecords(t, "example.test")
	other := dkimRecords(t, "example.test")
	ed, rsa := recs[0], recs[1]
	withOthers := append([]admin.DNSRecord{
		{Name: "example.test", Type: "MX", Value: "10 mx.example.test."},
		{Name: "_mta-sts.example.test", Type: "TXT", Value: "v=STSv1; id=1"},
		{Name: "s1-ed25519._domainkey.sub.example.test", Type: "TXT", Value: ed.Value},
	}, recs...)
	lookup := resolverAt(d.Addr()).LookupTXT

	check := func() []smtpcmd.DKIMCheck {
		t.Helper()
		checks, err := smtpcmd.CheckDKIM(context.Background(), withOthers, "example.test", lookup)
		if err != nil {
			t.Fatal(err)
		}
		if len(checks) != 2 || checks[0].Name != ed.Name || checks[1].Name != rsa.Name || checks[0].Want != ed.Value {
			t.Fatalf("checks: %+v", checks)
		}
		return checks
	}

	d.TXT(ed.Name, ed.Value)
	d.TXT(rsa.Name, strings.Replace(strings.Replace(rsa.Value, "; ", ";", -1), "p=", "p = ", 1))
	for _, c := range check() {
		if c.Status != smtpcmd.DKIMMatching {
			t.Errorf("published: %+v", c)
		}
	}

	for _, c := range []struct {
		published []string // at the ed25519 selector; nil: no name
		status    string
		detail    string
	}{
		{nil, smtpcmd.DKIMMissing, ""},
		{[]string{}, smtpcmd.DKIMMissing, ""}, // the name, no TXT
		{[]string{other[0].Value}, smtpcmd.DKIMDifferent, "p= is another key"},
		{[]string{"v=DKIM1; k=ed25519; p="}, smtpcmd.DKIMDifferent, "revoked"},
		{[]string{strings.Replace(ed.Value, "k=ed25519", "k=rsa", 1)}, smtpcmd.DKIMDifferent, "k=rsa where the key is ed25519"},
		{[]string{strings.Replace(ed.Value, "DKIM1", "DKIM2", 1)}, smtpcmd.DKIMDifferent, "v=DKIM2 is not DKIM1"},
		{[]string{"v=spf1 -all"}, smtpcmd.DKIMDifferent, "no p= tag"},
		{[]string{"hello"}, smtpcmd.DKIMDifferent, "not a tag=value list"},
		{[]string{ed.Value, other[0].Value}, smtpcmd.DKIMDifferent, "2 TXT records (1 of them the key's)"},
	} {
		d.Remove(ed.Name)
		if c.published != nil {
			d.TXT(ed.Name, c.published...)
		}
		got := check()[0]
		if got.Status != c.status || !strings.Contains(got.Detail, c.detail) || len(got.Published) != len(c.published) {
			t.Errorf("published %q: %+v, want %s (%s)", c.published, got, c.status, c.detail)
		}
	}

	d.SetServfail(true)
	for _, c := range check() {
		if c.Status != smtpcmd.DKIMFailed || c.Detail == "" {
			t.Errorf("SERVFAIL: %+v", c)
		}
	}
	d.SetServfail(false)

	if _, err := smtpcmd.CheckDKIM(context.Background(), withOthers, "example.org", lookup); err == nil ||
		!strings.Contains(err.Error(), "no DKIM key for example.org") {
		t.Errorf("a domain without keys: %v", err)
	}
}

// TestWriteDKIMCheck: a line per selector; the record to publish (in
// zone file form, strings of 255) and what is there under each that is
// not matching.
func TestWriteDKIMCheck(t *testing.T) {
	long := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 300)
	var b bytes.Buffer
	err := smtpcmd.WriteDKIMCheck(&b, "example.com", []smtpcmd.DKIMCheck{
		{Name: "a._domainkey.example.com", Want: "v=DKIM1; k=ed25519; p=x", Status: smtpcmd.DKIMMatching, Published: []string{"v=DKIM1; k=ed25519; p=x"}},
		{Name: "b._domainkey.example.com", Want: long, Status: smtpcmd.DKIMMissing},
		{Name: "c._domainkey.example.com", Want: "v=DKIM1; k=ed25519; p=x", Status: smtpcmd.DKIMDifferent, Detail: "p= is another key", Published: []string{"v=DKIM1; k=ed25519; p=y"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `DKIM keys of example.com: 3 selectors
a._domainkey.example.com: published and matching
b._domainkey.example.com: missing
  publish:   b._domainkey.example.com. 3600 IN TXT "` + long[:255] + `" "` + long[255:] + `"
c._domainkey.example.com: different (p= is another key)
  published: "v=DKIM1; k=ed25519; p=y"
  publish:   c._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=x"
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// runCaddy runs the caddy binary with args and returns its stdout,
// stderr and exit status.
func runCaddy(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir() // no adjacent Caddyfile
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
		code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// TestSMTPDKIMCommand runs the caddy binary's smtp-dkim check and
// smtp-dns against an in-process Caddy that signs for example.test, with
// a test DNS server as --resolver: exit 1 while a selector's record is
// missing (and the record to publish printed), 0 once both are
// published; smtp-dns prints both records, the RSA one in strings of
// 255.
func TestSMTPDKIMCommand(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	e := st.NewEnv(t)
	srv, _ := st.ServerConfig(t, map[string]any{
		"hostname":       "out.example.internal",
		"accept_domains": nil,
		"tls":            map[string]any{"level": "none"},
		"dkim":           map[string]any{"domains": []string{"example.test"}, "selector": "s1"},
	})
	e.Load(st.App(map[string]any{"out": srv}), nil)
	d := st.StartDNS(t)

	out, errOut, code := runCaddy(t, bin, "smtp-dns", "--address", e.Admin, "--json")
	var recs []admin.DNSRecord
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 2 {
		t.Fatalf("smtp-dns --json: exit %d\n%s%s", code, out, errOut)
	}
	ed, rsa := recs[0], recs[1]
	if ed.Name != "s1-ed25519._domainkey.example.test" || rsa.Name != "s1-rsa2048._domainkey.example.test" {
		t.Fatalf("records: %v", recs)
	}
	out, errOut, code = runCaddy(t, bin, "smtp-dns", "--address", e.Admin)
	zone := regexp.MustCompile(`^s1-ed25519\._domainkey\.example\.test\. 3600 IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/=]{44}"
s1-rsa2048\._domainkey\.example\.test\. 3600 IN TXT "v=DKIM1; k=rsa; p=[A-Za-z0-9+/]{237}" "[A-Za-z0-9+/=]+"
$`)
	if code != 0 || !zone.MatchString(out) {
		t.Fatalf("smtp-dns: exit %d\n%s%s", code, out, errOut)
	}

	d.TXT(ed.Name, ed.Value)
	out, errOut, code = runCaddy(t, bin, "smtp-dkim", "check", "Example.TEST", "--address", e.Admin, "--resolver", d.Addr())
	if code != 1 || !strings.Contains(out, ed.Name+": published and matching\n") ||
		!strings.Contains(out, rsa.Name+": missing\n  publish:   "+rsa.Name+". 3600 IN TXT \"v=DKIM1; k=rsa; p=") ||
		!strings.Contains(errOut, "1 of 2 DKIM records of example.test are not published as the keys are") {
		t.Errorf("smtp-dkim check, rsa missing: exit %d\n%s%s", code, out, errOut)
	}

	d.TXT(rsa.Name, rsa.Value)
	out, errOut, code = runCaddy(t, bin, "smtp-dkim", "check", "example.test", "--address", e.Admin, "--resolver", d.Addr())
	if code != 0 || strings.Count(out, ": published and matching\n") != 2 {
		t.Errorf("smtp-dkim check, both published: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runCaddy(t, bin, "smtp-dkim", "check", "example.test", "--address", e.Admin, "--resolver", d.Addr(), "--json")
	var checks []smtpcmd.DKIMCheck
	if code != 0 || json.Unmarshal([]byte(out), &checks) != nil || len(checks) != 2 || checks[1].Status != smtpcmd.DKIMMatching {
		t.Errorf("smtp-dkim check --json: exit %d\n%s%s", code, out, errOut)
	}

	out, errOut, code = runCaddy(t, bin, "smtp-dkim", "check", "example.org", "--address", e.Admin, "--resolver", d.Addr())
	if code != 1 || !strings.Contains(errOut, "no DKIM key for example.org") {
		t.Errorf("smtp-dkim check of a domain not signed for: exit %d\n%s%s", code, out, errOut)
	}
	_, errOut, code = runCaddy(t, bin, "smtp-dkim", "verify", "example.test", "--address", e.Admin)
	if code != 1 || !strings.Contains(errOut, `unknown smtp-dkim subcommand \"verify\"`) {
		t.Errorf("unknown subcommand: exit %d\n%s", code, errOut)
	}
}
