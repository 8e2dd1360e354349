package dkimsign

import (
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile parses a server's `dkim` directive, d on its
// token:
//
//	dkim [<domains...>] {
//		domains    <domains...>
//		selector   <selector>
//		algorithms ed25519|rsa2048...
//	}
//
// Domains may be given on the directive's line, in the block, or both.
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	c.Domains = append(c.Domains, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "domains":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			c.Domains = append(c.Domains, args...)
		case "selector":
			if c.Selector != "" {
				return d.Err("duplicate selector")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			c.Selector = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := checkSelector(strings.ToLower(c.Selector)); err != nil {
				return d.Errf("selector: %v", err)
			}
		case "algorithms":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if a != Ed25519 && a != RSA2048 {
					return d.Errf("algorithms: %q is not one of ed25519, rsa2048", a)
				}
				if slices.Contains(c.Algorithms, a) {
					return d.Errf("algorithms: %s twice", a)
				}
				c.Algorithms = append(c.Algorithms, a)
			}
		default:
			return d.Errf("unknown dkim directive %q", d.Val())
		}
	}
	if len(c.Domains) == 0 {
		return d.Err("dkim needs the domains to sign for")
	}
	return nil
}
