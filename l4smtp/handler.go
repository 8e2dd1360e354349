// Package l4smtp is the layer4.handlers.smtp module: it serves a server
// of the smtp app on connections that the layer4 app (caddy-l4) routes
// to it, after its proxy_protocol or tls handlers if any.
package l4smtp

import (
	"crypto/tls"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// Handler hands the connection to a named server of the smtp app, which
// serves it exactly as a connection on its own listeners: the same
// STARTTLS level, limits, relay control, spool and routes. It is
// terminal: it does not call the next handler.
//
// Relay control, logs and the Received: header see the connection's
// remote address: after layer4's proxy_protocol handler, the proxied
// client. After layer4's tls handler the session counts as TLS
// (implicit TLS, RFC 8314) and STARTTLS is not offered.
type Handler struct {
	// The name of the smtp app's server (apps.smtp.servers.NAME).
	Server string `json:"server,omitempty"`

	srv *smtpapp.Server
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.smtp",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision finds the server in the smtp app of the same config.
func (h *Handler) Provision(ctx caddy.Context) error {
	if h.Server == "" {
		return fmt.Errorf("smtp handler: server: the name of an smtp app server is required")
	}
	appIface, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("smtp handler: getting smtp app: %w", err)
	}
	app, ok := appIface.(*smtpapp.App)
	if !ok {
		return fmt.Errorf("smtp handler: smtp app is %T", appIface)
	}
	if h.srv = app.Server(h.Server); h.srv == nil {
		return fmt.Errorf("smtp handler: server: no server %q in apps.smtp.servers", h.Server)
	}
	return nil
}

// Handle serves the SMTP session; it returns when the session is over.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	h.srv.ServeConn(cx, tlsState(cx))
	return nil
}

// tlsState is the TLS session that layer4's tls handler terminated on
// the connection, if any, as that handler records it. With more than one
// (TLS inside TLS) the last is the one the SMTP bytes travel in.
func tlsState(cx *layer4.Connection) *tls.ConnectionState {
	states := l4tls.GetConnectionStates(cx)
	if len(states) == 0 {
		return nil
	}
	return states[len(states)-1]
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens, inside a
// layer4 route:
//
//	smtp <server>
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "smtp"
	if !d.Args(&h.Server) {
		return d.Err("smtp handler needs the name of an smtp app server: smtp <server>")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Err("smtp handler takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Handler)(nil)
	_ layer4.NextHandler    = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
