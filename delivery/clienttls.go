package delivery

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/caddy-smtp/caddy-smtp/dane"
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
	// against the system roots or the trust pool, for the expected name
	// (by default the host name connected to: the relay, or the MX host).
	LevelVerify Level = "verify"
	// LevelSecure: as verify, but the name that must match is by
	// default the next-hop domain and its subdomains (Postfix's
	// "nexthop, dot-nexthop"), not the MX host name, which comes from
	// unauthenticated DNS: a forged MX answer does not help an attacker.
	LevelSecure Level = "secure"
	// LevelFingerprint: TLS is required and the certificate or its
	// public key must match one of the listed SHA-256 fingerprints; no
	// CA and no name check. For smarthosts you pin.
	LevelFingerprint Level = "fingerprint"
	// LevelDANE: opportunistic DANE (RFC 7672). With usable TLSA records
	// for the MX host (DNSSEC-validated), the session must authenticate
	// by them, with no fallback; with TLSA records present but none
	// usable, as encrypt; with none, as may.
	LevelDANE Level = "dane"
	// LevelDANEOnly: as dane, but without usable TLSA records the
	// delivery is deferred.
	LevelDANEOnly Level = "dane-only"

	// levelTLSA is the level in force under dane or dane-only when the
	// next hop has usable TLSA records: TLS, authenticated by them. (Its
	// name in logs is "dane", with the source "dane".)
	levelTLSA Level = "dane (tlsa)"
)

// levelNames lists the client levels, for config errors.
const levelNames = "none, may, encrypt, verify, secure, fingerprint, dane, dane-only"

// Authenticated reports whether the level authenticates the next hop
// (and so satisfies REQUIRETLS, RFC 8689 section 5).
func (l Level) Authenticated() bool {
	return l == LevelVerify || l == LevelSecure || l == LevelFingerprint || l == LevelDANEOnly || l == levelTLSA
}

// DANE reports whether the level looks up TLSA records.
func (l Level) DANE() bool { return l == LevelDANE || l == LevelDANEOnly }

// Names a verify or secure level may match, besides literal host names
// (Postfix's smtp_tls_verify_cert_match and smtp_tls_secure_cert_match).
const (
	// MatchHostname: the host name connected to (the relay host, or the
	// MX host name), or server_name if set.
	MatchHostname = "hostname"
	// MatchNexthop: the next-hop domain (the recipient domain for mx;
	// the relay host for relay).
	MatchNexthop = "nexthop"
	// MatchDotNexthop: any subdomain of the next-hop domain.
	MatchDotNexthop = "dot-nexthop"
)

// ClientTLS is the TLS policy of a delivery target.
type ClientTLS struct {
	// The client TLS security level, Postfix's: `none`, `may`
	// (default), `encrypt`, `verify`, `secure` or `fingerprint`.
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

	// The names the certificate may match under `verify` or `secure`
	// (Postfix's smtp_tls_verify_cert_match / smtp_tls_secure_cert_match):
	// `hostname` (the host connected to, or server_name), `nexthop` (the
	// next-hop domain: the recipient domain for mx, the relay host for
	// relay), `dot-nexthop` (any subdomain of it), or literal host names.
	// One match is enough. Default: `hostname` for verify; `nexthop` and
	// `dot-nexthop` for secure.
	Match []string `json:"match,omitempty"`

	// SHA-256 fingerprints under level `fingerprint`: of the certificate
	// or of its SubjectPublicKeyInfo, in hex; colons and case do not
	// matter, so `AB:CD:...` as openssl prints it works. At least one.
	Fingerprints []string `json:"fingerprints,omitempty"`

	level        Level
	roots        *x509.CertPool
	min, max     uint16
	fingerprints map[[32]byte]bool
}

