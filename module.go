// Package caddysmtp is the caddy-smtp plugin: importing it registers the
// smtp app (apps.smtp), its delivery targets (smtp.delivery.relay, .mx,
// .maildir) and the `smtp` Caddyfile global option.
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
	// the smtp app
	_ "github.com/caddy-smtp/caddy-smtp/smtpapp"
)
