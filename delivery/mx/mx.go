// Package mx is the smtp.delivery.mx module: delivery to the mail
// exchangers of each recipient domain, found in DNS.
package mx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/dane"
	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/sts"
)

func init() {
	caddy.RegisterModule(MX{})
}

// maxHops bounds the addresses tried in one attempt (Postfix's
// smtp_mx_address_limit is 5).
const maxHops = 5

// MX delivers to the MX hosts of each recipient's domain, in preference
// order, falling back to the domain's own A/AAAA records when it has no
// MX (RFC 5321 section 5.1). A null MX (RFC 7505) bounces.
type MX struct {
	// Client TLS policy: level none, may (default), encrypt or verify.
	// Under verify the certificate must be valid for the MX host name
	// (or server_name, if set).
	TLS *delivery.ClientTLS `json:"tls,omitempty"`

	// DNS server to ask, `host:port`. Default: the system resolver.
	Resolver string `json:"resolver,omitempty"`

	// Port to connect to on the MX hosts. Default: 25. Only tests and
	// unusual setups change it.
	Port int `json:"port,omitempty"`

	// MTA-STS (RFC 8461) for the recipient domains, on by default: a
	// domain's policy is fetched over HTTPS, cached in Caddy's storage,
	// and in enforce mode only the MX hosts it names are used, each at
	// least at level verify. In testing mode delivery follows the
	// route's level and what would have failed is logged.
	MTASTS *MTASTS `json:"mta_sts,omitempty"`

	resolver *net.Resolver
	sts      *sts.Cache
	dane     *dane.Resolver // under tls level dane or dane-only
	pool     *delivery.Pool
}

// MTASTS configures MTA-STS of an mx target.
type MTASTS struct {
	// Do not look up MTA-STS policies (Caddyfile `mta_sts off`).
	Disabled bool `json:"disabled,omitempty"`

	// The CAs a policy host's certificate must chain to, from a Caddy CA
	// pool module (`tls.ca_pool.source.*`). Default: the system roots,
	// as RFC 8461 3.3 wants; tests and private setups set one.
	TrustPoolRaw json.RawMessage `json:"trust_pool,omitempty" caddy:"namespace=tls.ca_pool.source inline_key=provider"`

	// port overrides 443 for the fetch, for tests.
	port int
}

// CaddyModule returns the Caddy module information.
func (MX) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.delivery.mx",
		New: func() caddy.Module { return new(MX) },
	}
}

// Provision sets up the resolver and the TLS policy.
func (m *MX) Provision(ctx caddy.Context) error {
	if m.Port == 0 {
		m.Port = 25
	}
	if m.Port < 1 || m.Port > 65535 {
		return fmt.Errorf("mx: port: %d is not a port", m.Port)
	}
	m.resolver = net.DefaultResolver
	if m.Resolver != "" {
		addr := m.Resolver
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "53")
		}
		m.resolver = dane.NetResolver(addr)
	}
	if m.TLS == nil {
		m.TLS = new(delivery.ClientTLS)
	}
	if err := m.TLS.Provision(ctx); err != nil {
		return fmt.Errorf("mx: %w", err)
	}
	if m.TLS.EffectiveLevel().DANE() {
		server, err := dane.ResolverAddr(m.Resolver)
		if err != nil {
			return fmt.Errorf("mx: tls level %s: %w", m.TLS.EffectiveLevel(), err)
		}
		m.dane = &dane.Resolver{Server: server}
		// The MX hosts and addresses used must come from the resolver
		// whose DNSSEC answers are judged, not from the system's list of
		// nameservers, whose second entry a slow first one hands over to.
		m.resolver = dane.NetResolver(server)
	}
	if m.MTASTS == nil || !m.MTASTS.Disabled {
		if m.MTASTS == nil {
			m.MTASTS = new(MTASTS)
		}
		f := &sts.Fetcher{Resolver: m.resolver, Port: m.MTASTS.port}
		if len(m.MTASTS.TrustPoolRaw) > 0 {
			mod, err := ctx.LoadModule(m.MTASTS, "TrustPoolRaw")
			if err != nil {
				return fmt.Errorf("mx: mta_sts.trust_pool: %w", err)
			}
			ca, ok := mod.(caddytls.CA)
			if !ok {
				return fmt.Errorf("mx: mta_sts.trust_pool: module %T is not a CA pool", mod)
			}
			f.Roots = ca.CertPool()
		}
		m.sts = &sts.Cache{Storage: ctx.Storage(), Fetcher: f, Logger: ctx.Logger()}
	}
	m.pool = delivery.NewPool()
	return nil
}

// Cleanup closes the connections kept open to the exchangers.
func (m *MX) Cleanup() error {
	m.pool.Close()
	return nil
}

// Destination groups recipients by domain: one domain, one set of MXs.
func (m *MX) Destination(domain string) string { return "mx:" + domain }

