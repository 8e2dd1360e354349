// Package caddysmtp is the caddy-smtp plugin: importing it registers the
// smtp app (apps.smtp) and the `smtp` Caddyfile global option.
//
//	xcaddy build --with github.com/caddy-smtp/caddy-smtp
package caddysmtp

import (
	// the smtp Caddyfile global option
	_ "github.com/caddy-smtp/caddy-smtp/caddyfile"
	// the smtp app
	_ "github.com/caddy-smtp/caddy-smtp/smtpapp"
)
