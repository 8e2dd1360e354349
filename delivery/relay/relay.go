// Package relay is the smtp.delivery.relay module: delivery through one
// or more smarthosts, tried in order.
package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/dane"
	"github.com/caddy-smtp/caddy-smtp/delivery"
)

func init() {
	caddy.RegisterModule(Relay{})
}

// Relay delivers every recipient of its route to a smarthost. Hosts are
// tried in order; the next one is tried only when a host cannot be
// reached or fails TLS, never after it answered a transaction.
type Relay struct {
	// Smarthosts, `host` or `host:port` (default port 25), in order.
	Addresses []string `json:"addresses,omitempty"`

	// Client TLS policy for the hops: level none, may (default),
	// encrypt or verify; server_name; trust_pool; protocols.
	TLS *delivery.ClientTLS `json:"tls,omitempty"`

	// Username for AUTH PLAIN. Credentials are only ever sent inside
	// TLS: without it the delivery is deferred.
	Username string `json:"username,omitempty"`

	// Password for AUTH PLAIN. Placeholders like {env.RELAY_PASSWORD}
	// are replaced at provisioning.
	Password string `json:"password,omitempty"`

	// DNS server, `host:port`, for tls levels dane and dane-only: the
	// smarthosts' address and TLSA records are looked up there, and its
	// DNSSEC answers are believed only on a loopback address. Default:
	// the first nameserver of /etc/resolv.conf.
	Resolver string `json:"resolver,omitempty"`

	hops  []delivery.Hop
	dane  *dane.Resolver
	net   *net.Resolver
	creds *delivery.Credentials
	pool  *delivery.Pool
}

// CaddyModule returns the Caddy module information.
func (Relay) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.delivery.relay",
		New: func() caddy.Module { return new(Relay) },
	}
}

// Provision parses the addresses and the TLS policy.
func (r *Relay) Provision(ctx caddy.Context) error {
	if len(r.Addresses) == 0 {
		return fmt.Errorf("relay: addresses: at least one smarthost is required")
	}
	for _, a := range r.Addresses {
		hop, err := ParseHop(a, 25)
		if err != nil {
			return fmt.Errorf("relay: addresses: %w", err)
		}
		r.hops = append(r.hops, hop)
	}
	if r.TLS == nil {
		r.TLS = new(delivery.ClientTLS)
	}
	if err := r.TLS.Provision(ctx); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if r.TLS.EffectiveLevel().DANE() {
		server, err := dane.ResolverAddr(r.Resolver)
		if err != nil {
			return fmt.Errorf("relay: tls level %s: %w", r.TLS.EffectiveLevel(), err)
		}
		r.dane, r.net = &dane.Resolver{Server: server}, dane.NetResolver(server)
	} else if r.Resolver != "" {
		return fmt.Errorf("relay: resolver is for tls levels dane and dane-only")
	}
	r.pool = delivery.NewPool()
	if r.Username != "" || r.Password != "" {
		repl := caddy.NewReplacer()
		r.creds = &delivery.Credentials{Username: repl.ReplaceAll(r.Username, ""), Password: repl.ReplaceAll(r.Password, "")}
		if r.TLS.EffectiveLevel() == delivery.LevelNone {
			return fmt.Errorf("relay: username/password need TLS, but tls level is none")
		}
	}
	return nil
}

// ParseHop parses `host` or `host:port`.
func ParseHop(a string, defaultPort int) (delivery.Hop, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		host, port = a, strconv.Itoa(defaultPort)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return delivery.Hop{}, fmt.Errorf("%q: bad port", a)
	}
	if host == "" {
		return delivery.Hop{}, fmt.Errorf("%q: no host", a)
	}
	return delivery.Hop{Host: host, Addr: net.JoinHostPort(host, port), NextHop: host}, nil
}

// Destination is the same for every domain: one transaction carries
// all recipients of the route.
func (r *Relay) Destination(string) string { return "relay:" + r.hops[0].Addr }

// Cleanup closes the connections kept open to the smarthosts.
func (r *Relay) Cleanup() error {
	r.pool.Close()
	return nil
}

// Deliver tries the smarthosts in order.
func (r *Relay) Deliver(ctx context.Context, job *delivery.Job) []delivery.Result {
	var results []delivery.Result
	for _, hop := range r.hops {
		var tryNext bool
		results, tryNext = r.deliverHop(ctx, job, hop)
		if !tryNext || ctx.Err() != nil {
			break
		}
	}
	return results
}

// deliverHop sends through one smarthost. Under the dane levels its
// name is resolved through the DANE resolver, each address tried in
// turn, and its TLSA records decide (RFC 7672: the configured name is
// the TLSA base domain; no MX is involved, so mxSecure is true).
func (r *Relay) deliverHop(ctx context.Context, job *delivery.Job, hop delivery.Hop) ([]delivery.Result, bool) {
	if r.dane == nil {
		return delivery.SendSMTP(ctx, job, hop, r.TLS, r.creds, r.pool)
	}
	n := len(job.Recipients)
	host, portStr, _ := net.SplitHostPort(hop.Addr)
	port, _ := strconv.Atoi(portStr)
	if fail := r.TLS.PrepareDANE(ctx, r.dane, true, &hop, port); fail != nil {
		return delivery.All(*fail, n), true
	}
	addrs := []string{host}
	if _, err := netip.ParseAddr(host); err != nil {
		ips, err := r.net.LookupIPAddr(ctx, host)
		if err != nil || len(ips) == 0 {
			res := delivery.Temporary("4.4.3", fmt.Sprintf("address lookup for smarthost %s: %v", host, err))
			return delivery.All(res, n), true
		}
		addrs = addrs[:0]
		for _, ip := range ips {
			addrs = append(addrs, ip.IP.String())
		}
	}
	var results []delivery.Result
	tryNext := true
	for _, a := range addrs {
		h := hop
		h.Addr = net.JoinHostPort(a, portStr)
		results, tryNext = delivery.SendSMTP(ctx, job, h, r.TLS, r.creds, r.pool)
		if !tryNext || ctx.Err() != nil {
			break
		}
	}
	return results, tryNext
}

// UnmarshalCaddyfile parses:
//
//	relay <host[:port]...> {
//		tls      [<level>] { ... }
//		auth     <username> <password>
//		resolver <host:port>           # for tls dane, dane-only
//	}
func (r *Relay) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "relay"
	r.Addresses = append(r.Addresses, d.RemainingArgs()...)
	if len(r.Addresses) == 0 {
		return d.Err("relay needs at least one smarthost address")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "tls":
			if r.TLS != nil {
				return d.Err("duplicate tls block")
			}
			r.TLS = new(delivery.ClientTLS)
			if err := r.TLS.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		case "auth":
			if !d.AllArgs(&r.Username, &r.Password) {
				return d.Err("auth needs two arguments: <username> <password>")
			}
		case "resolver":
			if !d.AllArgs(&r.Resolver) {
				return d.Err("resolver needs one argument: <host:port>")
			}
		default:
			return d.Errf("unknown relay directive %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Relay)(nil)
	_ caddy.CleanerUpper    = (*Relay)(nil)
	_ delivery.Deliverer    = (*Relay)(nil)
	_ caddyfile.Unmarshaler = (*Relay)(nil)
)
