// Package caddysmtp is the caddy-smtp plugin: importing it registers the
// smtp app (apps.smtp), its delivery targets (smtp.delivery.relay, .mx,
// .maildir), the layer4 handler (layer4.handlers.smtp, with caddy-l4's
// app and modules) and the `smtp` Caddyfile global option.
//
//	xcaddy build --with github.com/caddy-smtp/caddy-smtp
package caddysmtp

import (
	// the smtp Caddyfile global option
	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	// delivery targets
	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/mx"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/relay"
	// the layer4 handler
	_ "github.com/caddy-smtp/caddy-smtp/l4smtp"
	// the smtp app
	_ "github.com/caddy-smtp/caddy-smtp/smtpapp"
	// caddy-l4: the layer4 app and its matchers and handlers
	// (proxy_protocol, tls, remote_ip, close...)
	_ "github.com/mholt/caddy-l4"
)
