package senderauth

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Config is a server's inbound sender authentication
// (servers.<name>.sender_auth): which methods run, and what their
// outcomes do.
type Config struct {
	// Check SPF (RFC 7208) for the MAIL FROM and HELO identities.
	SPF *SPFConfig `json:"spf,omitempty"`

	// Verify DKIM signatures (RFC 6376; RSA, and Ed25519 per RFC 8463).
	DKIM bool `json:"dkim,omitempty"`

	// DMARC (RFC 7489): `enforce` (p=reject refuses with 550 5.7.1,
	// p=quarantine quarantines) or `report_only` (the result goes in
	// the Authentication-Results header only). Needs spf and dkim.
	DMARC string `json:"dmarc,omitempty"`

	// What DNS trouble (a temperror) means: `tempfail` (default: 451
	// 4.7.x, the sender tries again later) or `accept` (the result is
	// noted in the Authentication-Results header and the message goes
	// on).
	OnTemperror string `json:"on_temperror,omitempty"`

	// The DNS server to ask, `host:port`. Default: the system's
	// resolver.
	Resolver string `json:"resolver,omitempty"`

	// How long all of one message's DNS lookups may take. Default: 20s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// SPFConfig configures the SPF check.
type SPFConfig struct {
	// What an SPF `fail` alone (no DMARC policy deciding) gets:
	// `record` (default: noted in the Authentication-Results header) or
	// `reject` (550 5.7.23, RFC 7372).
	Fail string `json:"fail,omitempty"`
}

// DMARC modes.
const (
	DMARCEnforce    = "enforce"
	DMARCReportOnly = "report_only"
)

// UnmarshalCaddyfile parses the block of a server's `sender_auth`
// directive (the directive already read):
//
//	sender_auth {
//		spf [{ fail record|reject }]
//		dkim
//		dmarc enforce|report_only
//		on_temperror tempfail|accept
//		resolver <host:port>
//		timeout <duration>
//	}
func (c *Config) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "spf":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.SPF = new(SPFConfig)
			for n := d.Nesting(); d.NextBlock(n); {
				if d.Val() != "fail" {
					return d.Errf("unknown spf directive %q", d.Val())
				}
				if !d.AllArgs(&c.SPF.Fail) {
					return d.ArgErr()
				}
			}
		case "dkim":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.DKIM = true
		case "dmarc":
			if !d.AllArgs(&c.DMARC) {
				return d.ArgErr()
			}
		case "on_temperror":
			if !d.AllArgs(&c.OnTemperror) {
				return d.ArgErr()
			}
		case "resolver":
			if !d.AllArgs(&c.Resolver) {
				return d.ArgErr()
			}
		case "timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("timeout: %v", err)
			}
			c.Timeout = caddy.Duration(dur)
		default:
			return d.Errf("unknown sender_auth directive %q (want spf, dkim, dmarc, on_temperror, resolver, timeout)", d.Val())
		}
	}
	return nil
}

func oneOf(v string, choices ...string) bool {
	for _, c := range choices {
		if strings.EqualFold(v, c) {
			return true
		}
	}
	return false
}
