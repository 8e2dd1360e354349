// Command caddy is Caddy with its standard modules and the caddy-smtp
// plugin, so that `go run ./cmd/caddy` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// caddy-smtp
	_ "github.com/caddy-smtp/caddy-smtp"
)

func main() {
	caddycmd.Main()
}
