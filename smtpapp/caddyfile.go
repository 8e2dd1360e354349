package smtpapp

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/dkimsign"
	"github.com/caddy-smtp/caddy-smtp/senderauth"
)

// UnmarshalCaddyfile sets up the app from the body of the `smtp` global
// option. Every directive maps one to one onto a JSON field:
//
//	smtp {
//		queue {
//			path    <dir>
//			max_age <duration>
//		}
//		server <name> {
//			...   see Server.UnmarshalCaddyfile
//		}
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "queue":
			if a.Queue != nil {
				return d.Err("duplicate queue block")
			}
			a.Queue = new(QueueConfig)
			if err := a.Queue.UnmarshalCaddyfile(d); err != nil {
				return err
			}
		case "server":
			var name string
			if !d.Args(&name) {
				return d.Err("server needs a name: server <name> { ... }")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.Servers == nil {
				a.Servers = make(map[string]*Server)
			}
			if _, dup := a.Servers[name]; dup {
				return d.Errf("duplicate server %q", name)
			}
			s := new(Server)
			if err := s.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			a.Servers[name] = s
		default:
			return d.Errf("unknown smtp directive %q (want queue or server)", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile parses a queue block:
//
//	queue {
//		path                <dir>
//		max_age             <duration>
//		min_retry_interval  <duration>
//		max_retry_interval  <duration>
//		workers             <n>
//		max_per_destination <n>
//		stop_grace          <duration>
//		quarantine_max_age  <duration>
//		hold
//	}
func (q *QueueConfig) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "path":
			if err := oneArg(d, &q.Path); err != nil {
				return err
			}
		case "max_age":
			if err := durationArg(d, &q.MaxAge); err != nil {
				return err
			}
		case "min_retry_interval":
			if err := durationArg(d, &q.MinRetryInterval); err != nil {
				return err
			}
		case "max_retry_interval":
			if err := durationArg(d, &q.MaxRetryInterval); err != nil {
				return err
			}
		case "workers":
			if err := intArg(d, &q.Workers); err != nil {
				return err
			}
		case "max_per_destination":
			if err := intArg(d, &q.MaxPerDestination); err != nil {
				return err
			}
		case "stop_grace":
			if err := durationArg(d, &q.StopGrace); err != nil {
				return err
			}
		case "quarantine_max_age":
			if err := durationArg(d, &q.QuarantineMaxAge); err != nil {
				return err
			}
		case "hold":
			if d.NextArg() {
				return d.ArgErr()
			}
			q.Hold = true
		default:
			return d.Errf("unknown queue directive %q", d.Val())
		}
	}
	return nil
}

