package smtptest

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// resolverFor is Go's own resolver, pointed at the test's DNS server: a
// client that nobody here wrote.
func resolverFor(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

func query(t *testing.T, addr, net, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	if edns {
		m.SetEdns0(4096, false)
	}
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, dns.TypeToString[qtype], err)
	}
	return r
}

func TestDNSRecords(t *testing.T) {
	d := StartDNS(t)
	ctx := context.Background()
	r := resolverFor(d.Addr())

	long := strings.Repeat("p", 300) + `\"x";` + strings.Repeat("q", 300)
	d.TXT("Example.COM", "v=spf1 -all", long)
	d.A("mail.example.com.", "192.0.2.1", "192.0.2.2")
	d.AAAA("mail.example.com", "2001:db8::1")
	d.MX("example.com", 10, "mail.example.com")
	d.MX("example.com", 20, "mx2.example.com.")
	d.TXT("sel._domainkey.example.org", "v=DKIM1; p=")

	txts, err := r.LookupTXT(ctx, "EXAMPLE.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(txts) != 2 || !(txts[0] == long || txts[1] == long) || !(txts[0] == "v=spf1 -all" || txts[1] == "v=spf1 -all") {
		t.Errorf("TXT: %q", txts)
	}
	// The long record: three character-strings of at most 255 bytes, in one
	// record; over UDP without EDNS it does not fit in 512 bytes: TC.
	m := query(t, d.Addr(), "udp", "example.com", dns.TypeTXT, false)
	if !m.Truncated {
		t.Errorf("UDP without EDNS: not truncated: %v", m)
	}
	m = query(t, d.Addr(), "tcp", "example.com", dns.TypeTXT, false)
	var parts int
	for _, rr := range m.Answer {
		if txt := rr.(*dns.TXT); len(txt.Txt) > 1 {
			parts = len(txt.Txt)
		}
	}
	if parts != 3 || !m.Authoritative {
		t.Errorf("TCP: %d character-strings, aa=%v: %v", parts, m.Authoritative, m)
	}
	if m := query(t, d.Addr(), "udp", "example.com", dns.TypeTXT, true); m.Truncated || len(m.Answer) != 2 {
		t.Errorf("UDP with EDNS 4096: %v", m)
	}

	ips, err := r.LookupHost(ctx, "MAIL.example.com")
	if err != nil || len(ips) != 3 {
		t.Errorf("A/AAAA: %v %v", ips, err)
	}
	mxs, err := r.LookupMX(ctx, "example.com")
	if err != nil || len(mxs) != 2 || mxs[0].Host != "mail.example.com." || mxs[0].Pref != 10 || mxs[1].Host != "mx2.example.com." {
		t.Errorf("MX: %v %v", mxs, err)
	}

	// NXDOMAIN for an unknown name, NOERROR without answer for a known one
	// without the type and for an empty non-terminal.
	if m := query(t, d.Addr(), "udp", "nowhere.example.com", dns.TypeTXT, false); m.Rcode != dns.RcodeNameError {
		t.Errorf("unknown name: %v", m)
	}
	for _, name := range []string{"mail.example.com", "_domainkey.example.org", "example.org"} {
		if m := query(t, d.Addr(), "udp", name, dns.TypeTXT, false); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Errorf("%s TXT: %v", name, m)
		}
	}
	_, err = r.LookupTXT(ctx, "nowhere.example.com")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("Go resolver on unknown name: %v", err)
	}

	// CNAME, followed within the server.
	d.RR(t, "alias.example.net. CNAME mail.example.com.")
	if m := query(t, d.Addr(), "udp", "alias.example.net", dns.TypeA, false); len(m.Answer) != 3 {
		t.Errorf("CNAME: %v", m)
	}

	// TXT replaces, Remove deletes.
	d.TXT("example.com", "v=spf1 ~all")
	if txts, _ := r.LookupTXT(ctx, "example.com"); len(txts) != 1 || txts[0] != "v=spf1 ~all" {
		t.Errorf("TXT after replace: %q", txts)
	}
	// Removed, a name with names below it is an empty non-terminal; one
	// without is gone.
	d.Remove("EXAMPLE.com.")
	if m := query(t, d.Addr(), "tcp", "example.com", dns.TypeMX, false); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("after Remove, with names below: %v", m)
	}
	d.Remove("mail.example.com")
	if m := query(t, d.Addr(), "tcp", "mail.example.com", dns.TypeA, false); m.Rcode != dns.RcodeNameError {
		t.Errorf("after Remove: %v", m)
	}
}

func TestDNSFailures(t *testing.T) {
	d := StartDNS(t)
	d.TXT("example.com", "v=spf1 -all")
	d.ResetQueries()

	d.SetServfail(true)
	if m := query(t, d.Addr(), "udp", "example.com", dns.TypeTXT, false); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("servfail: %v", m)
	}
	d.SetServfail(false)

	d.SetDown(true)
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
		if m, _, err := c.Exchange(new(dns.Msg).SetQuestion("example.com.", dns.TypeTXT), d.Addr()); err == nil {
			t.Errorf("down, %s: answered %v", network, m)
		}
	}
	d.SetDown(false)
	if m := query(t, d.Addr(), "udp", "example.com", dns.TypeTXT, false); len(m.Answer) != 1 {
		t.Errorf("back up: %v", m)
	}
	if n := d.Queries(); n != 4 {
		t.Errorf("Queries() = %d, want 4", n)
	}
}

func TestDNSConcurrent(t *testing.T) {
	d := StartDNS(t)
	r := resolverFor(d.Addr())
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				d.TXT("example.com", "v=spf1 -all")
				r.LookupTXT(context.Background(), "example.com")
				d.Remove("example.com")
			}
		}()
	}
	wg.Wait()
	if d.Queries() < 8*20 {
		t.Errorf("Queries() = %d", d.Queries())
	}
}
