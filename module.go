// Package caddysmtp is the caddy-smtp plugin: importing it registers the
// smtp app (apps.smtp), its delivery targets (smtp.delivery.relay, .mx,
// .maildir), the layer4 handler (layer4.handlers.smtp, with caddy-l4's
// app and modules), the `smtp` Caddyfile global option, the queue's
// admin API endpoint (admin.api.smtp, /smtp/ on the admin listener) and
// the `caddy smtp-queue` command.
//
//	xcaddy build --with github.com/caddy-smtp/caddy-smtp
package caddysmtp

import (
	// the queue on the admin API (admin.api.smtp)
	_ "github.com/caddy-smtp/caddy-smtp/admin"
	// the smtp Caddyfile global option
	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	// delivery targets
	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/mx"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/relay"
	// content checks
	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav"
	_ "github.com/caddy-smtp/caddy-smtp/checks/milter"
	_ "github.com/caddy-smtp/caddy-smtp/checks/rspamd"
	// the layer4 handler
	_ "github.com/caddy-smtp/caddy-smtp/l4smtp"
	// the MTA-STS policy as an http handler (http.handlers.mta_sts)
	_ "github.com/caddy-smtp/caddy-smtp/mtasts"
	// the smtp app
	_ "github.com/caddy-smtp/caddy-smtp/smtpapp"
	// the `caddy smtp-queue` command
	_ "github.com/caddy-smtp/caddy-smtp/smtpcmd"
	// caddy-l4: the layer4 app and its matchers and handlers
	// (proxy_protocol, tls, remote_ip, close...)
	_ "github.com/mholt/caddy-l4"
)
