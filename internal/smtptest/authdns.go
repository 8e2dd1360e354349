package smtptest

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a small authoritative DNS server for tests ("the test's DNS
// server"): real UDP and TCP sockets on one loopback address and port,
// records set at run time. Names are case-insensitive and may be given
// with or without the final dot. An unknown name gets NXDOMAIN, a known
// name (or an empty non-terminal above one) without records of the asked
// type gets NOERROR with no answer. Answers are authoritative, with TTL
// 1, and UDP answers larger than the client's size (512, or its EDNS
// size) are truncated (TC) so that the client retries over TCP. All
// methods are safe for concurrent use.
type DNS struct {
	addr string

	mu       sync.Mutex
	rrs      map[string][]dns.RR // lower-case FQDN → records
	down     bool
	servfail bool
	failing  map[string]bool // names answered SERVFAIL
	queries  int
}

// StartDNS starts a DNS server on 127.0.0.1, on a port free for both UDP
// and TCP, stopped when the test ends.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	return StartDNSAt(t, "127.0.0.1:0")
}

// StartDNSAt is StartDNS on a given address, for clients that cannot be
// told a port (e.g. "127.77.0.1:53", which needs root). With port 0 it
// picks one free for both UDP and TCP.
func StartDNSAt(t testing.TB, addr string) *DNS {
	t.Helper()
	d := &DNS{rrs: map[string][]dns.RR{}}
	bound, err := serveDNS(t, addr, dns.HandlerFunc(d.serve))
	if err != nil {
		t.Fatalf("test DNS server on %s: %v", addr, err)
	}
	d.addr = bound
	return d
}

// serveDNS serves handler on UDP and TCP at addr (port 0: one port free
// for both) until the test ends, and returns the address bound.
func serveDNS(t testing.TB, addr string, handler dns.Handler) (string, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	var pc net.PacketConn
	var l net.Listener
	for try := 0; ; try++ {
		pc, err = net.ListenPacket("udp", addr)
		if err != nil {
			return "", err
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil && port == "0" {
			// Not a port FreePort gave someone who has yet to bind it.
			if _, dup := handedOut.LoadOrStore(l.Addr().(*net.TCPAddr).Port, true); dup {
				l.Close()
				err = errors.New("port handed out by FreePort")
			}
		}
		if err == nil {
			break
		}
		pc.Close()
		if port != "0" || try == 20 {
			return "", err
		}
	}
	udp := &dns.Server{PacketConn: pc, Handler: handler}
	tcp := &dns.Server{Listener: l, Handler: handler, ReadTimeout: 5 * time.Second}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
	})
	return pc.LocalAddr().String(), nil
}

// Addr is the server's "127.0.0.1:port", for a resolver setting.
func (d *DNS) Addr() string { return d.addr }

func fqdn(name string) string { return dns.CanonicalName(name) }

// set replaces name's records of type rrtype with rrs, or adds rrs to
// them.
func (d *DNS) set(name string, rrtype uint16, add bool, rrs ...dns.RR) {
	name = fqdn(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	var keep []dns.RR
	for _, rr := range d.rrs[name] {
		if add || rr.Header().Rrtype != rrtype {
			keep = append(keep, rr)
		}
	}
	for _, rr := range rrs {
		*rr.Header() = dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: 1}
		keep = append(keep, rr)
	}
	d.rrs[name] = keep
}

