package dnssectest_test

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/internal/dnssectest"
	"github.com/miekg/dns"
)

func digest(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// ask sends one query with the DO bit over netw and fails the test if no
// reply comes.
func ask(t *testing.T, netw, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(4096, true)
	c := &dns.Client{Net: netw, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s at %s: %v", netw, name, dns.TypeToString[qtype], addr, err)
	}
	return r
}

// answerOf returns the answer's records of type qtype, and whether an
// RRSIG over them came too.
func answerOf(r *dns.Msg, qtype uint16) (rrs []dns.RR, signed bool) {
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.RRSIG:
			if v.TypeCovered == qtype {
				signed = true
			}
		default:
			if rr.Header().Rrtype == qtype {
				rrs = append(rrs, rr)
			}
		}
	}
	return rrs, signed
}

func tlsaDigests(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, rr.(*dns.TLSA).Certificate)
	}
	return out
}

func TestZones(t *testing.T) {
	signedHash, plainHash, bogusHash := digest(t), digest(t), digest(t)
	start := time.Now()
	srv := dnssectest.Start(t,
		dnssectest.Zone{Name: "example.test", Signed: true, Records: []string{
			"mx.example.test. 300 IN A 127.0.0.1",
			"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + signedHash,
		}},
		dnssectest.Zone{Name: "plain.test.", Records: []string{
			"mx 300 IN A 127.0.0.2", // relative to the zone
			"_25._tcp.mx IN TLSA 3 1 1 " + plainHash,
		}},
		dnssectest.Zone{Name: "bogus.test", Bogus: true, Records: []string{
			"mx.bogus.test. 300 IN A 127.0.0.3",
			"_25._tcp.mx.bogus.test. 300 IN TLSA 3 1 1 " + bogusHash,
		}},
	)
	t.Logf("Start took %v; Unbound at %s, NSD at %s", time.Since(start).Round(time.Millisecond), srv.Addr(), srv.Authoritative())
	if !strings.HasPrefix(srv.Addr(), "127.0.0.1:") || !strings.HasPrefix(srv.Authoritative(), "127.0.0.1:") {
		t.Fatalf("addresses %s and %s are not on 127.0.0.1", srv.Addr(), srv.Authoritative())
	}
	if ds := srv.DS("example.test"); !strings.HasPrefix(ds, "example.test. DS ") {
		t.Errorf("DS(example.test) = %q", ds)
	}
	if ds := srv.DS("plain.test"); ds != "" {
		t.Errorf("DS(plain.test) = %q, want none", ds)
	}

	for _, netw := range []string{"udp", "tcp"} {
		t.Run("signed/"+netw, func(t *testing.T) {
			r := ask(t, netw, srv.Addr(), "mx.example.test", dns.TypeA)
			a, sig := answerOf(r, dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(a) != 1 || !sig {
				t.Fatalf("A: want NOERROR, AD=1, one A and its RRSIG; got\n%v", r)
			}
			if got := a[0].(*dns.A).A.String(); got != "127.0.0.1" {
				t.Errorf("A = %s", got)
			}
			r = ask(t, netw, srv.Addr(), "_25._tcp.mx.example.test", dns.TypeTLSA)
			tl, sig := answerOf(r, dns.TypeTLSA)
			if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(tl) != 1 || !sig {
				t.Fatalf("TLSA: want NOERROR, AD=1, one TLSA and its RRSIG; got\n%v", r)
			}
			if v := tl[0].(*dns.TLSA); v.Usage != 3 || v.Selector != 1 || v.MatchingType != 1 || v.Certificate != signedHash {
				t.Errorf("TLSA = %v, want 3 1 1 %s", v, signedHash)
			}
		})
		t.Run("unsigned/"+netw, func(t *testing.T) {
			r := ask(t, netw, srv.Addr(), "mx.plain.test", dns.TypeA)
			a, _ := answerOf(r, dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || len(a) != 1 {
				t.Fatalf("A: want NOERROR, AD=0, one A; got\n%v", r)
			}
			r = ask(t, netw, srv.Addr(), "_25._tcp.mx.plain.test", dns.TypeTLSA)
			tl, _ := answerOf(r, dns.TypeTLSA)
			if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || len(tl) != 1 || tl[0].(*dns.TLSA).Certificate != plainHash {
				t.Fatalf("TLSA: want NOERROR, AD=0, the TLSA; got\n%v", r)
			}
		})
		t.Run("bogus/"+netw, func(t *testing.T) {
			for _, q := range []struct {
				name  string
				qtype uint16
			}{{"mx.bogus.test", dns.TypeA}, {"_25._tcp.mx.bogus.test", dns.TypeTLSA}} {
				r := ask(t, netw, srv.Addr(), q.name, q.qtype)
				if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
					t.Errorf("%s %s: want SERVFAIL and no answer; got\n%v", q.name, dns.TypeToString[q.qtype], r)
				}
				// SERVFAIL because the signatures are wrong, not for
				// some other reason.
				want := "validation failure <" + q.name + ". " + dns.TypeToString[q.qtype] + " IN>"
				if log := srv.ResolverLog(); !strings.Contains(log, want) {
					t.Errorf("Unbound's log has no %q:\n%s", want, log)
				}
			}
		})
	}

	if os.Getenv("DNSSECTEST_SHOW_LOG") != "" {
		defer func() { t.Logf("Unbound's log:\n%s", srv.ResolverLog()) }()
	}

	// What the DANE code needs besides answers: authenticated denial.
	t.Run("signed denial", func(t *testing.T) {
		r := ask(t, "udp", srv.Addr(), "_25._tcp.nothere.example.test", dns.TypeTLSA)
		if r.Rcode != dns.RcodeNameError || !r.AuthenticatedData {
			t.Errorf("NXDOMAIN: want NXDOMAIN with AD=1; got\n%v", r)
		}
		r = ask(t, "udp", srv.Addr(), "mx.example.test", dns.TypeTLSA)
		if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(r.Answer) != 0 {
			t.Errorf("NODATA: want NOERROR, AD=1, no answer; got\n%v", r)
		}
	})

	// NSD's own answers: authoritative, with the signatures, never AD=1
	// (even the bogus zone's, which only a validator can tell).
	t.Run("authoritative", func(t *testing.T) {
		for _, name := range []string{"_25._tcp.mx.example.test", "_25._tcp.mx.plain.test", "_25._tcp.mx.bogus.test"} {
			r := ask(t, "udp", srv.Authoritative(), name, dns.TypeTLSA)
			tl, sig := answerOf(r, dns.TypeTLSA)
			wantSig := !strings.HasSuffix(name, "plain.test")
			if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || !r.Authoritative || len(tl) != 1 || sig != wantSig {
				t.Errorf("%s TLSA from NSD: want NOERROR, AA=1, AD=0, one TLSA, RRSIG %v; got\n%v", name, wantSig, r)
			}
		}
	})

	// Nothing outside the test zones is resolved: refused at once, never
	// sent anywhere.
	t.Run("other names", func(t *testing.T) {
		for _, name := range []string{"example.com", "gmail.com", "."} {
			begin := time.Now()
			r := ask(t, "udp", srv.Addr(), name, dns.TypeMX)
			if r.Rcode != dns.RcodeRefused {
				t.Errorf("%s MX: want REFUSED; got\n%v", name, r)
			}
			if d := time.Since(begin); d > time.Second {
				t.Errorf("%s MX took %v", name, d)
			}
		}
	})
}

func TestUpdate(t *testing.T) {
	oldHash, newHash := digest(t), digest(t)
	zone := dnssectest.Zone{Name: "example.test", Signed: true, Records: []string{
		"mx.example.test. 300 IN A 127.0.0.1",
		"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + oldHash,
	}}
	srv := dnssectest.Start(t, zone)
	tlsa := func() (*dns.Msg, []string) {
		r := ask(t, "udp", srv.Addr(), "_25._tcp.mx.example.test", dns.TypeTLSA)
		rrs, _ := answerOf(r, dns.TypeTLSA)
		return r, tlsaDigests(rrs)
	}
	// Cached in Unbound before the change (TTL 300): Update must flush it.
	if r, got := tlsa(); !r.AuthenticatedData || len(got) != 1 || got[0] != oldHash {
		t.Fatalf("before Update: want AD=1 and %s; got\n%v", oldHash, r)
	}
	dsBefore := srv.DS("example.test")

	// A certificate renewal: the new key's TLSA record, then the old one
	// dropped.
	begin := time.Now()
	zone.Records = []string{
		"mx.example.test. 300 IN A 127.0.0.1",
		"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + oldHash,
		"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + newHash,
	}
	srv.Update(t, zone)
	t.Logf("Update took %v", time.Since(begin).Round(time.Millisecond))
	if r, got := tlsa(); !r.AuthenticatedData || len(got) != 2 {
		t.Fatalf("after adding: want AD=1 and two TLSA; got\n%v", r)
	}
	zone.Records = []string{
		"mx.example.test. 300 IN A 127.0.0.1",
		"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + newHash,
	}
	srv.Update(t, zone)
	if r, got := tlsa(); r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(got) != 1 || got[0] != newHash {
		t.Fatalf("after renewal: want NOERROR, AD=1 and only %s; got\n%v", newHash, r)
	}
	if got := srv.DS("example.test"); got != dsBefore {
		t.Errorf("the trust anchor changed: %s, was %s", got, dsBefore)
	}

	// The zone goes bogus, and back.
	zone.Bogus = true
	srv.Update(t, zone)
	if r, _ := tlsa(); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("bogus: want SERVFAIL; got\n%v", r)
	}
	zone.Bogus = false
	srv.Update(t, zone)
	if r, got := tlsa(); !r.AuthenticatedData || len(got) != 1 || got[0] != newHash {
		t.Fatalf("signed again: want AD=1 and %s; got\n%v", newHash, r)
	}

	// Signed to unsigned (Unbound's trust anchors change: it reloads).
	zone.Signed = false
	srv.Update(t, zone)
	if r, got := tlsa(); r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || len(got) != 1 {
		t.Fatalf("unsigned: want NOERROR, AD=0, the TLSA; got\n%v", r)
	}
	zone.Signed = true
	srv.Update(t, zone)
	if r, got := tlsa(); !r.AuthenticatedData || len(got) != 1 {
		t.Fatalf("signed once more: want AD=1; got\n%v", r)
	}
}

