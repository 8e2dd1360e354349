// Package caddyfile registers the `smtp` Caddyfile global option, which
// produces the smtp app's JSON (apps.smtp) one to one:
//
//	{
//		smtp {
//			queue { ... }
//			server <name> { ... }
//		}
//	}
//
// The syntax of each block is documented on the UnmarshalCaddyfile
// methods in package smtpapp, beside the JSON fields they fill.
package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("smtp", parseSMTP)
}

// parseSMTP turns the smtp global option into the smtp app.
func parseSMTP(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		d.Next()
		return nil, d.Err("the smtp global option may appear only once")
	}
	app := new(smtpapp.App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{
		Name:  "smtp",
		Value: caddyconfig.JSON(app, nil),
	}, nil
}
