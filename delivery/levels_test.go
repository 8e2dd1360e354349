package delivery_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// levelPolicy provisions a client TLS policy that trusts ca.
func levelPolicy(t *testing.T, ca *st.CA, level string, match, fingerprints []string) *delivery.ClientTLS {
	t.Helper()
	p := &delivery.ClientTLS{Level: level, Match: match, Fingerprints: fingerprints}
	if ca != nil {
		p.TrustPoolRaw, _ = json.Marshal(map[string]any{"provider": "file", "pem_files": []string{ca.PEMFile}})
	}
	if err := p.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSecureAndMatch: level secure matches the next-hop domain and its
// subdomains by default, not the MX host name (which a forged MX answer
// chooses); verify matches the host name, or what match lists.
func TestSecureAndMatch(t *testing.T) {
	ca := st.NewCA(t, "Levels CA")
	upstream := func(names ...string) string {
		return st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, names[0], names...))}).Addr
	}
	// The MX host name (from DNS) is mx.attacker.test; the recipient
	// domain is example.test.
	for _, tc := range []struct {
		name    string
		level   string
		match   []string
		certFor []string
		sent    bool
		matched string
	}{
		{"secure/nexthop", "secure", nil, []string{"example.test"}, true, "example.test"},
		{"secure/dot-nexthop", "secure", nil, []string{"mx1.example.test"}, true, "mx1.example.test"},
		{"secure/wildcard", "secure", nil, []string{"*.example.test"}, true, "*.example.test"},
		{"secure/mx-name-only", "secure", nil, []string{"mx.attacker.test"}, false, ""},
		{"secure/lookalike", "secure", nil, []string{"mx.notexample.test"}, false, ""},
		{"verify/hostname", "verify", nil, []string{"mx.attacker.test"}, true, "mx.attacker.test"},
		{"verify/hostname-not-domain", "verify", nil, []string{"example.test"}, false, ""},
		{"verify/match-literal", "verify", []string{"relay.example.test"}, []string{"relay.example.test"}, true, "relay.example.test"},
		{"verify/match-dot-nexthop", "verify", []string{"dot-nexthop"}, []string{"a.b.example.test"}, true, "a.b.example.test"},
		{"secure/match-hostname", "secure", []string{"hostname"}, []string{"mx.attacker.test"}, true, "mx.attacker.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := upstream(tc.certFor...)
			policy := levelPolicy(t, ca, tc.level, tc.match, nil)
			res, _ := delivery.SendSMTP(context.Background(), poolJob(tc.name, false),
				delivery.Hop{Host: "mx.attacker.test", Addr: addr, NextHop: "example.test"}, policy, nil, nil)
			r := res[0]
			if r.TLSPolicy != tc.level+" route" {
				t.Errorf("tls policy %q", r.TLSPolicy)
			}
			if !tc.sent {
				if r.Status != delivery.Deferred || !strings.Contains(r.Reply, "certificate not verified") || !r.TLSFailed {
					t.Fatalf("want deferred for the name: %+v", r)
				}
				return
			}
			if r.Status != delivery.Sent || !r.TLSVerified || r.TLSMatch != tc.matched || r.TLSOutcome() != delivery.TLSVerified {
				t.Fatalf("want sent, verified, matched %q: %+v", tc.matched, r)
			}
		})
	}
}

// TestFingerprint: level fingerprint needs TLS and a certificate whose
// SHA-256, or its public key's, is listed, in openssl's form or plain
// hex; there is no CA or name check. Anything else defers.
func TestFingerprint(t *testing.T) {
	other := st.NewCA(t, "Unknown CA") // trusted by nobody
	cert := other.Issue(t, "smarthost.test", "smarthost.test")
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	addr := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(cert)}).Addr
	certFP := sha256.Sum256(leaf.Raw)
	spkiFP := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	openssl := func(b [32]byte) string {
		var parts []string
		for _, c := range b {
			parts = append(parts, fmt.Sprintf("%02X", c))
		}
		return strings.Join(parts, ":")
	}
	wrong := sha256.Sum256([]byte("another certificate"))
	for _, tc := range []struct {
		name string
		fps  []string
		sent bool
	}{
		{"certificate/openssl-form", []string{openssl(certFP)}, true},
		{"spki/lower-hex", []string{fmt.Sprintf("%x", spkiFP)}, true},
		{"one-of-two", []string{fmt.Sprintf("%x", wrong), openssl(spkiFP)}, true},
		{"wrong", []string{fmt.Sprintf("%x", wrong)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policy := levelPolicy(t, nil, "fingerprint", nil, tc.fps)
			res, _ := delivery.SendSMTP(context.Background(), poolJob(tc.name, false),
				delivery.Hop{Host: "10.0.0.1", Addr: addr, NextHop: "10.0.0.1"}, policy, nil, nil)
			r := res[0]
			if !tc.sent {
				if r.Status != delivery.Deferred || !strings.Contains(r.Reply, "no fingerprint matches") {
					t.Fatalf("want deferred: %+v", r)
				}
				return
			}
			if r.Status != delivery.Sent || !r.TLSVerified || !strings.HasPrefix(r.TLSMatch, "fingerprint ") {
				t.Fatalf("want sent and verified: %+v", r)
			}
		})
	}
	// No STARTTLS at all: deferred, as under encrypt.
	plain := st.NewUpstream(t, st.UpstreamOpts{}).Addr
	policy := levelPolicy(t, nil, "fingerprint", nil, []string{openssl(certFP)})
	res, _ := delivery.SendSMTP(context.Background(), poolJob("plain", false),
		delivery.Hop{Host: "smarthost.test", Addr: plain}, policy, nil, nil)
	if res[0].Status != delivery.Deferred || !strings.Contains(res[0].Reply, "TLS is required") {
		t.Fatalf("fingerprint without STARTTLS: %+v", res[0])
	}
}