// Deliver looks up the domain's exchangers and tries them in order.
func (m *MX) Deliver(ctx context.Context, job *delivery.Job) []delivery.Result {
	n := len(job.Recipients)
	domain := address.Domain(job.Recipients[0].Address)
	p, fail := m.lookup(ctx, domain)
	if fail != nil {
		return delivery.All(*fail, n)
	}
	var results []delivery.Result
	used := 0
	for _, hop := range p.hops {
		var tryNext bool
		fail, skip, testing := m.prepareHop(ctx, p, &hop)
		switch {
		case skip:
			continue // RFC 8461 4.1: an MX the policy does not name is not used
		case fail != nil:
			results, tryNext = delivery.All(*fail, n), true
		default:
			used++
			results, tryNext = delivery.SendSMTP(ctx, job, hop, m.TLS, nil, m.pool)
			if p.testing(hop) {
				switch {
				case testing != "" || results[0].TLSVerified || results[0].Status == delivery.Bounced:
				case results[0].TLSVersion == "":
					testing = "no TLS session with the MX host"
				default:
					testing = "the certificate was not verified for the MX host"
				}
				for i := range results {
					if results[i].TLSSource == "route" {
						results[i].TLSSource = "mta-sts testing"
					}
					results[i].TLSPolicy += " (mta-sts testing"
					if testing != "" {
						results[i].TLSPolicy += ": would fail: " + testing
					}
					results[i].TLSPolicy += ")"
				}
				if testing != "" {
					job.Logger.Info("mta-sts testing: enforce would have failed",
						zap.String("queue_id", job.Envelope.ID), zap.String("domain", domain),
						zap.String("mx", hop.Host), zap.String("reason", testing), zap.String("policy", p.policyHow))
				}
			}
		}
		if !tryNext || ctx.Err() != nil {
			break
		}
	}
	if used == 0 && results == nil && p.enforce() {
		r := delivery.Temporary("4.7.5", fmt.Sprintf("MTA-STS enforce: none of the MX hosts of %s is in its policy (%s)", domain, p.policyHow))
		r.TLSFailed, r.TLSPolicy = true, "verify mta-sts enforce"
		return delivery.All(r, n)
	}
	return results
}

// plan is what the gateway knows of a domain before it connects: the
// hops to try, whether its MX answer was DNSSEC-validated, and its
// MTA-STS policy.
type plan struct {
	domain    string
	hops      []delivery.Hop
	mxSecure  bool
	policy    *sts.Entry
	policyHow string
}

func (p *plan) enforce() bool { return p.policy != nil && p.policy.Policy.Mode == sts.ModeEnforce }

// testing reports whether a hop is delivered under an MTA-STS policy in
// testing mode (DANE, where usable, takes precedence: RFC 8461 2).
func (p *plan) testing(hop delivery.Hop) bool {
	return p.policy != nil && p.policy.Policy.Mode == sts.ModeTesting && !hop.DANEAuthenticated()
}

// lookup resolves a domain's hops, the DNSSEC status of its MX answer
// (under dane levels) and its MTA-STS policy; a result is a failure for
// every recipient.
func (m *MX) lookup(ctx context.Context, domain string) (*plan, *delivery.Result) {
	p := &plan{domain: domain}
	if m.sts != nil && !strings.HasPrefix(domain, "[") {
		var err error
		if p.policy, p.policyHow, err = m.sts.Lookup(ctx, domain); err != nil {
			r := delivery.Temporary("4.4.3", fmt.Sprintf("MTA-STS: %v", err))
			return nil, &r
		}
	}
	// Under an enforced policy, MX hosts it does not name are left out
	// before the address limit, not after (an old MX with many
	// addresses would crowd out the ones the policy names).
	var keep func(host string) bool
	if p.enforce() {
		keep = p.policy.Policy.MatchesMX
	}
	hops, fail := m.hops(ctx, domain, keep)
	if fail != nil {
		return nil, fail
	}
	p.hops = hops
	if m.dane != nil && m.dane.Trusted() {
		// RFC 7672 2.2.1: DANE for MX hosts needs a validated MX RRset
		// (or a validated denial, for the implicit MX).
		_, secure, _, err := m.dane.MX(ctx, domain)
		if err != nil {
			r := delivery.Temporary("4.4.3", fmt.Sprintf("DANE: MX lookup for %s: %v", domain, err))
			r.TLSPolicy = string(m.TLS.EffectiveLevel()) + " route"
			return nil, &r
		}
		p.mxSecure = secure
	}
	return p, nil
}

// prepareHop applies DANE and MTA-STS to a hop: a failure to defer it
// with, whether an MTA-STS policy in enforce mode excludes it, and, in
// testing mode, why enforce would fail for it.
func (m *MX) prepareHop(ctx context.Context, p *plan, hop *delivery.Hop) (fail *delivery.Result, skip bool, testing string) {
	if fail := m.TLS.PrepareDANE(ctx, m.dane, p.mxSecure, hop, m.Port); fail != nil {
		return fail, false, ""
	}
	if p.policy == nil || hop.DANEAuthenticated() {
		return nil, false, ""
	}
	matched := p.policy.Policy.MatchesMX(hop.Host)
	switch p.policy.Policy.Mode {
	case sts.ModeEnforce:
		if !matched {
			return nil, true, ""
		}
		hop.RaiseToVerify("mta-sts enforce")
	case sts.ModeTesting:
		if !matched {
			testing = "the MX host is not in the policy"
		}
	}
	return nil, false, testing
}

