// Package mtasts is the http.handlers.mta_sts module: it publishes the
// MTA-STS policy (RFC 8461) of the mail this Caddy receives, at
// https://mta-sts.<domain>/.well-known/mta-sts.txt, from a site of the
// http app. The site's certificate is managed like any Caddy site's;
// the policy is only valid over HTTPS with a certificate that senders
// trust (RFC 8461 §3.3), so it is a public one in production.
//
//	mta-sts.example.com {
//		mta_sts {
//			mode    enforce
//			mx      mx.example.com
//			max_age 7d
//		}
//	}
//
// The policy id of the `_mta-sts` TXT record is not configured: it is a
// hash of the policy served, so it changes exactly when the policy does
// (see Handler.Policy).
package mtasts

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("mta_sts", parseCaddyfile)
	// Among the handlers that respond, as file_server and respond are,
	// so that the directive needs no `order` global option.
	httpcaddyfile.RegisterDirectiveOrder("mta_sts", httpcaddyfile.Before, "respond")
}

// Path is where RFC 8461 §3.2 puts the policy, on the host
// mta-sts.<policy domain>.
const Path = "/.well-known/mta-sts.txt"

// Policy modes (RFC 8461 §5).
const (
	ModeNone    = "none"
	ModeTesting = "testing"
	ModeEnforce = "enforce"
)

const (
	// DefaultMaxAge is the policy lifetime when max_age is not set: a
	// week, the RFC's example; it recommends weeks or more.
	DefaultMaxAge = caddy.Duration(7 * 24 * time.Hour)
	// MaxMaxAge is the longest lifetime RFC 8461 §3.2 allows:
	// 31557600 seconds, about a year.
	MaxMaxAge = caddy.Duration(31557600 * time.Second)
)

// Handler serves the MTA-STS policy at /.well-known/mta-sts.txt, as
// text/plain, to GET and HEAD (other methods: 405); any other path is
// 404. To share a site with other content, give the directive a
// matcher: `mta_sts /.well-known/mta-sts.txt { ... }`.
//
// The body is the RFC's key/value lines, each ended by CRLF:
//
//	version: STSv1
//	mode: enforce
//	mx: mx.example.com
//	max_age: 604800
type Handler struct {
	// What sending MTAs do when they cannot deliver over TLS with a
	// valid certificate to an MX host the policy names (RFC 8461 §5):
	// `enforce` (they do not deliver), `testing` (they deliver, and
	// report with TLSRPT if the domain publishes it) or `none` (the
	// domain has stopped using MTA-STS; publish it for max_age before
	// removing the TXT record). Default: `testing`.
	Mode string `json:"mode,omitempty"`

	// The MX host patterns that senders accept a certificate for: a
	// host name (`mx.example.com`) or `*.` and a host name
	// (`*.example.com`: one label, leftmost, so `mx.example.com` and
	// not `a.mx.example.com`), in ASCII (A-labels for international
	// names); not IP addresses (RFC 8461 §4.1). Every MX record of the
	// domain must match one of them. Default: the host names of the
	// smtp app's servers when the smtp app is in the same config
	// (sorted, each once); without it, mx is required unless mode is
	// `none`.
	MX []string `json:"mx,omitempty"`

	// How long senders may cache the policy (RFC 8461 §3.2), in whole
	// seconds; at most 31557600s (about a year). Default: 7d.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	body []byte
	id   string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mta_sts",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in the defaults, checks every field and builds the
// policy body and its id. The default mx comes from the smtp app: ctx.App
// provisions an app (once per config; it is cached) but never starts it,
// and the smtp app does not refer to the http app, so looking it up from
// the http app's provisioning makes no cycle and only changes which app
// is provisioned first.
func (h *Handler) Provision(ctx caddy.Context) error {
	if h.Mode == "" {
		h.Mode = ModeTesting
	}
	switch h.Mode {
	case ModeNone, ModeTesting, ModeEnforce:
	default:
		return fmt.Errorf("mode: %q is not one of none, testing, enforce", h.Mode)
	}

	if h.MaxAge == 0 {
		h.MaxAge = DefaultMaxAge
	}
	switch {
	case h.MaxAge < 0:
		return fmt.Errorf("max_age: %s is negative", time.Duration(h.MaxAge))
	case h.MaxAge > MaxMaxAge:
		return fmt.Errorf("max_age: %s is above RFC 8461's limit of 31557600s (about a year)", time.Duration(h.MaxAge))
	case time.Duration(h.MaxAge)%time.Second != 0:
		return fmt.Errorf("max_age: %s is not a whole number of seconds", time.Duration(h.MaxAge))
	}

	patterns := make([]string, 0, len(h.MX))
	for _, configured := range h.MX {
		p, err := pattern(configured)
		if err != nil {
			return fmt.Errorf("mx: %w", err)
		}
		if slices.Contains(patterns, p) {
			return fmt.Errorf("mx: %q is listed twice", p)
		}
		patterns = append(patterns, p)
	}
	if len(patterns) == 0 {
		var err error
		if patterns, err = smtpHostnames(ctx); err != nil {
			return err
		}
	}
	if len(patterns) == 0 && h.Mode != ModeNone {
		return errors.New("mx is required: no smtp app with servers in this config to take host names from")
	}
	h.MX = patterns

	var b strings.Builder
	b.WriteString("version: STSv1\r\n")
	b.WriteString("mode: " + h.Mode + "\r\n")
	for _, p := range h.MX {
		b.WriteString("mx: " + p + "\r\n")
	}
	b.WriteString("max_age: " + strconv.FormatInt(int64(time.Duration(h.MaxAge)/time.Second), 10) + "\r\n")
	h.body = []byte(b.String())
	// The TXT record's id is 1*32(ALPHA / DIGIT) (RFC 8461 §3.1):
	// 80 bits of SHA-256 in hex tell any two policies apart.
	sum := sha256.Sum256(h.body)
	h.id = hex.EncodeToString(sum[:10])
	return nil
}

// smtpHostnames returns the host names of the smtp app's servers, sorted
// and each once, or none when the config has no smtp app.
func smtpHostnames(ctx caddy.Context) ([]string, error) {
	appIface, err := ctx.AppIfConfigured("smtp")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mx: not set, and the smtp app it defaults from failed to load: %w", err)
	}
	app, ok := appIface.(*smtpapp.App)
	if !ok {
		return nil, fmt.Errorf("mx: not set, and the smtp app is a %T", appIface)
	}
	var names []string
	for name, s := range app.Servers {
		if s == nil {
			continue
		}
		if s.Hostname == "" {
			// Only while the smtp app is itself being provisioned,
			// i.e. something in it led to the http app.
			return nil, fmt.Errorf("mx: not set, and the smtp app's servers.%s has no hostname yet; set mx", name)
		}
		p, err := pattern(s.Hostname)
		if err != nil {
			return nil, fmt.Errorf("mx: not set, and the smtp app's servers.%s.hostname is no MX pattern: %w", name, err)
		}
		if !slices.Contains(names, p) {
			names = append(names, p)
		}
	}
	slices.Sort(names)
	return names, nil
}