// UnmarshalCaddyfile parses a server block (its name already read):
//
//	server <name> {
//		listen           <addresses...>
//		hostname         <name>
//		tls              [none|may|encrypt] { see ServerTLS.UnmarshalCaddyfile }
//		accept_domains   <domains...>
//		relay_networks   <cidrs...>
//		max_message_size <size>        # 25MiB, 10MB, 1048576
//		max_recipients   <n>
//		max_connections  <n>
//		max_connections_per_ip <n>
//		limit_relay_networks
//		max_junk_commands <n>
//		max_line_length  <n>
//		read_timeout     <duration>
//		write_timeout    <duration>
//		data_timeout     <duration>
//		bare_newlines    reject|normalize
//		requiretls
//		check <module> <args...> { ... }  # smtp.checks.<module>, in order
//		skip_relay_networks
//		route <domains...> {
//			<relay|mx|maildir> ...
//		}
//	}
func (s *Server) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "listen":
			err = argsAppend(d, &s.Listen)
		case "hostname":
			err = oneArg(d, &s.Hostname)
		case "tls":
			if s.TLS != nil {
				return d.Err("duplicate tls block")
			}
			s.TLS = new(ServerTLS)
			err = s.TLS.UnmarshalCaddyfile(d)
		case "accept_domains":
			err = argsAppend(d, &s.AcceptDomains)
		case "relay_networks":
			err = argsAppend(d, &s.RelayNetworks)
		case "max_message_size":
			var v string
			if err = oneArg(d, &v); err == nil {
				if s.MaxMessageSize, err = ParseSize(v); err != nil {
					err = d.Errf("max_message_size: %v (want a size like 25MiB)", err)
				} else if s.MaxMessageSize <= 0 {
					err = d.Errf("max_message_size: %q must be above zero", v)
				}
			}
		case "max_recipients":
			err = intArg(d, &s.MaxRecipients)
		case "max_connections":
			err = intArg(d, &s.MaxConnections)
		case "max_connections_per_ip":
			err = intArg(d, &s.MaxConnectionsPerIP)
		case "limit_relay_networks":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.LimitRelayNetworks = true
		case "max_junk_commands":
			err = intArg(d, &s.MaxJunkCommands)
		case "max_line_length":
			err = intArg(d, &s.MaxLineLength)
		case "read_timeout":
			err = durationArg(d, &s.ReadTimeout)
		case "write_timeout":
			err = durationArg(d, &s.WriteTimeout)
		case "data_timeout":
			err = durationArg(d, &s.DataTimeout)
		case "bare_newlines":
			if err = oneArg(d, &s.BareNewlines); err == nil &&
				s.BareNewlines != BareNewlinesReject && s.BareNewlines != BareNewlinesNormalize {
				err = d.Errf("bare_newlines: %q is not one of reject, normalize", s.BareNewlines)
			}
		case "requiretls":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.RequireTLS = true
		case "check":
			if !d.NextArg() {
				return d.Err("check needs a module: clamav, ...")
			}
			name := d.Val()
			mod, merr := caddyfile.UnmarshalModule(d, "smtp.checks."+name)
			if merr != nil {
				return merr
			}
			s.ChecksRaw = append(s.ChecksRaw, caddyconfig.JSONModuleObject(mod, "check", name, nil))
		case "sender_auth":
			s.SenderAuth = new(senderauth.Config)
			err = s.SenderAuth.UnmarshalCaddyfile(d)
		case "dkim":
			s.DKIM = new(dkimsign.Config)
			err = s.DKIM.UnmarshalCaddyfile(d)
		case "skip_relay_networks":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.SkipRelayNetworks = true
		case "route":
			r := new(Route)
			err = r.UnmarshalCaddyfile(d)
			s.Routes = append(s.Routes, r)
		default:
			return d.Errf("unknown server directive %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// UnmarshalCaddyfile parses a server's tls directive:
//
//	tls [none|may|encrypt] {
//		implicit
//		client_auth        none|request|require
//		client_ca          <pem_files...>
//		certificate        <cert_file> <key_file>
//		protocols          <min> [<max>]
//		ciphers            <cipher_suites...>
//		session_tickets    on|off
//		reuse_private_keys on|off
//	}
func (t *ServerTLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		if _, err := ParseLevel(d.Val()); err != nil || d.Val() == "" {
			return d.Errf("tls level %q is not one of none, may, encrypt", d.Val())
		}
		t.Level = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "implicit":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.Implicit = true
		case "client_auth":
			if err = oneArg(d, &t.ClientAuth); err == nil {
				if _, perr := ParseClientAuth(t.ClientAuth); perr != nil {
					err = d.Errf("client_auth: %v", perr)
				}
			}
		case "client_ca":
			err = argsAppend(d, &t.ClientCA)
		case "certificate":
			var cert, key string
			if !d.AllArgs(&cert, &key) {
				return d.Err("certificate needs two arguments: <cert_file> <key_file>")
			}
			t.Certificate = &CertificateFiles{Certificate: cert, Key: key}
		case "protocols":
			t.Protocols, err = delivery.ProtocolsArgs(d)
		case "ciphers":
			err = argsAppend(d, &t.Ciphers)
		case "session_tickets":
			var v string
			if err = oneArg(d, &v); err == nil {
				switch v {
				case "on":
					on := true
					t.SessionTickets = &on
				case "off":
					off := false
					t.SessionTickets = &off
				default:
					err = d.Errf("session_tickets: %q is not on or off", v)
				}
			}
		case "reuse_private_keys":
			var v string
			if err = oneArg(d, &v); err == nil {
				switch v {
				case "on":
					on := true
					t.ReusePrivateKeys = &on
				case "off":
					off := false
					t.ReusePrivateKeys = &off
				default:
					err = d.Errf("reuse_private_keys: %q is not on or off", v)
				}
			}
		default:
			return d.Errf("unknown tls directive %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s needs one argument", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s takes one argument, got more", name)
	}
	return nil
}

// argsAppend appends one or more arguments to dst.
func argsAppend(d *caddyfile.Dispenser, dst *[]string) error {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Errf("%s needs at least one argument", name)
	}
	*dst = append(*dst, args...)
	return nil
}

func intArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return d.Errf("%s: %q is not a whole number", name, v)
	}
	*dst = n
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s: %q is not a duration (like 30s, 5m, 5d)", name, v)
	}
	if dur < 0 {
		return d.Errf("%s: %q must not be negative", name, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Server)(nil)
	_ caddyfile.Unmarshaler = (*ServerTLS)(nil)
)
