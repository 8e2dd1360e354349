package smtpapp

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery"
)

// errNoRoute is the reply at RCPT to a recipient that no route of the
// server matches: refused at once, never accepted and then bounced.
var errNoRoute = reply(550, 5, 1, 2, "No route to the recipient's domain")

// Route sends the mail for some recipient domains to a delivery target.
// A server's routes are tried in order and the first whose domains
// match the recipient's domain wins.
type Route struct {
	// Recipient domains: exact names, `*.example.com` for subdomains, or
	// `*` for every domain.
	Domains []string `json:"domains,omitempty"`

	// The delivery target: a module in the namespace `smtp.delivery`,
	// named by `via`: `relay` (smarthosts), `mx` (MX lookup) or
	// `maildir` (local folders).
	DeliverRaw json.RawMessage `json:"deliver,omitempty" caddy:"namespace=smtp.delivery inline_key=via"`

	deliverer delivery.Deliverer
	via       string // the target's module name, for metrics
}

// provision loads the route's target.
func (r *Route) provision(ctx caddy.Context, field string) error {
	if len(r.Domains) == 0 {
		return fmt.Errorf("%s.domains: at least one domain (or *) is required", field)
	}
	for i, d := range r.Domains {
		d = address.NormalizeDomain(d)
		if d == "" || strings.ContainsAny(d, "@ \t") || (strings.Contains(d, "*") && d != "*" && !strings.HasPrefix(d, "*.")) {
			return fmt.Errorf("%s.domains: %q is not a domain, *.domain or *", field, r.Domains[i])
		}
		r.Domains[i] = d
	}
	if len(r.DeliverRaw) == 0 {
		return fmt.Errorf("%s.deliver: a delivery target is required", field)
	}
	mod, err := ctx.LoadModule(r, "DeliverRaw")
	if err != nil {
		return fmt.Errorf("%s.deliver: %w", field, err)
	}
	d, ok := mod.(delivery.Deliverer)
	if !ok {
		return fmt.Errorf("%s.deliver: module %T is not a delivery target", field, mod)
	}
	r.deliverer = d
	if m, ok := mod.(caddy.Module); ok {
		r.via = m.CaddyModule().ID.Name()
	}
	return nil
}

// matches reports whether the route handles a recipient domain.
func (r *Route) matches(domain string) bool {
	for _, d := range r.Domains {
		switch {
		case d == "*":
			return true
		case strings.HasPrefix(d, "*."):
			if strings.HasSuffix(domain, d[1:]) {
				return true
			}
		case d == domain:
			return true
		}
	}
	return false
}

// routeFor returns the index of the first route for the recipient, or -1.
func (s *Server) routeFor(rcpt string) int {
	domain := address.Domain(rcpt)
	for i, r := range s.Routes {
		if r.matches(domain) {
			return i
		}
	}
	return -1
}

// UnmarshalCaddyfile parses a route (its keyword already read):
//
//	route <domains...> {
//		<via> [<args...>] {
//			...
//		}
//	}
//
// where <via> is a delivery target module: relay, mx, maildir.
func (r *Route) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	r.Domains = d.RemainingArgs()
	if len(r.Domains) == 0 {
		return d.Err("route needs one or more recipient domains, or *")
	}
	routeLine := d.Line()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if r.DeliverRaw != nil {
			return d.Errf("route has more than one delivery target (%s)", d.Val())
		}
		via := d.Val()
		mod, err := caddyfile.UnmarshalModule(d, "smtp.delivery."+via)
		if err != nil {
			return err
		}
		r.DeliverRaw = caddyconfig.JSONModuleObject(mod, "via", via, nil)
	}
	if r.DeliverRaw == nil {
		return d.Errf("route (line %d) needs a delivery target: relay, mx or maildir", routeLine)
	}
	return nil
}