// pattern checks an MX host pattern of RFC 8461 §4.1 (a host name, or
// "*." and a host name) and returns it in lower case without a final dot.
func pattern(p string) (string, error) {
	orig := p
	p = strings.ToLower(strings.TrimSuffix(p, "."))
	name := strings.TrimPrefix(p, "*.")
	if net.ParseIP(strings.Trim(name, "[]")) != nil {
		return "", fmt.Errorf("%q is an IP address; MX patterns are host names", orig)
	}
	if strings.Contains(name, "*") {
		return "", fmt.Errorf("%q: a wildcard may only be the whole leftmost label, once (*.example.com)", orig)
	}
	if err := hostname(name); err != nil {
		return "", fmt.Errorf("%q: %v", orig, err)
	}
	return p, nil
}

// hostname checks a Domain of RFC 5321 §4.1.2 (letters, digits and
// hyphens; no hyphen at either end of a label).
func hostname(name string) error {
	if name == "" {
		return errors.New("no host name")
	}
	if len(name) > 253 {
		return errors.New("longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("label %q is empty or longer than 63 characters", l)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("label %q begins or ends with a hyphen", l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("label %q has %q: only letters, digits and hyphens (write international names as A-labels, xn--)", l, c)
			}
		}
	}
	// No top-level domain is all digits: 10.0.0 or 1.2.3.4.5 is an
	// address gone wrong, not a host name.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return errors.New("the last label is all digits; that is no host name")
	}
	return nil
}

// Policy returns the policy body as served and its id, for the
// `_mta-sts` TXT record (`v=STSv1; id=<id>`): the first 20 hex digits of
// the body's SHA-256, so the id changes exactly when the policy does and
// stays the same across reloads and restarts that leave it be. Valid
// after Provision.
func (h *Handler) Policy() (body []byte, id string) {
	return slices.Clone(h.body), h.id
}

// ServeHTTP serves the policy. Errors go through the site's error
// handling, as file_server's do.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.URL.Path != Path {
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, nil)
	}
	// Senders should check the media type (RFC 8461 §3.3); the body is
	// ASCII, so no charset.
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(h.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(h.body)
	}
	return nil
}

// UnmarshalCaddyfile sets up the handler from the `mta_sts` directive:
//
//	mta_sts [<matcher>] {
//		mode    none|testing|enforce
//		mx      <pattern>...
//		max_age <duration>
//	}
//
// mx may be repeated; the block may be left out for all the defaults.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "mode":
			if !d.AllArgs(&h.Mode) {
				return d.ArgErr()
			}
		case "mx":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.MX = append(h.MX, args...)
		case "max_age":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("max_age: %v", err)
			}
			h.MaxAge = caddy.Duration(dur)
		default:
			return d.Errf("unknown mta_sts directive %q (want mode, mx or max_age)", d.Val())
		}
	}
	return nil
}

// parseCaddyfile is the `mta_sts` directive's setup function.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
