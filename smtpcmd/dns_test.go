package smtpcmd_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/admin"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/smtpcmd"
)

// smtpDNS runs `caddy smtp-dns args... --address admin` and returns its
// stdout, stderr and exit status.
func smtpDNS(t *testing.T, bin, adminAddr string, args ...string) (string, string, int) {
	t.Helper()
	return runCaddy(t, bin, append(append([]string{"smtp-dns"}, args...), "--address", adminAddr)...)
}

// TestSMTPDNSCommand runs the caddy binary's smtp-dns command against an
// in-process Caddy: zone file lines (MX, and a TLSA 3 1 1 of the served
// key), --domain, --json.
func TestSMTPDNSCommand(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	e := st.NewEnv(t)
	srv, addr := st.ServerConfig(t, map[string]any{
		"hostname":       "mx.example.internal",
		"accept_domains": []string{"example.test", "example.org"},
	})
	e.Load(st.App(map[string]any{"mx": srv}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(e.LocalCARoot(), "mx.example.internal"))
	port := addr[strings.LastIndex(addr, ":")+1:]

	out, errOut, code := smtpDNS(t, bin, e.Admin)
	if code != 0 {
		t.Fatalf("caddy smtp-dns: exit %d\n%s%s", code, out, errOut)
	}
	want := regexp.MustCompile(`^example\.org\. 3600 IN MX 10 mx\.example\.internal\.
example\.test\. 3600 IN MX 10 mx\.example\.internal\.
_` + port + `\._tcp\.mx\.example\.internal\. 3600 IN TLSA 3 1 1 [0-9a-f]{64}
$`)
	if !want.MatchString(out) {
		t.Fatalf("caddy smtp-dns:\n%s", out)
	}

	out, errOut, code = smtpDNS(t, bin, e.Admin, "--domain", "example.org")
	if code != 0 || out != "example.org. 3600 IN MX 10 mx.example.internal.\n" {
		t.Errorf("--domain example.org: exit %d\n%s%s", code, out, errOut)
	}
	out, _, code = smtpDNS(t, bin, e.Admin, "--domain", "nowhere.test")
	if code != 0 || out != "; no DNS records to publish\n" {
		t.Errorf("--domain nowhere.test: exit %d\n%s", code, out)
	}

	out, errOut, code = smtpDNS(t, bin, e.Admin, "--json")
	var records []admin.DNSRecord
	if code != 0 || json.Unmarshal([]byte(out), &records) != nil || len(records) != 3 ||
		records[2].Type != "TLSA" || records[2].Name != "_"+port+"._tcp.mx.example.internal" {
		t.Errorf("--json: exit %d\n%s%s", code, out, errOut)
	}

	// no Caddy at the address: an error, exit status 1
	_, errOut, code = smtpDNS(t, bin, fmt.Sprintf("127.0.0.1:%d", st.FreePort(t)))
	if code != 1 || errOut == "" {
		t.Errorf("unreachable admin API: exit %d, %q", code, errOut)
	}
}

// TestWriteZone: zone file lines, TXT quoted with its quotes and
// backslashes escaped, in strings of 255 bytes of the value.
func TestWriteZone(t *testing.T) {
	var b bytes.Buffer
	err := smtpcmd.WriteZone(&b, []admin.DNSRecord{
		{Name: "example.com", Type: "MX", Value: "10 mx.example.com."},
		{Name: "_mta-sts.example.com", Type: "TXT", Value: "v=STSv1; id=0123456789abcdef0123"},
		{Name: "odd.example.com", Type: "TXT", Value: "a \"b\" \\c\x01"},
		{Name: "_25._tcp.mx.example.com", Type: "TLSA", Value: "3 1 1 00ff"},
		{Name: "long.example.com", Type: "TXT", Value: strings.Repeat("a", 254) + "\"" + strings.Repeat("b", 255) + "c"},
		{Name: "empty.example.com", Type: "TXT", Value: ""},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `example.com. 3600 IN MX 10 mx.example.com.
_mta-sts.example.com. 3600 IN TXT "v=STSv1; id=0123456789abcdef0123"
odd.example.com. 3600 IN TXT "a \"b\" \\c\001"
_25._tcp.mx.example.com. 3600 IN TLSA 3 1 1 00ff
long.example.com. 3600 IN TXT "` + strings.Repeat("a", 254) + `\"" "` + strings.Repeat("b", 255) + `" "c"
empty.example.com. 3600 IN TXT ""
`
	if b.String() != want {
		t.Errorf("zone:\n%s\nwant:\n%s", b.String(), want)
	}
}
