package smtpapp

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/caddy-smtp/caddy-smtp/certfiles"
)

// ServerTLS configures TLS for receiving mail: the server TLS security
// level, the certificate, and client certificates. The certificate comes
// from Caddy's tls app: managed for the server's hostname (ACME for
// public names, Caddy's internal CA otherwise) unless `certificate`
// names files.
type ServerTLS struct {
	// The server TLS security level: `none` (No TLS encryption: STARTTLS
	// is not offered), `may` (Attempt TLS encryption: STARTTLS offered,
	// mail accepted with or without it; the default), or `encrypt`
	// (Require TLS encryption: MAIL, RCPT, DATA, BDAT and AUTH before
	// STARTTLS get `530 5.7.0 Must issue a STARTTLS command first`).
	// RFC 3207 forbids `encrypt` on a public MX; a server listening on
	// port 25 with it logs a warning at start.
	Level string `json:"level,omitempty"`

	// Implicit TLS (RFC 8314, "submissions" on port 465): the whole
	// connection is TLS from the first byte and STARTTLS is not offered.
	// Requires level `may` or `encrypt` (both mean the same here).
	Implicit bool `json:"implicit,omitempty"`

	// Client certificates: `none` (Do not request; the default),
	// `request` (Request one, accept clients without; a given one is
	// checked against `client_ca` and the result logged), or `require`
	// (Require one: the handshake fails without a certificate, or with
	// one that does not verify against `client_ca` when that is set).
	// `require` is only valid with level `encrypt`.
	ClientAuth string `json:"client_auth,omitempty"`

	// PEM files of the CAs that client certificates are verified
	// against. They are loaded with Caddy's `tls.ca_pool.source.file`.
	ClientCA []string `json:"client_ca,omitempty"`

	// A certificate and key to serve instead of a managed certificate,
	// loaded through Caddy's tls file loader. Renewing them is up to
	// you; a config reload picks up new files.
	Certificate *CertificateFiles `json:"certificate,omitempty"`

	// TLS protocol versions: the minimum, and optionally the maximum
	// (`tls1.2`, `tls1.3`). Default: tls1.2 to tls1.3.
	Protocols []string `json:"protocols,omitempty"`

	// Cipher suites for TLS 1.2, by their Go/IANA names (TLS 1.3 suites
	// are not configurable). Default: Caddy's modern set.
	Ciphers []string `json:"ciphers,omitempty"`

	// Whether TLS session tickets are issued (default true). Turn them
	// off if Outlook/Exchange senders fail TLS 1.3 handshakes
	// (golang/go#70232).
	SessionTickets *bool `json:"session_tickets,omitempty"`

	// Whether a managed certificate of the hostname keeps its private
	// key when it is renewed (CertMagic's reuse_private_keys on the
	// automation policy the smtp app adds for the name). Default true: a
	// published TLSA record of the key (DANE-EE `3 1 1`, which `caddy
	// smtp-dns` prints) would break at every renewal otherwise. Set it
	// false to get a new key with each certificate, and publish the next
	// key's TLSA before each renewal yourself. Servers that share a
	// hostname must agree on it. It has no effect on `certificate`
	// files, nor on names that an automation policy of your own in the
	// tls app covers (a catch-all policy included): set
	// `reuse_private_keys` there.
	ReusePrivateKeys *bool `json:"reuse_private_keys,omitempty"`
}

// CertificateFiles names a PEM certificate chain and its private key.
type CertificateFiles struct {
	// The certificate chain, leaf first (PEM file).
	Certificate string `json:"certificate"`
	// The private key (PEM file).
	Key string `json:"key"`
}

// serverTLS is the provisioned form of ServerTLS.
type serverTLS struct {
	config     *tls.Config    // handed to go-smtp; nil for level none
	clientCAs  *x509.CertPool // for judging certificates under "request"
	manageName bool           // the hostname needs a managed certificate
}

