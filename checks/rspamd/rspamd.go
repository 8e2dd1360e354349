// Package rspamd is the smtp.checks.rspamd module: each message is
// posted to rspamd's normal worker (its /checkv2 HTTP API, the protocol
// rspamc and rspamd's own proxy speak), with the envelope in headers,
// and rspamd's action decides: reject (550 5.7.1 with rspamd's SMTP
// message), soft reject and greylist (451 4.7.1, as rspamd's own milter
// proxy does), anything else goes on.
//
// Written here: the protocol is one HTTP POST and a JSON answer; there
// is no maintained Go client, and net/http plus encoding/json do it.
package rspamd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-smtp/caddy-smtp/checks"
)

func init() {
	caddy.RegisterModule(Rspamd{})
}

// Rspamd scans messages with rspamd.
type Rspamd struct {
	checks.Options

	// The URL of rspamd's normal worker (not the controller or the
	// proxy). Default: http://127.0.0.1:11333.
	URL string `json:"url,omitempty"`

	// The password (rspamd's `Password` header), for a worker behind a
	// proxy that asks for one. Usually empty: the normal worker does not.
	Password string `json:"password,omitempty"`

	// A settings id of rspamd's settings module, sent as `Settings-ID`
	// (one policy for inbound, another for outbound).
	SettingsID string `json:"settings_id,omitempty"`

	// What rspamd's `greylist` action gets: `tempfail` (default, what
	// rspamd's own milter proxy does) or `accept`.
	Greylist string `json:"greylist,omitempty"`

	endpoint string
	client   *http.Client
}

// CaddyModule returns the Caddy module information.
func (Rspamd) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.checks.rspamd",
		New: func() caddy.Module { return new(Rspamd) },
	}
}

// Provision checks the URL and the options.
func (r *Rspamd) Provision(caddy.Context) error {
	if r.URL == "" {
		r.URL = "http://127.0.0.1:11333"
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("checks.rspamd.url: %q is not an http(s) URL", r.URL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/checkv2"
	}
	r.endpoint = u.String()
	switch r.Greylist {
	case "":
		r.Greylist = checks.OnErrorTempfail
	case checks.OnErrorTempfail, checks.OnErrorAccept:
	default:
		return fmt.Errorf("checks.rspamd.greylist: %q is not one of tempfail, accept", r.Greylist)
	}
	if strings.ContainsAny(r.Password+r.SettingsID, "\r\n") {
		return errors.New("checks.rspamd: password and settings_id must be one line")
	}
	// The timeout comes from the check's context; no redirects: a
	// scanner that redirects is misconfigured, not to be followed.
	r.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	return r.Options.Provision("checks.rspamd")
}

// maxReply bounds what is read of rspamd's answer: it lists every
// symbol with its options, which a hostile message can make long.
const maxReply = 1 << 20

// answer is what is read of rspamd's /checkv2 reply.
type answer struct {
	Action        string  `json:"action"`
	Score         float64 `json:"score"`
	RequiredScore float64 `json:"required_score"`
	Symbols       map[string]struct {
		Score float64 `json:"score"`
	} `json:"symbols"`
	Messages struct {
		SMTP string `json:"smtp_message"`
	} `json:"messages"`
}

// Check posts the message to rspamd and maps its action.
func (r *Rspamd) Check(ctx context.Context, m *checks.Message) (checks.Verdict, error) {
	body, err := m.Open()
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the message: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, body)
	if err != nil {
		return checks.Verdict{}, err
	}
	req.ContentLength = m.Size
	h := req.Header
	set := func(k, v string) {
		if v != "" && !strings.ContainsAny(v, "\r\n") {
			h.Set(k, v)
		}
	}
	if m.ClientIP.IsValid() {
		set("IP", m.ClientIP.Unmap().String())
	}
	set("Helo", m.Helo)
	set("From", m.From)
	for _, rc := range m.Rcpts {
		if !strings.ContainsAny(rc, "\r\n") {
			h.Add("Rcpt", rc)
		}
	}
	set("Queue-Id", m.QueueID)
	set("User", m.Auth)
	set("MTA-Name", m.Hostname)
	set("Password", r.Password)
	set("Settings-ID", r.SettingsID)
	if m.TLS != nil {
		set("TLS-Version", tlsVersion(m.TLS.Version))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: %w", r.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: reading the answer: %w", r.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: HTTP %d: %q", r.URL, resp.StatusCode, truncate(string(raw)))
	}
	if len(raw) > maxReply {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: answer over %d bytes", r.URL, maxReply)
	}
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: garbled answer: %v", r.URL, err)
	}
	return r.verdict(&a)
}

