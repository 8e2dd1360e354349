package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DNSStub is a tiny authoritative DNS server on loopback for chasquid,
// which has no smarthost: it looks up the MX of a recipient's domain
// (and the SPF record of the sender's, and MTA-STS), through the
// resolver of /etc/resolv.conf, which cannot name a port. The harness
// runs chasquid in a mount namespace of its own whose /etc/resolv.conf
// names this server (port 53 on an address of 127.0.0.0/8 that nothing
// else uses, so it clashes with no resolver of the machine's).
//
// It answers MX <domain> → mx.<domain> and A mx.<domain> → 127.0.0.1 for
// the domains it is given, NXDOMAIN for every other name, so that SPF
// and MTA-STS lookups fail at once (none: no policy). internal/smtptest
// has a fuller server (authdns.go), but it is bound to a testing.TB.
type DNSStub struct {
	Addr    string
	udp     *dns.Server
	tcp     *dns.Server
	domains map[string]bool // lower-case FQDNs with an MX
}

// StartDNSStub serves on addr (UDP and TCP) until Close.
func StartDNSStub(addr string, domains ...string) (*DNSStub, error) {
	s := &DNSStub{Addr: addr, domains: map[string]bool{}}
	for _, d := range domains {
		s.domains[dns.Fqdn(strings.ToLower(d))] = true
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return nil, err
	}
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	return s, nil
}

// Close stops the server.
func (s *DNSStub) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

func (s *DNSStub) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 60}
	}
	switch {
	case s.domains[name]:
		if q.Qtype == dns.TypeMX {
			m.Answer = append(m.Answer, &dns.MX{Hdr: hdr(dns.TypeMX), Preference: 10, Mx: "mx." + name})
		}
	case strings.HasPrefix(name, "mx.") && s.domains[strings.TrimPrefix(name, "mx.")]:
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(127, 0, 0, 1)})
		}
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// cmdDNS is "smtpbench dns": the stub alone.
func cmdDNS(args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	addr := fs.String("addr", "127.0.29.53:53", "listen `host:port` (UDP and TCP)")
	domains := fs.String("mx", "sink.bench", "comma-separated domains whose MX is mx.DOMAIN at 127.0.0.1")
	fs.Parse(args)
	s, err := StartDNSStub(*addr, strings.Split(*domains, ",")...)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "dns: serving %s on %s; ^C ends\n", *domains, *addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
	s.Close()
	time.Sleep(10 * time.Millisecond)
	return nil
}
