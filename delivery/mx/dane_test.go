package mx_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/dane"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/delivery/mx"
	"github.com/caddy-smtp/caddy-smtp/internal/dnssectest"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }

func job(domain string) *delivery.Job {
	body := "Subject: dane\r\n\r\nhello\r\n"
	return &delivery.Job{
		Envelope:   &spool.Envelope{ID: "DANE-" + domain, From: "a@sender.test", Size: int64(len(body)), Received: time.Now()},
		Recipients: []*spool.Recipient{{Address: "b@" + domain, Status: spool.StatusQueued}},
		Open:       func() (io.ReadSeekCloser, error) { return nopCloser{strings.NewReader(body)}, nil },
		Hostname:   "gw.sender.test",
		Logger:     zap.NewNop(),
	}
}

// tlsa is the zone line of a TLSA record for cert at name.
func tlsa(name string, usage, selector, mtype uint8, cert *x509.Certificate) string {
	data, err := dns.CertificateToDANE(selector, mtype, cert)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("%s. 300 IN TLSA %d %d %d %s", name, usage, selector, mtype, data)
}

// TestDANE: each DANE cell (RFC 7672) against levels dane and dane-only,
// with a real authoritative server (NSD) serving signed, unsigned and
// bogus zones behind a real validating resolver (Unbound) on loopback.
// Every MX host is 127.0.0.1 on the upstream's port; what differs is
// the zone.
func TestDANE(t *testing.T) {
	ca := st.NewCA(t, "DANE TA")
	good := ca.Issue(t, "mx.signed.test", "mx.signed.test")
	goodLeaf, _ := x509.ParseCertificate(good.Certificate[0])
	// The upstream serves mx.signed.test's certificate to that SNI, and
	// mx.ta.test's (from the TA, with the TA) to any other.
	// RFC 7672 3.1.2: a server using DANE-TA sends the TA in its chain.
	taCert := ca.Issue(t, "mx.ta.test", "mx.ta.test")
	taCert.Certificate = append(taCert.Certificate, ca.Cert.Raw)
	// taCert first: it is what an unknown SNI gets (mx.tawrong.test).
	cfg := st.TLSServerConfig(taCert)
	cfg.Certificates = append(cfg.Certificates, good)
	up := st.NewUpstream(t, st.UpstreamOpts{TLS: cfg})
	_, portStr, _ := net.SplitHostPort(up.Addr)
	var port int
	fmt.Sscan(portStr, &port)
	other := st.NewCA(t, "Other").Issue(t, "other.test", "other.test")
	otherLeaf, _ := x509.ParseCertificate(other.Certificate[0])

	zone := func(name string, signed, bogus bool, extra ...string) dnssectest.Zone {
		recs := []string{
			name + ". 300 IN MX 10 mx." + name + ".",
			"mx." + name + ". 300 IN A 127.0.0.1",
		}
		for _, e := range extra {
			recs = append(recs, strings.ReplaceAll(e, "@", fmt.Sprintf("_%d._tcp.mx.%s", port, name)))
		}
		return dnssectest.Zone{Name: name, Records: recs, Signed: signed, Bogus: bogus}
	}
	srv := dnssectest.Start(t,
		zone("signed.test", true, false, tlsa("@", 3, 1, 1, goodLeaf)),
		zone("mismatch.test", true, false, tlsa("@", 3, 1, 1, otherLeaf)),
		zone("ta.test", true, false, tlsa("@", 2, 0, 1, ca.Cert)),
		zone("tawrong.test", true, false, tlsa("@", 2, 0, 1, ca.Cert)),
		zone("notlsa.test", true, false),
		zone("unusable.test", true, false, tlsa("@", 1, 1, 1, goodLeaf)),
		zone("unsigned.test", false, false, tlsa("@", 3, 1, 1, goodLeaf)),
		zone("bogus.test", true, true, tlsa("@", 3, 1, 1, goodLeaf)),
	)
	target := func(level string) *mx.MX {
		m := &mx.MX{TLS: &delivery.ClientTLS{Level: level}, Resolver: srv.Addr(), Port: port, MTASTS: &mx.MTASTS{Disabled: true}}
		raw, _ := json.Marshal(m)
		m = new(mx.MX)
		json.Unmarshal(raw, m)
		if err := m.Provision(st.CaddyContext(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Cleanup() })
		return m
	}
	dn, only := target("dane"), target("dane-only")
	type want struct {
		status  delivery.Status
		policy  string // prefix of tls_policy
		match   string // prefix of tls_match
		reply   string // part of the reply, for failures
		tlsUsed bool
	}
	sentTLSA := want{status: delivery.Sent, policy: "dane dane", match: "TLSA 3 1 1", tlsUsed: true}
	for _, tc := range []struct {
		domain   string
		dane     want
		daneOnly want
	}{
		{"signed.test", sentTLSA, sentTLSA},
		{"mismatch.test", want{status: delivery.Deferred, policy: "dane dane", reply: "not verified by TLSA"},
			want{status: delivery.Deferred, policy: "dane dane", reply: "not verified by TLSA"}},
		{"ta.test", want{status: delivery.Sent, policy: "dane dane", match: "TLSA 2 0 1", tlsUsed: true},
			want{status: delivery.Sent, policy: "dane dane", match: "TLSA 2 0 1", tlsUsed: true}},
		{"tawrong.test", want{status: delivery.Deferred, policy: "dane dane", reply: "DANE-TA matched, but"},
			want{status: delivery.Deferred, policy: "dane dane", reply: "DANE-TA matched, but"}},
		{"notlsa.test", want{status: delivery.Sent, policy: "may dane (there are no validated TLSA records)", tlsUsed: true},
			want{status: delivery.Deferred, policy: "dane-only route", reply: "no validated TLSA records"}},
		{"unusable.test", want{status: delivery.Sent, policy: "encrypt dane (none of 1 TLSA records is usable)", tlsUsed: true},
			want{status: delivery.Deferred, policy: "dane-only route", reply: "none of 1 TLSA records is usable"}},
		{"unsigned.test", want{status: delivery.Sent, policy: "may dane (the MX records are not DNSSEC-validated)", tlsUsed: true},
			want{status: delivery.Deferred, policy: "dane-only route", reply: "not DNSSEC-validated"}},
		// The resolver answers SERVFAIL for the bogus zone: the MX lookup
		// fails, a temporary failure, never a downgrade.
		{"bogus.test", want{status: delivery.Deferred, reply: "MX lookup for bogus.test"},
			want{status: delivery.Deferred, reply: "MX lookup for bogus.test"}},
	} {
		for _, lv := range []struct {
			name string
			m    *mx.MX
			w    want
		}{{"dane", dn, tc.dane}, {"dane-only", only, tc.daneOnly}} {
			t.Run(tc.domain+"/"+lv.name, func(t *testing.T) {
				r := lv.m.Deliver(context.Background(), job(tc.domain))[0]
				w := lv.w
				if r.Status != w.status || !strings.HasPrefix(r.TLSPolicy, w.policy) ||
					!strings.HasPrefix(r.TLSMatch, w.match) || !strings.Contains(r.Reply, w.reply) ||
					(w.tlsUsed && r.TLSVersion == "") {
					t.Fatalf("got %+v\nwant %+v", r, w)
				}
				if w.match != "" && !r.TLSVerified {
					t.Fatalf("authenticated by TLSA, but tls_verified is false: %+v", r)
				}
			})
		}
	}
}

