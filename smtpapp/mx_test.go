package smtpapp

import (
	"fmt"
	"net"
	"strings"
	"testing"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	"github.com/miekg/dns"
)

// testDNS is a real DNS server on loopback, answering from a zone map.
type testDNS struct {
	addr string
	mx   map[string][]*dns.MX
	a    map[string]string
	fail map[string]int // rcode to answer with
}

func newTestDNS(t *testing.T, z *testDNS) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		name := strings.ToLower(q.Question[0].Name)
		qtype := q.Question[0].Qtype
		_, hasMX := z.mx[name]
		_, hasA := z.a[name]
		switch {
		case z.fail[name] != 0:
			m.Rcode = z.fail[name]
		case !hasMX && !hasA:
			m.Rcode = dns.RcodeNameError
		case qtype == dns.TypeMX:
			for _, mx := range z.mx[name] {
				rr := *mx
				rr.Hdr = dns.RR_Header{Name: name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 60}
				m.Answer = append(m.Answer, &rr)
			}
		case qtype == dns.TypeA && hasA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.ParseIP(z.a[name]),
			})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func mxRR(pref uint16, host string) *dns.MX { return &dns.MX{Preference: pref, Mx: host} }

// TestMXDelivery routes by MX records from a DNS server the test runs:
// preference order, the next MX when the best is down, the implicit MX
// (A record) when there is none, null MX and NXDOMAIN bounce, a
// SERVFAIL defers.
func TestMXDelivery(t *testing.T) {
	e := st.NewEnv(t)
	low := st.NewUpstream(t, st.UpstreamOpts{}) // 127.0.0.1:P
	_, port, _ := net.SplitHostPort(low.Addr)
	high := st.NewUpstream(t, st.UpstreamOpts{ListenAddr: "127.0.0.3:" + port})
	zone := &testDNS{
		mx: map[string][]*dns.MX{
			"pref.test.":    {mxRR(10, "mx-high.pref.test."), mxRR(20, "mx-low.pref.test.")},
			"reverse.test.": {mxRR(20, "mx-high.pref.test."), mxRR(10, "mx-low.pref.test.")},
			"down.test.":    {mxRR(10, "mx-dead.pref.test."), mxRR(20, "mx-low.pref.test.")},
			"nullmx.test.":  {mxRR(0, ".")},
		},
		a: map[string]string{
			"mx-high.pref.test.": "127.0.0.3",
			"mx-low.pref.test.":  "127.0.0.1",
			"mx-dead.pref.test.": "127.0.0.2", // nothing listens there
			"fallback.test.":     "127.0.0.1",
		},
		fail: map[string]int{"servfail.test.": dns.RcodeServerFailure},
	}
	resolver := newTestDNS(t, zone)
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname":       "gw.example.test",
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{
			"via": "mx", "resolver": resolver, "port": atoiT(t, port), "tls": map[string]any{"level": "may"}}}},
	})
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, nil), nil)

	cases := []struct {
		domain string
		status string
		relay  string // substring of the logged relay
		dsn    string
		at     *st.Upstream
	}{
		{"pref.test", "sent", "mx-high.pref.test[127.0.0.3]", "2.0.0", high},
		{"reverse.test", "sent", "mx-low.pref.test[127.0.0.1]", "2.0.0", low},
		{"down.test", "sent", "mx-low.pref.test[127.0.0.1]", "2.0.0", low},
		{"fallback.test", "sent", "fallback.test[127.0.0.1]", "2.0.0", low},
		{"nullmx.test", "bounced", "", "5.1.10", nil},
		{"nxdomain.test", "bounced", "", "5.1.2", nil},
		{"servfail.test", "deferred", "", "4.4.3", nil},
	}
	for _, tc := range cases {
		t.Run(tc.domain, func(t *testing.T) {
			subject := "Subject: to " + tc.domain
			id := st.Submit(t, addr, "sender@example.test", "user@"+tc.domain, subject+"\r\n\r\nbody\r\n.\r\n")
			l := e.DeliveryLine(t, id)
			if l["status"] != tc.status || l["dsn"] != tc.dsn || !strings.Contains(fmt.Sprint(l["relay"]), tc.relay) {
				t.Fatalf("got status=%v dsn=%v relay=%v reply=%v; want %s %s %s",
					l["status"], l["dsn"], l["relay"], l["reply"], tc.status, tc.dsn, tc.relay)
			}
			if tc.at != nil {
				found := false
				for _, m := range tc.at.Received() {
					if strings.Contains(string(m.Data), subject+"\r\n") {
						found = true
					}
				}
				if !found {
					t.Fatalf("did not arrive at %s", tc.at.Addr)
				}
			}
		})
	}
}

func atoiT(t *testing.T, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