// hops resolves a domain into the addresses to try, best first.
// With keep, only the MX hosts it accepts are used (MTA-STS enforce).
func (m *MX) hops(ctx context.Context, domain string, keep func(host string) bool) ([]delivery.Hop, *delivery.Result) {
	port := strconv.Itoa(m.Port)
	if lit, ok := strings.CutPrefix(domain, "["); ok {
		// An address literal: user@[192.0.2.1] or user@[IPv6:...].
		lit = strings.TrimPrefix(strings.TrimSuffix(lit, "]"), "IPv6:")
		ip, err := netip.ParseAddr(lit)
		if err != nil {
			r := delivery.Permanent("5.1.2", fmt.Sprintf("bad address literal %q", domain))
			return nil, &r
		}
		return []delivery.Hop{{Host: ip.String(), Addr: net.JoinHostPort(ip.String(), port), NextHop: domain}}, nil
	}
	hosts := []string{domain} // implicit MX
	mxs, err := m.resolver.LookupMX(ctx, domain)
	switch {
	case err == nil && len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == ""):
		r := delivery.Permanent("5.1.10", fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", domain))
		return nil, &r
	case err == nil && len(mxs) > 0:
		hosts = hosts[:0]
		for _, mx := range mxs {
			hosts = append(hosts, strings.TrimSuffix(mx.Host, "."))
		}
	case err != nil && !isNotFound(err):
		r := delivery.Temporary("4.4.3", fmt.Sprintf("MX lookup for %s: %v", domain, err))
		return nil, &r
	}
	if keep != nil {
		kept := hosts[:0:0]
		for _, h := range hosts {
			if keep(h) {
				kept = append(kept, h)
			}
		}
		if len(kept) == 0 {
			r := delivery.Temporary("4.7.5", fmt.Sprintf("MTA-STS enforce: no MX host is in the policy of %s (%s)", domain, strings.Join(hosts, " ")))
			r.TLSFailed, r.TLSPolicy, r.TLSSource = true, "verify mta-sts enforce", "mta-sts enforce"
			return nil, &r
		}
		hosts = kept
	}
	var hops []delivery.Hop
	var lastErr error
	for _, h := range hosts {
		ips, err := m.resolver.LookupIPAddr(ctx, h)
		if err != nil {
			lastErr = err
			continue
		}
		for _, ip := range ips {
			hops = append(hops, delivery.Hop{Host: h, Addr: net.JoinHostPort(ip.IP.String(), port), NextHop: domain})
		}
		if len(hops) >= maxHops {
			return hops[:maxHops], nil
		}
	}
	if len(hops) == 0 {
		if lastErr != nil && isNotFound(lastErr) && len(mxs) == 0 {
			r := delivery.Permanent("5.1.2", fmt.Sprintf("host or domain name not found: %s", domain))
			return nil, &r
		}
		r := delivery.Temporary("4.4.3", fmt.Sprintf("no address for the mail exchangers of %s: %v", domain, lastErr))
		return nil, &r
	}
	return hops, nil
}

func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.IsNotFound
}

// UnmarshalCaddyfile parses:
//
//	mx {
//		tls      [<level>] { ... }
//		resolver <host:port>
//		port     <port>
//		mta_sts  off | {
//			trust_pool <module> [<args...>]
//		}
//	}
func (m *MX) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "mx"
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "tls":
			if m.TLS != nil {
				return d.Err("duplicate tls block")
			}
			m.TLS = new(delivery.ClientTLS)
			if err := m.TLS.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		case "resolver":
			if !d.NextArg() {
				return d.ArgErr()
			}
			m.Resolver = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "mta_sts":
			if m.MTASTS != nil {
				return d.Err("duplicate mta_sts")
			}
			m.MTASTS = new(MTASTS)
			if d.NextArg() {
				if d.Val() != "off" {
					return d.Errf("mta_sts: %q is not off (or a block)", d.Val())
				}
				m.MTASTS.Disabled = true
				if d.NextArg() {
					return d.ArgErr()
				}
			}
			for nest := d.Nesting(); d.NextBlock(nest); {
				if d.Val() != "trust_pool" {
					return d.Errf("unknown mta_sts directive %q", d.Val())
				}
				if !d.NextArg() {
					return d.Err("trust_pool needs a CA pool module: file, inline, pki_root...")
				}
				modName := d.Val()
				mod, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+modName)
				if err != nil {
					return err
				}
				m.MTASTS.TrustPoolRaw = caddyconfig.JSONModuleObject(mod, "provider", modName, nil)
			}
		case "port":
			if !d.NextArg() {
				return d.ArgErr()
			}
			p, err := strconv.Atoi(d.Val())
			if err != nil || p < 1 || p > 65535 {
				return d.Errf("port: %q is not a port", d.Val())
			}
			m.Port = p
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unknown mx directive %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*MX)(nil)
	_ caddy.CleanerUpper    = (*MX)(nil)
	_ delivery.Deliverer    = (*MX)(nil)
	_ caddyfile.Unmarshaler = (*MX)(nil)
)