// TXT sets name's TXT records, one for each value (none: name exists
// without TXT records). A value longer than 255 bytes is split into
// several character-strings of the one record, as RFC 1035 requires;
// readers join them (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
func (d *DNS) TXT(name string, values ...string) {
	var rrs []dns.RR
	for _, v := range values {
		var parts []string
		for len(v) > 255 {
			parts = append(parts, v[:255])
			v = v[255:]
		}
		parts = append(parts, v)
		for i, p := range parts {
			// miekg/dns packs TXT strings in presentation form, where
			// a backslash starts an escape.
			parts[i] = strings.ReplaceAll(p, `\`, `\\`)
		}
		rrs = append(rrs, &dns.TXT{Txt: parts})
	}
	d.set(name, dns.TypeTXT, false, rrs...)
}

// A sets name's A records.
func (d *DNS) A(name string, ips ...string) {
	var rrs []dns.RR
	for _, ip := range ips {
		a := net.ParseIP(ip).To4()
		if a == nil {
			panic("smtptest.DNS.A: not an IPv4 address: " + ip)
		}
		rrs = append(rrs, &dns.A{A: a})
	}
	d.set(name, dns.TypeA, false, rrs...)
}

// AAAA sets name's AAAA records.
func (d *DNS) AAAA(name string, ips ...string) {
	var rrs []dns.RR
	for _, ip := range ips {
		a := net.ParseIP(ip)
		if a == nil || a.To4() != nil {
			panic("smtptest.DNS.AAAA: not an IPv6 address: " + ip)
		}
		rrs = append(rrs, &dns.AAAA{AAAA: a})
	}
	d.set(name, dns.TypeAAAA, false, rrs...)
}

// MX adds an MX record to name's.
func (d *DNS) MX(name string, pref uint16, host string) {
	d.set(name, dns.TypeMX, true, &dns.MX{Preference: pref, Mx: fqdn(host)})
}

// RR adds a record in zone-file form, e.g. "x.example. CNAME y.example."
// or "4.3.2.1.in-addr.arpa. PTR mail.example.", for the types without a
// method of their own. A CNAME is followed within this server's names.
func (d *DNS) RR(t testing.TB, text string) {
	t.Helper()
	rr, err := dns.NewRR(text)
	if err != nil || rr == nil {
		t.Fatalf("DNS.RR(%q): %v", text, err)
	}
	d.set(rr.Header().Name, rr.Header().Rrtype, true, rr)
}

// Remove deletes every record of name: it gets NXDOMAIN from then on.
func (d *DNS) Remove(name string) {
	d.mu.Lock()
	delete(d.rrs, fqdn(name))
	d.mu.Unlock()
}

// SetDown makes the server read queries and answer none, so that
// clients time out (an SPF or DKIM temperror).
func (d *DNS) SetDown(down bool) {
	d.mu.Lock()
	d.down = down
	d.mu.Unlock()
}

// SetServfail makes the server answer every query with SERVFAIL.
func (d *DNS) SetServfail(on bool) {
	d.mu.Lock()
	d.servfail = on
	d.mu.Unlock()
}

// SetServfailName makes the server answer SERVFAIL for one name (and
// normally for the others).
func (d *DNS) SetServfailName(name string) {
	d.mu.Lock()
	if d.failing == nil {
		d.failing = map[string]bool{}
	}
	d.failing[fqdn(strings.ToLower(name))] = true
	d.mu.Unlock()
}

// Queries is the number of queries received so far (answered or not),
// over UDP and TCP.
func (d *DNS) Queries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries
}

// ResetQueries sets the query count back to zero.
func (d *DNS) ResetQueries() {
	d.mu.Lock()
	d.queries = 0
	d.mu.Unlock()
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	d.mu.Lock()
	d.queries++
	down, servfail := d.down, d.servfail
	var reply *dns.Msg
	if !down {
		if len(req.Question) == 1 && d.failing[strings.ToLower(req.Question[0].Name)] {
			servfail = true
		}
		reply = d.answer(req, servfail)
	}
	d.mu.Unlock()
	if down {
		return // no answer at all: the client times out
	}
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		reply.Truncate(size)
	}
	w.WriteMsg(reply)
}

// answer builds the reply to req; d.mu is held.
func (d *DNS) answer(req *dns.Msg, servfail bool) *dns.Msg {
	m := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		return m.SetRcode(req, dns.RcodeFormatError)
	}
	if servfail {
		return m.SetRcode(req, dns.RcodeServerFailure)
	}
	m.SetReply(req)
	m.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(dns.DefaultMsgSize, false)
	}
	q := req.Question[0]
	name := fqdn(q.Name)
	for hops := 0; hops < 8; hops++ {
		rrs, ok := d.rrs[name]
		if !ok && !d.nonTerminal(name) {
			if hops == 0 {
				m.Rcode = dns.RcodeNameError
			}
			return m
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY:
				m.Answer = append(m.Answer, answerRR(rr, q.Name, hops))
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname = rr.(*dns.CNAME)
			}
		}
		if cname == nil || q.Qtype == dns.TypeCNAME || q.Qtype == dns.TypeANY {
			return m
		}
		m.Answer = append(m.Answer, answerRR(cname, q.Name, hops))
		name = fqdn(cname.Target)
	}
	return m
}

// answerRR is a copy of rr, owned by the query's name as asked (its
// case kept, RFC 4343) unless it comes from following a CNAME.
func answerRR(rr dns.RR, qname string, hops int) dns.RR {
	c := dns.Copy(rr)
	if hops == 0 {
		c.Header().Name = dns.Fqdn(qname)
	}
	return c
}

// nonTerminal reports whether name is an empty non-terminal: a name
// without records of its own above one with records (RFC 8020: it exists).
func (d *DNS) nonTerminal(name string) bool {
	for n := range d.rrs {
		if strings.HasSuffix(n, "."+name) {
			return true
		}
	}
	return false
}