// TestRequireTLSLevels: REQUIRETLS raises may to verify (and says so),
// and leaves levels that authenticate the next hop as they are.
func TestRequireTLSLevels(t *testing.T) {
	ca := st.NewCA(t, "REQUIRETLS CA")
	addr := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "example.test", "example.test"))}).Addr
	hop := delivery.Hop{Host: "mx.example.test", Addr: addr, NextHop: "example.test"}
	res, _ := delivery.SendSMTP(context.Background(), poolJob("rt-may", true), hop, levelPolicy(t, ca, "may", nil, nil), nil, nil)
	if res[0].TLSPolicy != "verify requiretls" || res[0].Status != delivery.Deferred {
		t.Fatalf("may with REQUIRETLS (cert for the domain, not the MX name): %+v", res[0])
	}
	// Under secure the session is verified, and the transaction goes as
	// far as MAIL (this next hop does not offer REQUIRETLS: 5.7.30).
	res, _ = delivery.SendSMTP(context.Background(), poolJob("rt-secure", true), hop, levelPolicy(t, ca, "secure", nil, nil), nil, nil)
	if res[0].TLSPolicy != "secure route" || !res[0].TLSVerified || res[0].Code != "5.7.30" {
		t.Fatalf("secure with REQUIRETLS: %+v", res[0])
	}
}

// TestSecurePoolPerNexthop: a session verified under secure for one
// next-hop domain is not reused for another domain on the same host.
func TestSecurePoolPerNexthop(t *testing.T) {
	ca := st.NewCA(t, "Pool CA")
	addr := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "mx.a.test", "mx.a.test"))}).Addr
	pool := delivery.NewPool()
	defer pool.Close()
	policy := levelPolicy(t, ca, "secure", nil, nil)
	res, _ := delivery.SendSMTP(context.Background(), poolJob("a", false), delivery.Hop{Host: "mx.shared.test", Addr: addr, NextHop: "a.test"}, policy, nil, pool)
	if res[0].Status != delivery.Sent {
		t.Fatalf("a.test: %+v", res[0])
	}
	res, _ = delivery.SendSMTP(context.Background(), poolJob("b", false), delivery.Hop{Host: "mx.shared.test", Addr: addr, NextHop: "b.test"}, policy, nil, pool)
	if res[0].Status != delivery.Deferred || res[0].ConnUse > 1 {
		t.Fatalf("b.test rode a.test's verified session: %+v", res[0])
	}
}

// TestLevelConfigErrors: what the new directives refuse.
func TestLevelConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		p    delivery.ClientTLS
		want string
	}{
		{delivery.ClientTLS{Level: "fingerprint"}, "needs at least one"},
		{delivery.ClientTLS{Level: "encrypt", Fingerprints: []string{strings.Repeat("ab", 32)}}, "only for level fingerprint"},
		{delivery.ClientTLS{Level: "fingerprint", Fingerprints: []string{"abcd"}}, "64 hex digits"},
		{delivery.ClientTLS{Level: "fingerprint", Fingerprints: []string{strings.Repeat("zz", 32)}}, "not a SHA-256 fingerprint"},
		{delivery.ClientTLS{Level: "may", Match: []string{"nexthop"}}, "only for level verify or secure"},
		{delivery.ClientTLS{Level: "verify", Match: []string{"a b"}}, "is not hostname, nexthop"},
		{delivery.ClientTLS{Level: "dane-ish"}, "is not one of none, may, encrypt, verify, secure, fingerprint"},
	} {
		err := tc.p.Provision(st.CaddyContext(t))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.p, err, tc.want)
		}
	}
}

// TestPolicyFloorChecksMXHost: a level raised to verify by a policy
// (MTA-STS enforce) checks the MX host name, not the route's
// server_name (RFC 8461 4.2).
func TestPolicyFloorChecksMXHost(t *testing.T) {
	ca := st.NewCA(t, "Floor CA")
	addr := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "mx.example.test", "mx.example.test"))}).Addr
	p := &delivery.ClientTLS{Level: "may", ServerName: "relay.elsewhere.test"}
	p.TrustPoolRaw, _ = json.Marshal(map[string]any{"provider": "file", "pem_files": []string{ca.PEMFile}})
	if err := p.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	hop := delivery.Hop{Host: "mx.example.test", Addr: addr, NextHop: "example.test"}
	hop.RaiseToVerify("mta-sts enforce")
	res, _ := delivery.SendSMTP(context.Background(), poolJob("floor", false), hop, p, nil, nil)
	if res[0].Status != delivery.Sent || res[0].TLSPolicy != "verify mta-sts enforce" || res[0].TLSMatch != "mx.example.test" {
		t.Fatalf("%+v", res[0])
	}
}