// TestExplainDANE: Explain (caddy smtp-tls check) shows the TLSA
// records, the level per host, and with connect the handshake: the
// certificate, and whether and by what it was authenticated.
func TestExplainDANE(t *testing.T) {
	ca := st.NewCA(t, "Explain CA")
	cert := ca.Issue(t, "mx.ex.test", "mx.ex.test")
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	up := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(cert)})
	_, portStr, _ := net.SplitHostPort(up.Addr)
	var port int
	fmt.Sscan(portStr, &port)
	srv := dnssectest.Start(t, dnssectest.Zone{Name: "ex.test", Signed: true, Records: []string{
		"ex.test. 300 IN MX 10 mx.ex.test.",
		"mx.ex.test. 300 IN A 127.0.0.1",
		tlsa(fmt.Sprintf("_%d._tcp.mx.ex.test", port), 3, 1, 1, leaf),
	}})
	m := &mx.MX{TLS: &delivery.ClientTLS{Level: "dane"}, Resolver: srv.Addr(), Port: port, MTASTS: &mx.MTASTS{Disabled: true}}
	if err := m.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	defer m.Cleanup()
	rep := m.Explain(context.Background(), "ex.test", "gw.sender.test", true)
	if rep.Error != "" || !rep.MXSecure || len(rep.Hosts) != 1 {
		t.Fatalf("report %+v", rep)
	}
	h := rep.Hosts[0]
	if h.TLSPolicy != "dane dane" || len(h.TLSA) != 1 || !strings.HasPrefix(h.TLSA[0], "3 1 1 ") ||
		h.Probe == nil || !h.Probe.Verified || !strings.HasPrefix(h.Probe.Match, "TLSA 3 1 1") ||
		h.Probe.Subject != "CN=mx.ex.test" || h.Probe.SPKISHA256 == "" {
		t.Fatalf("host %+v, probe %+v", h, h.Probe)
	}
	if len(up.Received()) != 0 {
		t.Fatal("Explain sent mail")
	}
}

// TestDANEResolverNotLoopback: the AD bit of a resolver that is not on
// loopback is not believed: dane acts as may and dane-only defers, and
// no query is sent to it to find that out.
func TestDANEResolverNotLoopback(t *testing.T) {
	if (dane.Resolver{Server: "192.0.2.53:53"}).Trusted() || !(dane.Resolver{Server: "127.0.0.1:53"}).Trusted() ||
		!(dane.Resolver{Server: "[::1]:53"}).Trusted() || (dane.Resolver{Server: "resolver.example:53"}).Trusted() {
		t.Fatal("Trusted: only loopback addresses")
	}
	for _, level := range []string{"dane", "dane-only"} {
		p := &delivery.ClientTLS{Level: level}
		if err := p.Provision(st.CaddyContext(t)); err != nil {
			t.Fatal(err)
		}
		hop := delivery.Hop{Host: "mx.example.test", Addr: "127.0.0.1:1", NextHop: "example.test"}
		res := p.PrepareDANE(context.Background(), &dane.Resolver{Server: "192.0.2.53:53"}, true, &hop, 25)
		switch level {
		case "dane":
			if res != nil {
				t.Fatalf("dane with an untrusted resolver: %+v", res)
			}
		case "dane-only":
			if res == nil || res.Status != delivery.Deferred || !strings.Contains(res.Reply, "not on loopback") {
				t.Fatalf("dane-only with an untrusted resolver: %+v", res)
			}
		}
	}
}