// Two rigs at once do not get in each other's way.
func TestTwoServers(t *testing.T) {
	t.Parallel()
	a := dnssectest.Start(t, dnssectest.Zone{Name: "a.test", Signed: true, Records: []string{"mx 300 IN A 127.0.0.1"}})
	b := dnssectest.Start(t, dnssectest.Zone{Name: "a.test", Signed: true, Records: []string{"mx 300 IN A 127.0.0.2"}})
	if a.Addr() == b.Addr() || a.Authoritative() == b.Authoritative() {
		t.Fatalf("shared addresses: %s %s %s %s", a.Addr(), b.Addr(), a.Authoritative(), b.Authoritative())
	}
	if a.DS("a.test") == b.DS("a.test") {
		t.Errorf("both rigs have the same key")
	}
	for srv, want := range map[*dnssectest.Server]string{a: "127.0.0.1", b: "127.0.0.2"} {
		r := ask(t, "udp", srv.Addr(), "mx.a.test", dns.TypeA)
		rrs, _ := answerOf(r, dns.TypeA)
		if !r.AuthenticatedData || len(rrs) != 1 || rrs[0].(*dns.A).A.String() != want {
			t.Errorf("%s: want AD=1 and %s; got\n%v", srv.Addr(), want, r)
		}
	}
}

func TestBadRecords(t *testing.T) {
	// Start fails the test for these; run it in a fake TB to see that.
	for _, recs := range [][]string{
		{"mx.other.test. 300 IN A 127.0.0.1"},
		{"@ 300 IN SOA a. b. 1 2 3 4 5"},
		{"mx 300 IN A not-an-address"},
	} {
		ft := &fakeTB{TB: t}
		func() {
			defer func() { recover() }()
			dnssectest.Start(ft, dnssectest.Zone{Name: "example.test", Records: recs})
		}()
		if !ft.fatal {
			t.Errorf("records %q: Start did not fail", recs)
		}
		ft.cleanup()
	}
}

// fakeTB records Fatal and Skip instead of stopping the test (it panics
// out of Start instead of Goexit), and runs its own cleanups.
type fakeTB struct {
	testing.TB
	fatal    bool
	cleanups []func()
}

type stopped struct{}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatal(args ...any)                 { f.fatal = true; panic(stopped{}) }
func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = true; panic(stopped{}) }
func (f *fakeTB) Skip(args ...any)                  { f.TB.Skip(args...) }
func (f *fakeTB) Cleanup(fn func())                 { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Failed() bool                      { return f.fatal }
func (f *fakeTB) cleanup() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}
