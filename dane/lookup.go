package dane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Bounds on what a DNS answer may cost: DNS answers are untrusted input.
const (
	queryTimeout = 10 * time.Second
	maxRecords   = 32   // TLSA records looked at per name
	udpSize      = 1232 // EDNS0 buffer (DNS flag day 2020)
)

// Resolver asks one DNS server, with the DO bit, and reports whether
// each answer was DNSSEC-validated (the AD bit).
type Resolver struct {
	// Server is the resolver's host:port.
	Server string
}

// Trusted reports whether the AD bit of this resolver can be believed:
// only a resolver on a loopback address, whose answers cannot be changed
// on the way (RFC 4035 4.9.3; maddy and Postfix's
// smtp_dns_support_level = dnssec assume the same).
func (r Resolver) Trusted() bool {
	host, _, err := net.SplitHostPort(r.Server)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// ErrLookup is a DNS failure: SERVFAIL (a bogus answer, or the resolver
// could not get one), a timeout, a malformed answer. Under DANE it is a
// temporary failure, never a reason to send without DANE.
var ErrLookup = errors.New("dns lookup failed")

// answer is one query's outcome: its records, whether the AD bit was
// set, and whether the name or type did not exist (NXDOMAIN, NODATA).
type answer struct {
	rrs     []dns.RR
	secure  bool
	missing bool
}

func (r Resolver) query(ctx context.Context, name string, qtype uint16) (answer, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true
	m.SetEdns0(udpSize, true)
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	c := &dns.Client{Net: "udp", UDPSize: udpSize, Timeout: queryTimeout}
	in, _, err := c.ExchangeContext(ctx, m, r.Server)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, r.Server)
	}
	if err != nil {
		return answer{}, fmt.Errorf("%w: %s %s at %s: %v", ErrLookup, dns.TypeToString[qtype], name, r.Server, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return answer{secure: in.AuthenticatedData, missing: true}, nil
	default:
		return answer{}, fmt.Errorf("%w: %s %s at %s: %s", ErrLookup, dns.TypeToString[qtype], name, r.Server, dns.RcodeToString[in.Rcode])
	}
	var rrs []dns.RR
	for _, rr := range in.Answer {
		if rr.Header().Rrtype == qtype {
			rrs = append(rrs, rr)
		}
	}
	return answer{rrs: rrs, secure: in.AuthenticatedData, missing: len(rrs) == 0}, nil
}

// HostSecure reports whether host's address records are DNSSEC-validated
// (RFC 7672 2.2: TLSA records are looked up only for a host whose
// address records are secure). Both the A and AAAA answers, records or
// authenticated denial, must be secure.
func (r Resolver) HostSecure(ctx context.Context, host string) (bool, error) {
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		a, err := r.query(ctx, host, t)
		if err != nil {
			return false, err
		}
		if !a.secure {
			return false, nil
		}
	}
	return true, nil
}

// TLSA looks up the TLSA records of a service: _port._tcp.host. It
// returns them (at most 32), whether the answer was validated, and
// ErrLookup for a failure. No records (NXDOMAIN, NODATA) is no error.
func (r Resolver) TLSA(ctx context.Context, host string, port int) ([]Record, bool, error) {
	name := "_" + strconv.Itoa(port) + "._tcp." + strings.TrimSuffix(host, ".")
	a, err := r.query(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, false, err
	}
	var out []Record
	for _, rr := range a.rrs {
		t, ok := rr.(*dns.TLSA)
		if !ok {
			continue
		}
		if len(out) == maxRecords {
			break
		}
		out = append(out, Record{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: strings.ToLower(t.Certificate)})
	}
	return out, a.secure, nil
}

// MX looks up a domain's MX records, best first, and whether the answer
// was validated (RFC 7672 2.2.1: DANE applies to MX hosts only when the
// MX RRset is secure). A domain without MX (missing) has an implicit MX.
func (r Resolver) MX(ctx context.Context, domain string) (hosts []*net.MX, secure, missing bool, err error) {
	a, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, false, false, err
	}
	for _, rr := range a.rrs {
		if mx, ok := rr.(*dns.MX); ok && len(hosts) < maxRecords {
			hosts = append(hosts, &net.MX{Host: mx.Mx, Pref: mx.Preference})
		}
	}
	return hosts, a.secure, a.missing, nil
}

// ResolverAddr is the DNS server for DANE lookups: configured (host or
// host:port; port 53 by default), else the first nameserver of
// /etc/resolv.conf.
func ResolverAddr(configured string) (string, error) {
	server := configured
	if server == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			return "", fmt.Errorf("no resolver: set resolver, or list one in /etc/resolv.conf (%v)", err)
		}
		server = conf.Servers[0]
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "53")
	}
	return server, nil
}

// NetResolver is a net.Resolver that asks server only.
func NetResolver(server string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
}
