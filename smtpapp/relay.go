package smtpapp

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/caddy-smtp/caddy-smtp/address"
)

// errRelayDenied is the reply to a recipient we may not relay to
// (Postfix's wording and code).
var errRelayDenied = reply(554, 5, 7, 1, "Relay access denied")

// RelayPolicy decides which recipients a server accepts. A recipient is
// accepted when its domain is one of the accepted domains (mail for us,
// from anyone), or the client is in a relay network, or it authenticated.
// The zero value accepts nothing: a server with nothing configured is
// never an open relay.
type RelayPolicy struct {
	domains  map[string]bool
	suffixes []string // ".example.com" for "*.example.com"
	networks []netip.Prefix
}

// NewRelayPolicy parses accept_domains and relay_networks.
func NewRelayPolicy(acceptDomains, relayNetworks []string) (*RelayPolicy, error) {
	p := &RelayPolicy{domains: make(map[string]bool)}
	for _, d := range acceptDomains {
		d = address.NormalizeDomain(strings.TrimSpace(d))
		switch {
		case d == "" || d == "*" || strings.ContainsAny(d, "@ \t[]"):
			return nil, fmt.Errorf("accept_domains: %q is not a domain name", d)
		case strings.HasPrefix(d, "*."):
			p.suffixes = append(p.suffixes, d[1:])
		default:
			p.domains[d] = true
		}
	}
	for _, n := range relayNetworks {
		prefix, err := parseNetwork(n)
		if err != nil {
			return nil, fmt.Errorf("relay_networks: %w", err)
		}
		p.networks = append(p.networks, prefix)
	}
	return p, nil
}

// parseNetwork accepts a CIDR prefix or a single address.
func parseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP network: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or network: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// isLocal reports whether a normalized domain is one we accept mail
// for from anyone.
func (p *RelayPolicy) isLocal(domain string) bool {
	if domain == "" {
		return false
	}
	if p.domains[domain] {
		return true
	}
	for _, s := range p.suffixes {
		if strings.HasSuffix(domain, s) {
			return true
		}
	}
	return false
}

// MayRelay reports whether the client at ip may send anywhere.
func (p *RelayPolicy) MayRelay(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range p.networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// Accepts is the whole relay decision for one recipient.
func (p *RelayPolicy) Accepts(rcpt string, client netip.Addr, authenticated bool) bool {
	return p.isLocal(address.Domain(rcpt)) || p.MayRelay(client) || authenticated
}