// provisionTLS validates the tls block and builds the TLS config from a
// caddytls connection policy, so that protocols, ciphers, client
// authentication and certificate selection behave as in Caddy's http app.
func (s *Server) provisionTLS(ctx caddy.Context) (*serverTLS, error) {
	t := s.TLS
	if t == nil {
		t = new(ServerTLS)
	}
	field := "servers." + s.name + ".tls"
	level, err := ParseLevel(t.Level)
	if err != nil {
		return nil, fmt.Errorf("%s.level: %w", field, err)
	}
	s.level = level
	ca, err := ParseClientAuth(t.ClientAuth)
	if err != nil {
		return nil, fmt.Errorf("%s.client_auth: %w", field, err)
	}
	if ca == ClientAuthRequire && level != LevelEncrypt {
		return nil, fmt.Errorf("%s.client_auth: require is only valid with level encrypt, not %s (a client without a certificate could still send in plaintext)", field, level)
	}
	if level == LevelNone {
		switch {
		case t.Implicit:
			return nil, fmt.Errorf("%s.implicit: implicit TLS needs level may or encrypt, not none", field)
		case ca != ClientAuthNone:
			return nil, fmt.Errorf("%s.client_auth: %s needs TLS, but level is none", field, ca)
		case t.Certificate != nil || len(t.ClientCA) > 0 || len(t.Protocols) > 0 || len(t.Ciphers) > 0:
			return nil, fmt.Errorf("%s: certificate, client_ca, protocols and ciphers need TLS, but level is none", field)
		}
		return &serverTLS{}, nil
	}
	if len(t.ClientCA) > 0 && ca == ClientAuthNone {
		return nil, fmt.Errorf("%s.client_ca: set, but client_auth is none", field)
	}

	pol := &caddytls.ConnectionPolicy{
		// SMTP has no ALPN; a non-nil empty list keeps Caddy from
		// advertising h2 and http/1.1 on a mail port.
		ALPN:         []string{},
		CipherSuites: t.Ciphers,
		// Many MTAs send no SNI; they, and clients asking for a name
		// we have no certificate for, get the hostname's certificate.
		DefaultSNI:  s.Hostname,
		FallbackSNI: s.Hostname,
	}
	for _, c := range t.Ciphers {
		if !caddytls.CipherSuiteNameSupported(c) {
			return nil, fmt.Errorf("%s.ciphers: unsupported cipher suite %q", field, c)
		}
	}
	switch len(t.Protocols) {
	case 0:
	case 1, 2:
		for _, p := range t.Protocols {
			if _, ok := caddytls.SupportedProtocols[p]; !ok {
				return nil, fmt.Errorf("%s.protocols: %q is not one of tls1.2, tls1.3", field, p)
			}
		}
		pol.ProtocolMin = t.Protocols[0]
		if len(t.Protocols) == 2 {
			pol.ProtocolMax = t.Protocols[1]
			if caddytls.SupportedProtocols[pol.ProtocolMin] > caddytls.SupportedProtocols[pol.ProtocolMax] {
				return nil, fmt.Errorf("%s.protocols: the minimum %s is above the maximum %s", field, pol.ProtocolMin, pol.ProtocolMax)
			}
		}
	default:
		return nil, fmt.Errorf("%s.protocols: give a minimum and at most a maximum version", field)
	}

	st := new(serverTLS)
	if ca != ClientAuthNone {
		auth := &caddytls.ClientAuthentication{}
		if len(t.ClientCA) > 0 {
			pool := &caddytls.FileCAPool{TrustedCACertPEMFiles: t.ClientCA}
			if err := pool.Provision(ctx); err != nil {
				return nil, fmt.Errorf("%s.client_ca: %w", field, err)
			}
			st.clientCAs = pool.CertPool()
			raw, err := json.Marshal(map[string]any{"provider": "file", "pem_files": t.ClientCA})
			if err != nil {
				return nil, err
			}
			auth.CARaw = raw
		}
		switch {
		case ca == ClientAuthRequest:
			// Ask, never refuse: the certificate is judged for the log,
			// as Postfix's smtpd_tls_ask_ccert does.
			auth.Mode = "request"
		case len(t.ClientCA) > 0:
			auth.Mode = "require_and_verify"
		default:
			auth.Mode = "require"
		}
		pol.ClientAuthentication = auth
	}

	if t.Certificate != nil {
		if t.Certificate.Certificate == "" || t.Certificate.Key == "" {
			return nil, fmt.Errorf("%s.certificate: both certificate and key files are required", field)
		}
		tag, err := certfiles.Load(ctx, t.Certificate.Certificate, t.Certificate.Key)
		if err != nil {
			return nil, fmt.Errorf("%s.certificate: %w", field, err)
		}
		// As Caddy's own `tls <cert> <key>`: the tls app serves it,
		// chosen by its tag. CertMagic looks up the SNI (without one,
		// the hostname; then the fallback, the hostname), and for a name
		// no cached certificate has it chooses among all of them by the
		// tag: so clients that send no SNI, or a name the certificate
		// does not cover, get it too (TestManualCertificateNotForHostname).
		pol.CertSelection = &caddytls.CustomCertSelectionPolicy{AnyTag: []string{tag}}
	} else {
		st.manageName = true
	}

	pols := caddytls.ConnectionPolicies{pol}
	if err := pols.Provision(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if t.SessionTickets != nil && !*t.SessionTickets {
		pol.TLSConfig.SessionTicketsDisabled = true
	}

	inner := pols.TLSConfig(ctx)
	st.config = &tls.Config{
		MinVersion: inner.MinVersion,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cfg, err := inner.GetConfigForClient(hello)
			c := unwrapConn(hello.Conn)
			if err != nil || cfg == nil || c == nil {
				return cfg, err
			}
			c.setSNI(hello.ServerName)
			// crypto/tls calls VerifyConnection once in every server
			// handshake (full or resumed, with or without a client
			// certificate), after its own checks: the one place where
			// the connection learns its TLS facts, before the client can
			// leave (its log line has them even without an EHLO).
			cfg = cfg.Clone()
			verify := cfg.VerifyConnection
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if verify != nil {
					if err := verify(cs); err != nil {
						return err
					}
				}
				c.handshakeDone(cs)
				return nil
			}
			return cfg, nil
		},
	}
	return st, nil
}

// peerVerified judges the client certificate of a finished handshake:
// verified by crypto/tls (require with client_ca), or by us against
// client_ca under "request".
func (st *serverTLS) peerVerified(cs tls.ConnectionState) bool {
	if len(cs.PeerCertificates) == 0 {
		return false
	}
	if len(cs.VerifiedChains) > 0 {
		return true
	}
	if st.clientCAs == nil {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         st.clientCAs,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return err == nil
}

// listensOn reports whether any of the addresses covers port.
func listensOn(addrs []caddy.NetworkAddress, port uint) bool {
	return slices.ContainsFunc(addrs, func(a caddy.NetworkAddress) bool {
		return !a.IsUnixNetwork() && a.StartPort <= port && port <= a.EndPort
	})
}