// Provision validates the policy and loads the trust pool.
func (t *ClientTLS) Provision(ctx caddy.Context) error {
	switch Level(t.Level) {
	case "":
		t.level = LevelMay
	case LevelNone, LevelMay, LevelEncrypt, LevelVerify, LevelSecure, LevelFingerprint, LevelDANE, LevelDANEOnly:
		t.level = Level(t.Level)
	default:
		return fmt.Errorf("tls.level: %q is not one of %s", t.Level, levelNames)
	}
	if len(t.Match) > 0 && t.level != LevelVerify && t.level != LevelSecure {
		return fmt.Errorf("tls.match: only for level verify or secure, not %s", t.level)
	}
	for _, m := range t.Match {
		switch m {
		case MatchHostname, MatchNexthop, MatchDotNexthop:
		default:
			if m == "" || strings.ContainsAny(m, " \t@/:[]") || strings.HasPrefix(m, ".") {
				return fmt.Errorf("tls.match: %q is not hostname, nexthop, dot-nexthop or a host name", m)
			}
		}
	}
	switch {
	case t.level == LevelFingerprint && len(t.Fingerprints) == 0:
		return fmt.Errorf("tls.fingerprints: level fingerprint needs at least one")
	case t.level != LevelFingerprint && len(t.Fingerprints) > 0:
		return fmt.Errorf("tls.fingerprints: only for level fingerprint, not %s", t.level)
	}
	t.fingerprints = make(map[[32]byte]bool, len(t.Fingerprints))
	for _, f := range t.Fingerprints {
		fp, err := ParseFingerprint(f)
		if err != nil {
			return fmt.Errorf("tls.fingerprints: %w", err)
		}
		t.fingerprints[fp] = true
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

// matchesNexthop reports whether the certificate check under level
// depends on the next-hop domain.
func (t *ClientTLS) matchesNexthop(level Level) bool {
	if level == levelTLSA {
		return true // DANE-TA accepts the next-hop domain too
	}
	if level != LevelVerify && level != LevelSecure {
		return false
	}
	if t == nil || len(t.Match) == 0 {
		return level == LevelSecure
	}
	for _, m := range t.Match {
		if m == MatchNexthop || m == MatchDotNexthop {
			return true
		}
	}
	return false
}

// ParseFingerprint reads a SHA-256 fingerprint: 64 hex digits, colons
// and case as you like.
func ParseFingerprint(s string) ([32]byte, error) {
	var fp [32]byte
	h := strings.ReplaceAll(strings.TrimSpace(s), ":", "")
	if len(h) != 64 {
		return fp, fmt.Errorf("%q is not a SHA-256 fingerprint (64 hex digits)", s)
	}
	if _, err := hex.Decode(fp[:], []byte(strings.ToLower(h))); err != nil {
		return fp, fmt.Errorf("%q is not a SHA-256 fingerprint: %v", s, err)
	}
	return fp, nil
}

// Verification is what the handshake found out about the next hop's
// certificate.
type Verification struct {
	// Verified: the certificate authenticated the next hop under the
	// level (for may and encrypt: the chain verified for the host name,
	// checked for the log only).
	Verified bool
	// Match is what matched: a host name, or "fingerprint <hex>".
	Match string
}

// verifyError is a certificate the level refuses.
type verifyError struct{ reason string }

func (e *verifyError) Error() string { return e.reason }

// config builds the tls.Config for a connection to hop under level (the
// route's, or one a policy raised it to), and records into v what the
// handshake found. crypto/tls does no verification of its own: one
// VerifyConnection checks the chain against the trust pool (or system
// roots), then the names the level accepts, or the fingerprints; under
// may and encrypt the result is only recorded, for the log.
func (t *ClientTLS) config(hop Hop, level Level, v *Verification) *tls.Config {
	sni := hop.Host
	// Under DANE the SNI is the TLSA base domain (RFC 7672 8.1); under a
	// policy's verify floor (MTA-STS) the certificate must be the MX
	// host's (RFC 8461 4.2), whatever server_name says.
	if t != nil && t.ServerName != "" && level != levelTLSA && !hop.floorApplies(level) {
		sni = t.ServerName
	}
	cfg := &tls.Config{ServerName: sni, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	var roots *x509.CertPool
	if t != nil {
		cfg.MinVersion, cfg.MaxVersion = t.min, t.max
		roots = t.roots
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := t.check(cs.PeerCertificates, roots, sni, hop, level, v)
		if err != nil && level.Authenticated() {
			return err
		}
		return nil
	}
	return cfg
}

// check verifies a peer's certificates under level into v; the error
// says why they do not authenticate the next hop.
func (t *ClientTLS) check(certs []*x509.Certificate, roots *x509.CertPool, sni string, hop Hop, level Level, v *Verification) error {
	*v = Verification{}
	if len(certs) == 0 {
		return &verifyError{"certificate not verified: no certificate"}
	}
	leaf := certs[0]
	if level == LevelDANEOnly {
		// PrepareDANE was not asked: nothing authenticates the hop.
		return &verifyError{"certificate not verified: dane-only without a TLSA lookup"}
	}
	if level == levelTLSA {
		r, err := dane.Verify(certs, hop.tlsa, []string{hop.Host, hop.NextHop}, time.Now())
		if err != nil {
			return &verifyError{"certificate not verified by TLSA: " + err.Error()}
		}
		*v = Verification{Verified: true, Match: "TLSA " + r.String()}
		return nil
	}
	if level == LevelFingerprint {
		for _, fp := range [][32]byte{sha256.Sum256(leaf.Raw), sha256.Sum256(leaf.RawSubjectPublicKeyInfo)} {
			if t.fingerprints[fp] {
				*v = Verification{Verified: true, Match: "fingerprint " + hex.EncodeToString(fp[:])}
				return nil
			}
		}
		return &verifyError{fmt.Sprintf("certificate not verified: no fingerprint matches (certificate %x)", sha256.Sum256(leaf.Raw))}
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		return err
	}
	names := []string{MatchHostname}
	switch {
	case hop.floorApplies(level):
		// MTA-STS enforce: the MX host name, as the policy names it.
	case t != nil && len(t.Match) > 0:
		names = t.Match
	case level == LevelSecure:
		names = []string{MatchNexthop, MatchDotNexthop}
	}
	var tried []string
	for _, m := range names {
		var name string
		var ok bool
		switch m {
		case MatchHostname:
			name, ok = sni, leaf.VerifyHostname(sni) == nil
		case MatchNexthop:
			name, ok = hop.NextHop, hop.NextHop != "" && leaf.VerifyHostname(hop.NextHop) == nil
		case MatchDotNexthop:
			name, ok = dotNexthop(leaf, hop.NextHop)
		default:
			name, ok = m, leaf.VerifyHostname(m) == nil
		}
		if ok {
			*v = Verification{Verified: true, Match: name}
			return nil
		}
		tried = append(tried, m+"="+name)
	}
	return x509.HostnameError{Certificate: leaf, Host: strings.Join(tried, ", ")}
}

// dotNexthop matches a certificate name that is a subdomain of domain
// (Postfix's dot-nexthop): a name ending in "."+domain, or a wildcard
// for domain or one of its subdomains.
func dotNexthop(leaf *x509.Certificate, domain string) (string, bool) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" {
		return "." + domain, false
	}
	for _, n := range leaf.DNSNames {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		base := strings.TrimPrefix(n, "*.")
		if base != n && (base == domain || strings.HasSuffix(base, "."+domain)) {
			return n, true
		}
		if strings.HasSuffix(n, "."+domain) {
			return n, true
		}
	}
	return "." + domain, false
}

// UnmarshalCaddyfile parses a target's tls directive:
//
//	tls [none|may|encrypt|verify|secure|fingerprint] {
//		server_name  <name>
//		trust_pool   <module> [<args...>]   # file <pem...>, pki_root <ca>, inline ...
//		protocols    <min> [<max>]
//		match        <hostname|nexthop|dot-nexthop|name...>
//		fingerprint  <sha256...>
//	}
func (t *ClientTLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		switch Level(d.Val()) {
		case LevelNone, LevelMay, LevelEncrypt, LevelVerify, LevelSecure, LevelFingerprint, LevelDANE, LevelDANEOnly:
			t.Level = d.Val()
		default:
			return d.Errf("tls level %q is not one of %s", d.Val(), levelNames)
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
		case "match":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("match needs hostname, nexthop, dot-nexthop or host names")
			}
			t.Match = append(t.Match, args...)
		case "fingerprint":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("fingerprint needs one or more SHA-256 fingerprints")
			}
			for _, a := range args {
				if _, err := ParseFingerprint(a); err != nil {
					return d.Errf("fingerprint: %v", err)
				}
			}
			t.Fingerprints = append(t.Fingerprints, args...)
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
