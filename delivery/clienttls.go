package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// Level is a client (sending) TLS security level, as Postfix's
// smtp_tls_security_level.
type Level string

// Client TLS security levels.
const (
	// LevelNone: "No TLS encryption". Never STARTTLS.
	LevelNone Level = "none"
	// LevelMay: "Attempt TLS encryption". STARTTLS when offered, the
	// certificate is not verified; if the handshake fails the delivery
	// is retried at once in plaintext. The default.
	LevelMay Level = "may"
	// LevelEncrypt: "Require TLS encryption, do not verify the
	// certificate". No STARTTLS or a failed handshake defers the mail.
	LevelEncrypt Level = "encrypt"
	// LevelVerify: "Require TLS encryption and verify the certificate"
	// against the system roots or the trust pool, for the expected name.
	LevelVerify Level = "verify"
)

// ClientTLS is the TLS policy of a delivery target.
type ClientTLS struct {
	// The client TLS security level: `none`, `may` (default),
	// `encrypt` or `verify`.
	Level string `json:"level,omitempty"`

	// The name the server's certificate must be valid for under
	// `verify`, and the SNI sent. Default: the host name connected to
	// (the relay host, or the MX host name).
	ServerName string `json:"server_name,omitempty"`

	// The CAs to verify the server against under `verify`, from a
	// Caddy CA pool module (`tls.ca_pool.source.*`: `file`, `inline`,
	// `pki_root` for Caddy's own local CA...). Default: system roots.
	TrustPoolRaw json.RawMessage `json:"trust_pool,omitempty" caddy:"namespace=tls.ca_pool.source inline_key=provider"`

	// TLS protocol versions: the minimum, and optionally the maximum
	// (`tls1.2`, `tls1.3`). Default: tls1.2 to tls1.3.
	Protocols []string `json:"protocols,omitempty"`

	level    Level
	roots    *x509.CertPool
	min, max uint16
}

// Provision validates the policy and loads the trust pool.
func (t *ClientTLS) Provision(ctx caddy.Context) error {
	switch Level(t.Level) {
	case "":
		t.level = LevelMay
	case LevelNone, LevelMay, LevelEncrypt, LevelVerify:
		t.level = Level(t.Level)
	default:
		return fmt.Errorf("tls.level: %q is not one of none, may, encrypt, verify", t.Level)
	}
	if len(t.TrustPoolRaw) > 0 {
		mod, err := ctx.LoadModule(t, "TrustPoolRaw")
		if err != nil {
			return fmt.Errorf("tls.trust_pool: %w", err)
		}
		ca, ok := mod.(caddytls.CA)
		if !ok {
			return fmt.Errorf("tls.trust_pool: module %T is not a CA pool", mod)
		}
		t.roots = ca.CertPool()
	}
	t.min, t.max = tls.VersionTLS12, tls.VersionTLS13
	if len(t.Protocols) > 2 {
		return fmt.Errorf("tls.protocols: give a minimum and at most a maximum version")
	}
	for i, p := range t.Protocols {
		v, ok := caddytls.SupportedProtocols[p]
		if !ok {
			return fmt.Errorf("tls.protocols: %q is not one of tls1.2, tls1.3", p)
		}
		if i == 0 {
			t.min = v
		} else {
			t.max = v
		}
	}
	if t.min > t.max {
		return fmt.Errorf("tls.protocols: the minimum %s is above the maximum %s", t.Protocols[0], t.Protocols[1])
	}
	return nil
}

// EffectiveLevel is the provisioned level.
func (t *ClientTLS) EffectiveLevel() Level {
	if t == nil || t.level == "" {
		return LevelMay
	}
	return t.level
}

// config builds the tls.Config for a connection to host. Verification
// is done by crypto/tls only under verify; otherwise the chain is still
// checked (without failing the handshake) so the log can say whether
// the peer was trusted.
func (t *ClientTLS) config(host string, verified *bool) *tls.Config {
	name := host
	if t != nil && t.ServerName != "" {
		name = t.ServerName
	}
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13}
	var roots *x509.CertPool
	if t != nil {
		cfg.MinVersion, cfg.MaxVersion = t.min, t.max
		roots = t.roots
	}
	cfg.RootCAs = roots
	if t.EffectiveLevel() == LevelVerify {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			*verified = true
			return nil
		}
		return cfg
	}
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
		*verified = err == nil
		return nil
	}
	return cfg
}

// UnmarshalCaddyfile parses a target's tls directive:
//
//	tls [none|may|encrypt|verify] {
//		server_name <name>
//		trust_pool  <module> [<args...>]   # file <pem...>, pki_root <ca>, inline ...
//		protocols   <min> [<max>]
//	}
func (t *ClientTLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		switch Level(d.Val()) {
		case LevelNone, LevelMay, LevelEncrypt, LevelVerify:
			t.Level = d.Val()
		default:
			return d.Errf("tls level %q is not one of none, may, encrypt, verify", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "server_name":
			if !d.NextArg() {
				return d.ArgErr()
			}
			t.ServerName = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "trust_pool":
			if !d.NextArg() {
				return d.Err("trust_pool needs a CA pool module: file, inline, pki_root...")
			}
			modName := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+modName)
			if err != nil {
				return err
			}
			t.TrustPoolRaw = caddyconfig.JSONModuleObject(mod, "provider", modName, nil)
		case "protocols":
			protocols, err := ProtocolsArgs(d)
			if err != nil {
				return err
			}
			t.Protocols = protocols
		default:
			return d.Errf("unknown tls directive %q", d.Val())
		}
	}
	return nil
}

// ProtocolsArgs parses the arguments of a `protocols <min> [<max>]`
// directive (servers and delivery targets share it).
func ProtocolsArgs(d *caddyfile.Dispenser) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 || len(args) > 2 {
		return nil, d.Err("protocols needs a minimum and optionally a maximum: tls1.2 [tls1.3]")
	}
	for _, p := range args {
		if p != "tls1.2" && p != "tls1.3" {
			return nil, d.Errf("protocols: %q is not one of tls1.2, tls1.3", p)
		}
	}
	if len(args) == 2 && args[0] == "tls1.3" && args[1] == "tls1.2" {
		return nil, d.Err("protocols: the minimum tls1.3 is above the maximum tls1.2")
	}
	return args, nil
}
