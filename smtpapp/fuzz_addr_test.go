package smtpapp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/metrics"
)

// fuzzRelayPolicy accepts mail for example.com from anyone and relays
// for 10.0.0.0/8.
func fuzzRelayPolicy(tb testing.TB) *RelayPolicy {
	p, err := NewRelayPolicy([]string{"example.com"}, []string{"10.0.0.0/8"})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// fuzzRcptServer is the part of a Server that session.Rcpt uses: the
// policy, one route for every domain, and somewhere to count rejections.
func fuzzRcptServer(tb testing.TB) *Server {
	return &Server{
		name:   "fuzz",
		level:  LevelMay,
		relay:  fuzzRelayPolicy(tb),
		logger: zap.NewNop(),
		Routes: []*Route{{Domains: []string{"*"}}},
		app: &App{metrics: &metrics.Metrics{Messages: prometheus.NewCounterVec(
			prometheus.CounterOpts{Name: "fuzz_messages_total"}, []string{"server", "result", "reason"})}},
	}
}

// FuzzRelay feeds recipient addresses to the relay and routing code
// and asserts that RelayPolicy.Accepts and Route.matches never panic, and that relay control holds: with a policy that accepts
// example.com and relays for 10.0.0.0/8,
//
//   - for a client outside 10.0.0.0/8 (IPv4, IPv6, IPv4-mapped, loopback)
//     without authentication, Accepts is true exactly when
//     address.Domain(addr) is "example.com" (it lower-cases and trims one
//     trailing dot): no hostile form gets past it;
//   - a client inside 10.0.0.0/8 (also IPv4-mapped), or an authenticated
//     one, is accepted for any address;
//   - routes: "*" matches every domain, "example.com" exactly the
//     domain "example.com", "*.example.com" exactly the domains ending
//     in ".example.com";
//   - the session does the same: session.Rcpt from an outside client
//     (after MAIL FROM with SMTPUTF8) returns nil exactly when address.Domain
//     is "example.com", and 554 5.7.1 otherwise; without SMTPUTF8 a
//     non-ASCII address gets 553 5.6.7 first.
//
// FuzzSession checks the same relay invariant on addresses as go-smtp's
// parser hands them over from real RCPT TO lines.
func FuzzRelay(f *testing.F) {
	for _, s := range st.HostileAddresses {
		f.Add(s)
	}
	policy := fuzzRelayPolicy(f)
	srv := fuzzRcptServer(f)
	outside := []netip.Addr{
		netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("11.0.0.1"),
		netip.MustParseAddr("9.255.255.255"),
		netip.MustParseAddr("::1"),
		netip.MustParseAddr("::ffff:127.0.0.1"),
		netip.MustParseAddr("::a00:1"), // 10.0.0.1 as IPv4-compatible IPv6: not 10.0.0.0/8
		netip.MustParseAddr("2001:db8::a00:1"),
	}
	inside := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"),
		netip.MustParseAddr("10.255.255.255"),
		netip.MustParseAddr("::ffff:10.1.2.3"),
	}
	routeAll := &Route{Domains: []string{"*"}}
	routeExact := &Route{Domains: []string{"example.com"}}
	routeSub := &Route{Domains: []string{"*.example.com"}}

	f.Fuzz(func(t *testing.T, addr string) {
		dom := address.Domain(addr)
		local := dom == "example.com"
		for _, ip := range outside {
			if got := policy.Accepts(addr, ip, false); got != local {
				t.Fatalf("Accepts(%q, %s, unauthenticated) = %v; address.Domain = %q", addr, ip, got, dom)
			}
		}
		for _, ip := range inside {
			if !policy.Accepts(addr, ip, false) {
				t.Fatalf("Accepts(%q, %s) = false for a client in relay_networks", addr, ip)
			}
		}
		if !policy.Accepts(addr, outside[0], true) {
			t.Fatalf("Accepts(%q, authenticated) = false", addr)
		}

		if !routeAll.matches(dom) {
			t.Fatalf("route * does not match %q", dom)
		}
		if got := routeExact.matches(dom); got != local {
			t.Fatalf("route example.com matches(%q) = %v", dom, got)
		}
		if got, want := routeSub.matches(dom), strings.HasSuffix(dom, ".example.com"); got != want {
			t.Fatalf("route *.example.com matches(%q) = %v", dom, got)
		}

		for _, utf8 := range []bool{true, false} {
			ss := &session{
				srv:      srv,
				conn:     &conn{remote: netip.AddrPortFrom(outside[1], 25000)},
				hasFrom:  true,
				from:     "a@remote.test",
				mailOpts: smtp.MailOptions{UTF8: utf8},
			}
			err := ss.Rcpt(addr, nil)
			// The relay invariant: from a client outside relay_networks,
			// without AUTH, a recipient is accepted only if its domain is
			// example.com, its address has the syntax we can send on,
			// and its local part asks for no routing (% or !). Anything
			// refused is refused with one of the documented replies.
			syntaxOK := addressProblem(addr, utf8, false) == nil
			switch {
			case err == nil:
				if !local || !syntaxOK || address.SenderRouted(addr) {
					t.Fatalf("Rcpt(%q) from %s accepted; address.Domain = %q, syntax ok %v", addr, outside[1], dom, syntaxOK)
				}
			case local && syntaxOK && !address.SenderRouted(addr):
				t.Fatalf("Rcpt(%q) = %v, want accepted", addr, err)
			case err != errRelayDenied && err != errBadRcptSyntax && err != errNeedsSMTPUTF8 && err != errNotUTF8:
				t.Fatalf("Rcpt(%q) = %v, not one of the documented refusals", addr, err)
			}
		}
	})
}
