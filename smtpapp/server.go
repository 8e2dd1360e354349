package smtpapp

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dustin/go-humanize"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/dkimsign"
	"github.com/caddy-smtp/caddy-smtp/limits"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/senderauth"
)

// Defaults for a server's limits.
const (
	DefaultMaxMessageSize  = 25 << 20 // 25 MiB
	DefaultMaxRecipients   = 100      // RFC 5321 4.5.3.1.8: the minimum a server must take
	DefaultMaxConnections  = 1000
	DefaultMaxPerIP        = 50
	DefaultMaxJunkCommands = 100  // Postfix's smtpd_junk_command_limit
	DefaultMaxLineLength   = 2000 // twice RFC 5321's 1000, as go-smtp and Postfix allow
	DefaultReadTimeout     = 5 * time.Minute
	DefaultWriteTimeout    = 5 * time.Minute
	DefaultDataTimeout     = 15 * time.Minute
)

// Ways to treat a bare LF or bare CR in message data.
const (
	// BareNewlinesReject refuses the message with 550 5.5.2 (default).
	BareNewlinesReject = "reject"
	// BareNewlinesNormalize turns every bare LF and bare CR into CRLF.
	BareNewlinesNormalize = "normalize"
)

// Server is one SMTP server of the smtp app: its listeners, hostname,
// TLS level, limits and relay control.
type Server struct {
	// Addresses to listen on, in Caddy's network address form
	// (`:25`, `127.0.0.1:2525`, `tcp6/[::1]:25`). Sockets are bound
	// with Caddy's listener pool, so a config reload keeps them open.
	// A server reached only through the layer4 app may have none.
	Listen []string `json:"listen,omitempty"`

	// The name of this server: in the greeting, the EHLO reply, the
	// Received: header, as the default SNI and as the subject of its
	// managed certificate. Default: the machine's host name.
	Hostname string `json:"hostname,omitempty"`

	// TLS for receiving: level, certificate, client certificates.
	TLS *ServerTLS `json:"tls,omitempty"`

	// Domains we accept mail for from any client (the final
	// destinations behind this gateway). `*.example.com` matches
	// subdomains of example.com.
	AcceptDomains []string `json:"accept_domains,omitempty"`

	// Client networks (CIDR, or single addresses) that may send mail to
	// any domain. Empty, and no AUTH, means no relaying: recipients
	// outside accept_domains get `554 5.7.1 Relay access denied`.
	RelayNetworks []string `json:"relay_networks,omitempty"`

	// Largest message accepted, in bytes; advertised in EHLO as SIZE.
	// Larger messages get `552 5.3.4`. Default: 25 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// Most recipients per message; further RCPTs get `452 4.5.3`.
	// Default: 100.
	MaxRecipients int `json:"max_recipients,omitempty"`

	// Most simultaneous connections; further ones get
	// `421 4.7.0 Too many connections` and are closed. Default: 1000.
	MaxConnections int `json:"max_connections,omitempty"`

	// Most simultaneous connections from one client: an IPv4 address,
	// or an IPv6 /64. A connection past it waits up to half a second
	// for one of the client's connections to end, then gets
	// `421 4.7.0 Too many connections from your address` and is closed.
	// Clients in relay_networks are exempt unless limit_relay_networks
	// is set. Default: 50 (Postfix's smtpd_client_connection_count_limit).
	MaxConnectionsPerIP int `json:"max_connections_per_ip,omitempty"`

	// Apply max_connections_per_ip to clients in relay_networks too. By
	// default they are exempt, as Postfix exempts $mynetworks
	// (smtpd_client_event_limit_exceptions): the gateway's own
	// submitting servers open many connections on purpose.
	LimitRelayNetworks bool `json:"limit_relay_networks,omitempty"`

	// How many commands a session may send that do nothing for a mail
	// transaction (NOOP, VRFY, HELP, RSET outside a transaction, STARTTLS
	// and QUIT included) before it gets
	// `421 4.7.0 Error: too many commands without mail` and is closed.
	// Default: 100 (Postfix's smtpd_junk_command_limit).
	MaxJunkCommands int `json:"max_junk_commands,omitempty"`

	// Longest command or data line in bytes; a longer one gets
	// `500 5.4.0` and the connection is closed. Default: 2000.
	MaxLineLength int `json:"max_line_length,omitempty"`

	// How long a command line may take to arrive whole (a client that
	// sends it slower gets `421 4.4.2 Error: timeout exceeded` and is
	// closed; an idle one gets `421 4.4.2 Idle timeout`), and how long
	// each read during DATA may wait. Default: 5m (RFC 5321 4.5.3.2.7).
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`

	// How long a reply may take to write. Default: 5m.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// The longest a whole DATA transfer may take, however steadily the
	// client sends. Default: 15m.
	DataTimeout caddy.Duration `json:"data_timeout,omitempty"`

	// What to do with a bare LF or bare CR in message data, the SMTP
	// smuggling class (CVE-2023-51764): `reject` (default; 550 5.5.2)
	// or `normalize` (rewrite each to CRLF, as Postfix does).
	BareNewlines string `json:"bare_newlines,omitempty"`

	// Advertise REQUIRETLS (RFC 8689) on TLS sessions. A MAIL FROM with
	// REQUIRETLS on a plaintext session is refused either way.
	RequireTLS bool `json:"requiretls,omitempty"`

	// Content checks, run in order at the end of each message's data,
	// before the 250, so that a refusal is a reply and never a bounce:
	// modules in the namespace `smtp.checks` (`clamav`, ...), each with
	// its timeout, on_error, max_size and max_concurrent.
	ChecksRaw []json.RawMessage `json:"checks,omitempty" caddy:"namespace=smtp.checks inline_key=check"`

	// Do not run the checks on mail from clients in relay_networks.
	SkipRelayNetworks bool `json:"skip_relay_networks,omitempty"`

	// Check SPF, DKIM and DMARC on mail from clients outside
	// relay_networks that did not authenticate: an
	// Authentication-Results header under this server's hostname, and
	// DMARC enforced if asked. Runs before the checks.
	SenderAuth *senderauth.Config `json:"sender_auth,omitempty"`

	// Sign mail from relay_networks and authenticated clients with
	// DKIM, after every check's changes, with keys kept in Caddy's
	// storage.
	DKIM *dkimsign.Config `json:"dkim,omitempty"`

	// Where accepted mail goes, by recipient domain: the first route
	// whose domains match wins. A recipient no route matches is refused
	// at RCPT with `550 5.1.2`. Routes belong to the server that
	// accepted the message, so one config can hold a gateway and the
	// server it relays to without a loop.
	Routes []*Route `json:"routes,omitempty"`

	name      string
	app       *App
	logger    *zap.Logger
	maillog   maillog.Log
	level     Level
	tls       *serverTLS
	relay     *RelayPolicy
	addrs     []caddy.NetworkAddress
	listeners []net.Listener
	smtp      *smtp.Server
	// go-smtp for connections handed over already in TLS: the same
	// settings, without STARTTLS.
	smtpTLS    *smtp.Server
	handoff    *handoffListener
	handoffTLS *handoffListener

	checks     []checks.Check
	checkNames []string
	signer     *dkimsign.Signer

	maxLineLength   int
	maxJunkCommands int
	readTimeout     time.Duration
	writeTimeout    time.Duration
	dataTimeout     time.Duration

	active atomic.Int64  // open connections, and those waiting for a slot
	slots  *limits.Slots // open connections by client (limits.ClientKey)
	wg     sync.WaitGroup
}

// provision validates the server's config and builds everything that
// Start needs, except sockets.
func (s *Server) provision(ctx caddy.Context, app *App, name string) error {
	s.name, s.app = name, app
	s.logger = app.logger.With(zap.String("server", name))
	s.maillog = maillog.New(s.logger)
	field := "servers." + name

	if s.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return fmt.Errorf("%s.hostname: not set, and the OS host name is unknown: %v", field, err)
		}
		s.Hostname = h
	}
	s.Hostname = strings.ToLower(strings.TrimSuffix(s.Hostname, "."))
	if strings.ContainsAny(s.Hostname, " \t\r\n@/") {
		return fmt.Errorf("%s.hostname: %q is not a host name", field, s.Hostname)
	}

	for _, l := range s.Listen {
		addr, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 25)
		if err != nil {
			return fmt.Errorf("%s.listen: %q: %w", field, l, err)
		}
		if strings.HasPrefix(addr.Network, "udp") || addr.Network == "unixgram" {
			return fmt.Errorf("%s.listen: %q: SMTP needs a stream network, not %s", field, l, addr.Network)
		}
		s.addrs = append(s.addrs, addr)
	}

	var err error
	if s.relay, err = NewRelayPolicy(s.AcceptDomains, s.RelayNetworks); err != nil {
		return fmt.Errorf("%s.%w", field, err)
	}

	for name, v := range map[string]int64{
		"max_message_size": s.MaxMessageSize, "max_recipients": int64(s.MaxRecipients),
		"max_connections": int64(s.MaxConnections), "max_line_length": int64(s.MaxLineLength),
		"max_connections_per_ip": int64(s.MaxConnectionsPerIP), "max_junk_commands": int64(s.MaxJunkCommands),
		"read_timeout": int64(s.ReadTimeout), "write_timeout": int64(s.WriteTimeout), "data_timeout": int64(s.DataTimeout),
	} {
		if v < 0 {
			return fmt.Errorf("%s.%s: must not be negative", field, name)
		}
	}
	if s.MaxMessageSize == 0 {
		s.MaxMessageSize = DefaultMaxMessageSize
	}
	if s.MaxRecipients == 0 {
		s.MaxRecipients = DefaultMaxRecipients
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = DefaultMaxConnections
	}
	if s.MaxConnectionsPerIP == 0 {
		s.MaxConnectionsPerIP = DefaultMaxPerIP
	}
	s.slots = limits.NewSlots(s.MaxConnectionsPerIP)
	s.maxJunkCommands = s.MaxJunkCommands
	if s.maxJunkCommands == 0 {
		s.maxJunkCommands = DefaultMaxJunkCommands
	}
	s.maxLineLength = s.MaxLineLength
	if s.maxLineLength == 0 {
		s.maxLineLength = DefaultMaxLineLength
	}
	if s.maxLineLength < 512 {
		return fmt.Errorf("%s.max_line_length: %d is below RFC 5321's 512 for commands", field, s.maxLineLength)
	}
	s.readTimeout = durationOr(s.ReadTimeout, DefaultReadTimeout)
	s.writeTimeout = durationOr(s.WriteTimeout, DefaultWriteTimeout)
	s.dataTimeout = durationOr(s.DataTimeout, DefaultDataTimeout)

	switch s.BareNewlines {
	case "":
		s.BareNewlines = BareNewlinesReject
	case BareNewlinesReject, BareNewlinesNormalize:
	default:
		return fmt.Errorf("%s.bare_newlines: %q is not one of reject, normalize", field, s.BareNewlines)
	}

	if s.tls, err = s.provisionTLS(ctx); err != nil {
		return err
	}
	if s.SenderAuth != nil {
		m := s.app.metrics
		a, err := senderauth.New(*s.SenderAuth, s.Hostname, field+".sender_auth", func(method, result string) {
			m.AuthResults.WithLabelValues(s.name, method, result).Inc()
		})
		if err != nil {
			return err
		}
		s.checks = append(s.checks, a)
		s.checkNames = append(s.checkNames, "sender_auth")
	}
	if s.DKIM != nil {
		if s.signer, err = dkimsign.New(ctx, ctx.Storage(), s.DKIM, field+".dkim", s.logger.Named("dkim")); err != nil {
			return err
		}
	}
	if len(s.ChecksRaw) > 0 {
		mods, err := ctx.LoadModule(s, "ChecksRaw")
		if err != nil {
			return fmt.Errorf("%s.checks: %w", field, err)
		}
		for i, m := range mods.([]any) {
			c, ok := m.(checks.Check)
			if !ok {
				return fmt.Errorf("%s.checks[%d]: module %T is not a check", field, i, m)
			}
			s.checks = append(s.checks, c)
			s.checkNames = append(s.checkNames, m.(caddy.Module).CaddyModule().ID.Name())
		}
	}
	for i, r := range s.Routes {
		if r == nil {
			return fmt.Errorf("%s.routes[%d]: empty route", field, i)
		}
		if err := r.provision(ctx, fmt.Sprintf("%s.routes[%d]", field, i)); err != nil {
			return err
		}
	}

	s.smtp = s.newEngine()
	if s.tls.config != nil && !s.implicitTLS() {
		s.smtp.TLSConfig = s.tls.config
	}
	s.smtpTLS = s.newEngine()
	s.handoff, s.handoffTLS = newHandoffListener(name), newHandoffListener(name+"/tls")
	return nil
}

// newEngine makes a go-smtp server with this server's settings, and no
// STARTTLS.
func (s *Server) newEngine() *smtp.Server {
	srv := smtp.NewServer(s)
	srv.Domain = s.Hostname
	srv.ReadTimeout = s.readTimeout
	srv.WriteTimeout = s.writeTimeout
	srv.MaxMessageBytes = s.MaxMessageSize
	srv.MaxRecipients = s.MaxRecipients
	srv.MaxLineLength = s.maxLineLength
	srv.AllowInsecureAuth = false
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableREQUIRETLS = s.RequireTLS
	srv.ErrorLog = zapPrintfLogger{s.logger}
	return srv
}

func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

func (s *Server) implicitTLS() bool { return s.TLS != nil && s.TLS.Implicit }

// start binds the listeners and serves them.
func (s *Server) start(ctx caddy.Context) error {
	for _, pair := range []struct {
		srv *smtp.Server
		ln  net.Listener
	}{{s.smtp, s.handoff}, {s.smtpTLS, s.handoffTLS}} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			pair.srv.Serve(pair.ln)
		}()
	}
	if s.level == LevelEncrypt && !s.implicitTLS() && listensOn(s.addrs, 25) {
		s.logger.Warn("tls level encrypt on port 25: RFC 3207 says a publicly referenced MX must not require TLS; senders without STARTTLS will not reach you")
	}
	for _, addr := range s.addrs {
		for port := uint(0); port < addr.PortRangeSize(); port++ {
			lnAny, err := addr.Listen(ctx, port, net.ListenConfig{})
			if err != nil {
				return fmt.Errorf("servers.%s.listen: %s: %w", s.name, addr.At(port), err)
			}
			ln, ok := lnAny.(net.Listener)
			if !ok {
				return fmt.Errorf("servers.%s.listen: %s is not a stream listener", s.name, addr.At(port))
			}
			gl := &listener{Listener: ln, srv: s}
			s.listeners = append(s.listeners, gl)
			s.logger.Info("listening",
				zap.String("address", ln.Addr().String()),
				zap.String("tls_level", string(s.level)),
				zap.Bool("implicit_tls", s.implicitTLS()))
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				if err := s.smtp.Serve(gl); err != nil && !errors.Is(err, net.ErrClosed) {
					s.logger.Error("serving stopped", zap.Error(err))
				}
			}()
		}
	}
	return nil
}

// stop closes the listeners. Open sessions go on until they end (their
// timeouts bound them), so a reload never cuts a transaction short.
func (s *Server) stop() error {
	var errs []error
	for _, ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.listeners = nil
	s.handoff.Close()
	s.handoffTLS.Close()
	return errors.Join(errs...)
}

// listener admits connections under max_connections and
// max_connections_per_ip, and wraps them.
type listener struct {
	net.Listener
	srv *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		slot, a := l.srv.tryAdmit(nc)
		switch a {
		case admitted:
			return l.wrap(nc, slot), nil
		case clientFull:
			// The wait must not hold up the accept loop: the connection
			// goes to go-smtp through the handoff listener, which the
			// same engine serves, once a slot is free.
			go func() {
				if !l.srv.awaitSlot(nc, slot) {
					return
				}
				if c := l.wrap(nc, slot); !l.srv.handoff.push(c) {
					c.Close()
				}
			}()
		}
	}
}

// wrap makes an admitted connection ours, in TLS on an implicit-TLS
// listener.
func (l *listener) wrap(nc net.Conn, slot netip.Addr) net.Conn {
	c := newConn(nc, l.srv, remoteAddrPort(nc))
	c.slot = slot
	if l.srv.implicitTLS() {
		c.tlsConn = tls.Server(c, l.srv.tls.config)
		return c.tlsConn
	}
	return c
}

// reject counts a refused transaction or command.
func (s *Server) reject(reason string) {
	s.app.metrics.Messages.WithLabelValues(s.name, "rejected", reason).Inc()
}

func remoteAddrPort(nc net.Conn) netip.AddrPort {
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(nc.RemoteAddr().String())
	return ap
}

// zapPrintfLogger adapts go-smtp's logger interface to Caddy's logger.
type zapPrintfLogger struct{ l *zap.Logger }

func (z zapPrintfLogger) Printf(format string, v ...any) {
	z.log(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (z zapPrintfLogger) Println(v ...any) {
	z.log(strings.TrimSpace(fmt.Sprintln(v...)))
}

// log keeps go-smtp's routine connection errors at debug level, but a
// recovered panic is an error an administrator must see, except the one
// go-smtp race that is known to be harmless (isBDATCloseRace).
func (z zapPrintfLogger) log(detail string) {
	if strings.HasPrefix(detail, "panic") {
		if isBDATCloseRace(detail) {
			z.l.Debug("smtp engine: BDAT goroutine ran after the connection closed",
				zap.String("detail", detail))
			return
		}
		z.l.Error("smtp engine panic", zap.String("detail", detail))
		return
	}
	z.l.Debug("smtp engine", zap.String("detail", detail))
}

// isBDATCloseRace recognises a race inside go-smtp v0.25.1: the first
// BDAT chunk of a message starts a goroutine that later calls
// c.Session().Data, and if the client hangs up before that goroutine is
// scheduled (a "BDAT 0", or a chunk size whose bytes never come), Close
// has already set the session to nil and the goroutine panics on it.
// go-smtp recovers it; none of our code has run, the connection is
// gone, and nothing was acknowledged, so it is not an error an
// administrator can act on. The test is narrow: a nil dereference whose
// panicking frame is that goroutine itself, not anything it called.
// (No hook in go-smtp prevents it: the session is nil by then, and after
// STARTTLS the wrapper beneath TLS cannot see the BDAT command.)
func isBDATCloseRace(detail string) bool {
	if !strings.Contains(detail, "nil pointer dereference") {
		return false
	}
	_, after, ok := strings.Cut(detail, "\npanic(")
	if !ok {
		return false
	}
	// The frame after the runtime's panic frame is the one that panicked.
	lines := strings.Split(after, "\n")
	for i := 1; i < len(lines); i++ {
		frame := strings.TrimSpace(lines[i])
		if frame == "" || strings.HasPrefix(frame, "/") {
			continue // the file:line of the panic( frame
		}
		return strings.HasPrefix(frame, "github.com/emersion/go-smtp.(*Conn).handleBdat.func1(")
	}
	return false
}

// ParseSize parses a size like "25MiB", "10MB" or "1048576" into bytes,
// for the Caddyfile.
func ParseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	if n > 1<<40 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(n), nil
}

// DKIMSigner returns the server's DKIM signer, nil when it signs
// nothing.
func (s *Server) DKIMSigner() *dkimsign.Signer { return s.signer }