// verdict maps rspamd's action.
func (r *Rspamd) verdict(a *answer) (checks.Verdict, error) {
	v := checks.Verdict{Score: a.Score, Reason: reason(a)}
	reply := oneLine(a.Messages.SMTP)
	switch a.Action {
	case "no action", "add header", "rewrite subject":
		// Header changes before the commit are not built yet: the
		// message goes on as it is; the log line has the action.
		v.Action = checks.Accept
	case "reject":
		v.Action, v.Reply = checks.Reject, reply
		if v.Reply == "" {
			v.Reply = "Spam message rejected"
		}
	case "soft reject":
		v.Action, v.Reply = checks.Tempfail, reply
		if v.Reply == "" {
			v.Reply = "Try again later"
		}
	case "greylist":
		if r.Greylist == checks.OnErrorAccept {
			v.Action = checks.Accept
			break
		}
		v.Action, v.Reply = checks.Tempfail, reply
		if v.Reply == "" {
			v.Reply = "Try again later"
		}
	case "discard":
		v.Action = checks.Discard
	default:
		return checks.Verdict{}, fmt.Errorf("rspamd: unknown action %q", truncate(a.Action))
	}
	v.Reason = a.Action + " " + v.Reason
	return v, nil
}

// reason is the score and the symbols that scored, highest first, at
// most ten, for the log line.
func reason(a *answer) string {
	type sym struct {
		name  string
		score float64
	}
	var syms []sym
	for name, s := range a.Symbols {
		if s.Score != 0 && len(name) <= 64 {
			syms = append(syms, sym{name, s.Score})
		}
	}
	sort.Slice(syms, func(i, j int) bool {
		if syms[i].score != syms[j].score {
			return syms[i].score > syms[j].score
		}
		return syms[i].name < syms[j].name
	})
	var b strings.Builder
	b.WriteString(strconv.FormatFloat(a.Score, 'f', 2, 64) + "/" + strconv.FormatFloat(a.RequiredScore, 'f', 2, 64))
	for i, s := range syms {
		if i == 10 {
			b.WriteString(" ...")
			break
		}
		b.WriteString(" " + oneLine(s.name) + "(" + strconv.FormatFloat(s.score, 'f', 2, 64) + ")")
	}
	return b.String()
}

// oneLine makes rspamd's text fit an SMTP reply: printable ASCII, one
// line, at most 200 bytes.
func oneLine(s string) string {
	var b strings.Builder
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			c = ' '
		}
		if b.Len() >= 200 {
			break
		}
		b.WriteRune(c)
	}
	return strings.TrimSpace(b.String())
}

func truncate(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0304:
		return "1.3"
	case 0x0303:
		return "1.2"
	case 0x0302:
		return "1.1"
	case 0x0301:
		return "1.0"
	}
	return ""
}

// UnmarshalCaddyfile parses (the check keyword and module name already
// read by the server's `check` directive):
//
//	check rspamd [<url>] {
//		password       <password>
//		settings_id    <id>
//		greylist       tempfail|accept
//		timeout        <duration>
//		on_error       tempfail|accept
//		max_size       <size>
//		max_concurrent <n>
//	}
func (r *Rspamd) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if d.NextArg() {
		r.URL = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "password":
			if !d.AllArgs(&r.Password) {
				return d.ArgErr()
			}
		case "settings_id":
			if !d.AllArgs(&r.SettingsID) {
				return d.ArgErr()
			}
		case "greylist":
			if !d.AllArgs(&r.Greylist) {
				return d.ArgErr()
			}
		default:
			err = checks.ParseOption(d, &r.Options)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Rspamd)(nil)
	_ checks.Check          = (*Rspamd)(nil)
	_ caddyfile.Unmarshaler = (*Rspamd)(nil)
)
