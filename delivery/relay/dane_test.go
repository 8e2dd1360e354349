package relay_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/delivery/relay"
	"github.com/caddy-smtp/caddy-smtp/internal/dnssectest"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

type nopCloser struct{ io.ReadSeeker }

func (nopCloser) Close() error { return nil }

// TestRelayDANE: a smarthost under dane and dane-only: its name is the
// TLSA base domain, resolved through the validating resolver; matching
// TLSA: sent, authenticated by it; mismatching: deferred; none: dane
// sends as may, dane-only defers.
func TestRelayDANE(t *testing.T) {
	cert := st.NewCA(t, "Relay CA").Issue(t, "smarthost.good.test", "smarthost.good.test")
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	up := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(cert)})
	_, port, _ := net.SplitHostPort(up.Addr)
	data, _ := dns.CertificateToDANE(1, 1, leaf)
	other, _ := dns.CertificateToDANE(1, 1, st.NewCA(t, "X").Cert)
	zone := func(name, tlsaData string) dnssectest.Zone {
		recs := []string{"smarthost." + name + ". 300 IN A 127.0.0.1"}
		if tlsaData != "" {
			recs = append(recs, fmt.Sprintf("_%s._tcp.smarthost.%s. 300 IN TLSA 3 1 1 %s", port, name, tlsaData))
		}
		return dnssectest.Zone{Name: name, Signed: true, Records: recs}
	}
	srv := dnssectest.Start(t, zone("good.test", data), zone("bad.test", other), zone("none.test", ""))
	job := func(id string) *delivery.Job {
		body := "Subject: relay dane\r\n\r\nhello\r\n"
		return &delivery.Job{
			Envelope:   &spool.Envelope{ID: id, From: "a@sender.test", Size: int64(len(body)), Received: time.Now()},
			Recipients: []*spool.Recipient{{Address: "b@elsewhere.test", Status: spool.StatusQueued}},
			Open:       func() (io.ReadSeekCloser, error) { return nopCloser{strings.NewReader(body)}, nil },
			Hostname:   "gw.sender.test", Logger: zap.NewNop(),
		}
	}
	for _, tc := range []struct {
		domain, level string
		status        delivery.Status
		policy        string
	}{
		{"good.test", "dane-only", delivery.Sent, "dane dane"},
		{"good.test", "dane", delivery.Sent, "dane dane"},
		{"bad.test", "dane", delivery.Deferred, "dane dane"},
		{"none.test", "dane", delivery.Sent, "may dane (there are no validated TLSA records)"},
		{"none.test", "dane-only", delivery.Deferred, "dane-only route"},
	} {
		t.Run(tc.domain+"/"+tc.level, func(t *testing.T) {
			r := &relay.Relay{Addresses: []string{"smarthost." + tc.domain + ":" + port}, TLS: &delivery.ClientTLS{Level: tc.level}, Resolver: srv.Addr()}
			if err := r.Provision(st.CaddyContext(t)); err != nil {
				t.Fatal(err)
			}
			defer r.Cleanup()
			res := r.Deliver(context.Background(), job(tc.domain+tc.level))[0]
			if res.Status != tc.status || !strings.HasPrefix(res.TLSPolicy, tc.policy) {
				t.Fatalf("%+v", res)
			}
			if tc.policy == "dane dane" && tc.status == delivery.Sent && (!res.TLSVerified || !strings.HasPrefix(res.TLSMatch, "TLSA 3 1 1")) {
				t.Fatalf("not authenticated by TLSA: %+v", res)
			}
		})
	}
}
