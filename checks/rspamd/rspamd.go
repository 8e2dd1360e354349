// Package rspamd is the smtp.checks.rspamd module: each message is
// posted to rspamd's normal worker (its /checkv2 HTTP API, the protocol
// rspamc and rspamd's own proxy speak), with the envelope in headers,
// and rspamd's action decides: reject (550 5.7.1 with rspamd's SMTP
// message), soft reject and greylist (451 4.7.1, as rspamd's own milter
// proxy does), quarantine (refused, quarantined or let on, as
// configured), discard; no action, add header (X-Spam: Yes and
// X-Spam-Score added) and rewrite subject (rspamd's subject) go on,
// with the headers rspamd asks for (its milter_headers module) applied.
// An action it does not know is an engine error (on_error decides).
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
	"mime"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"golang.org/x/net/http/httpguts"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/message"
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

	// What rspamd's `quarantine` action (forced by its DMARC module for
	// p=quarantine, or by force_actions) gets: `reject` (default: 550
	// 5.7.1), `quarantine` (250 to the sender, kept in the quarantine
	// with rspamd's symbols) or `accept` (goes on, logged with the
	// action).
	Quarantine string `json:"quarantine,omitempty"`

	endpoint string
	name     string // the URL without its password, for errors
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
	r.name = u.Redacted()
	switch r.Greylist {
	case "":
		r.Greylist = checks.OnErrorTempfail
	case checks.OnErrorTempfail, checks.OnErrorAccept:
	default:
		return fmt.Errorf("checks.rspamd.greylist: %q is not one of tempfail, accept", r.Greylist)
	}
	switch r.Quarantine {
	case "":
		r.Quarantine = "reject"
	case "reject", "quarantine", checks.OnErrorAccept:
	default:
		return fmt.Errorf("checks.rspamd.quarantine: %q is not one of reject, quarantine, accept", r.Quarantine)
	}
	if !httpguts.ValidHeaderFieldValue(r.Password) || !httpguts.ValidHeaderFieldValue(r.SettingsID) {
		return errors.New("checks.rspamd: password and settings_id must be one line of printable characters")
	}
	if err := r.Options.Provision("checks.rspamd"); err != nil {
		return err
	}
	// The timeout comes from the check's context. No proxy from the
	// environment (the message and the password go to rspamd only),
	// idle connections for as many messages as are checked at once, and
	// no redirects: a scanner that redirects is misconfigured.
	r.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: r.MaxConcurrent,
			IdleConnTimeout:     60 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return nil
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
	// Subject is the new subject of "rewrite subject".
	Subject string `json:"subject"`
	// Milter is what rspamd asks an MTA to change (its milter_headers
	// module, or Lua rules calling task:set_milter_reply).
	Milter struct {
		AddHeaders    map[string]json.RawMessage `json:"add_headers"`
		RemoveHeaders map[string]json.RawMessage `json:"remove_headers"`
	} `json:"milter"`
}

// headerValue is one value of rspamd's add_headers: a string, or a
// value with where it goes (order, or its other name index: -1 or none
// at the end; n: after the n-th field, as a milter's insert).
type headerValue struct {
	Value string `json:"value"`
	Order *int   `json:"order"`
	Index *int   `json:"index"`
}

// edits turns rspamd's milter block into header edits: removals first,
// then additions, each in name order (JSON objects have none), so the
// result does not depend on map iteration. Shapes it does not know are
// skipped, as rspamd's own milter proxy skips them: a block we cannot
// read must not turn rspamd's verdict into an engine error.
func (a *answer) edits() []message.HeaderEdit {
	var edits []message.HeaderEdit
	for _, name := range sortedKeys(a.Milter.RemoveHeaders) {
		var n int
		if json.Unmarshal(a.Milter.RemoveHeaders[name], &n) != nil {
			continue
		}
		// 0: every field of that name; n: the n-th; -n: from the end.
		edits = append(edits, message.HeaderEdit{Op: message.ChangeHeader, Name: name, Index: n})
	}
	for _, name := range sortedKeys(a.Milter.AddHeaders) {
		raw := a.Milter.AddHeaders[name]
		var values []headerValue
		var list []json.RawMessage
		var plain string
		switch {
		case json.Unmarshal(raw, &plain) == nil:
			values = []headerValue{{Value: plain}}
		case json.Unmarshal(raw, &list) == nil:
			for _, item := range list {
				var v headerValue
				if json.Unmarshal(item, &plain) == nil {
					values = append(values, headerValue{Value: plain})
				} else if json.Unmarshal(item, &v) == nil {
					values = append(values, v)
				}
			}
		default:
			var one headerValue
			if json.Unmarshal(raw, &one) == nil {
				values = []headerValue{one}
			}
		}
		for _, v := range values {
			e := message.HeaderEdit{Op: message.AddHeader, Name: name, Value: v.Value}
			order := v.Order
			if order == nil {
				order = v.Index
			}
			if order != nil && *order >= 0 {
				e.Op, e.Index = message.InsertHeader, *order
			}
			edits = append(edits, e)
		}
	}
	return edits
}

// subject makes rspamd's new subject a header value: one line, control
// characters out, at most 900 bytes, and RFC 2047-encoded when it is
// not ASCII.
func subject(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > 900 {
		s = strings.ToValidUTF8(s[:900], "")
	}
	s = strings.TrimSpace(s)
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return mime.QEncoding.Encode("utf-8", s)
		}
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
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
	// Values that are not valid header values are left out (the
	// message is still checked, rspamd sees less of its envelope).
	set := func(k, v string) {
		if v != "" && httpguts.ValidHeaderFieldValue(v) {
			h.Set(k, v)
		}
	}
	if m.ClientIP.IsValid() {
		set("IP", m.ClientIP.Unmap().String())
	}
	set("Helo", m.Helo)
	from := m.From
	if from == "" {
		from = "<>" // the null sender, not a missing one
	}
	set("From", from)
	for _, rc := range m.Rcpts {
		if httpguts.ValidHeaderFieldValue(rc) {
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
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: %w", r.name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: reading the answer: %w", r.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: HTTP %d: %q", r.name, resp.StatusCode, truncate(string(raw)))
	}
	if len(raw) > maxReply {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: answer over %d bytes", r.name, maxReply)
	}
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil {
		return checks.Verdict{}, fmt.Errorf("rspamd at %s: garbled answer: %v", r.name, err)
	}
	return r.verdict(&a)
}

// verdict maps rspamd's action.
func (r *Rspamd) verdict(a *answer) (checks.Verdict, error) {
	v := checks.Verdict{Score: a.Score, Reason: reason(a)}
	// refuse is a refusal with rspamd's text, or def without one.
	refuse := func(action checks.Action, def string) {
		v.Action, v.Reply = action, checks.OneLine(a.Messages.SMTP)
		if v.Reply == "" {
			v.Reply = def
		}
	}
	edits := a.edits()
	// What rspamd scored is said by rspamd and us alone: a sender's own
	// X-Spam and X-Spam-Score go first, whatever the action; then
	// rspamd's changes; then ours, unless rspamd set the same field.
	edits = append([]message.HeaderEdit{
		{Op: message.ChangeHeader, Name: "X-Spam"},
		{Op: message.ChangeHeader, Name: "X-Spam-Score"},
	}, edits...)
	var ours []message.HeaderEdit
	switch a.Action {
	case "no action":
		v.Action = checks.Accept
	case "add header":
		v.Action = checks.Accept
		ours = append(ours,
			message.HeaderEdit{Op: message.AddHeader, Name: "X-Spam", Value: "Yes"},
			message.HeaderEdit{Op: message.AddHeader, Name: "X-Spam-Score",
				Value: strconv.FormatFloat(a.Score, 'f', 2, 64) + " / " + strconv.FormatFloat(a.RequiredScore, 'f', 2, 64)})
	case "rewrite subject":
		v.Action = checks.Accept
		if subj := subject(a.Subject); subj != "" {
			ours = append(ours, message.HeaderEdit{Op: message.ChangeHeader, Name: "Subject", Index: 1, Value: subj})
		}
	case "reject":
		refuse(checks.Reject, "Spam message rejected")
	case "soft reject":
		refuse(checks.Tempfail, "Try again later")
	case "greylist":
		if r.Greylist == checks.OnErrorAccept {
			v.Action = checks.Accept
		} else {
			refuse(checks.Tempfail, "Try again later")
		}
	case "quarantine":
		switch r.Quarantine {
		case checks.OnErrorAccept:
			v.Action = checks.Accept
		case "quarantine":
			v.Action = checks.Quarantine
		default:
			refuse(checks.Reject, "Message rejected by policy")
		}
	case "discard":
		v.Action = checks.Discard
	default:
		return checks.Verdict{}, fmt.Errorf("rspamd: unknown action %q", truncate(a.Action))
	}
	v.Reason = a.Action + " " + v.Reason
	if v.Action == checks.Accept || v.Action == checks.Quarantine {
		for _, e := range ours {
			if _, set := a.Milter.AddHeaders[e.Name]; !set {
				edits = append(edits, e)
			}
		}
		v.Edits = edits
	}
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
		b.WriteString(" " + checks.OneLine(s.name) + "(" + strconv.FormatFloat(s.score, 'f', 2, 64) + ")")
	}
	return b.String()
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
//		quarantine     reject|quarantine|accept
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
		case "quarantine":
			if !d.AllArgs(&r.Quarantine) {
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

// Cleanup closes the idle connections to rspamd once the config that
// made the check is unloaded: they would otherwise outlive it, each
// with its goroutines, until rspamd or the idle timeout closes them.
func (r *Rspamd) Cleanup() error {
	if r.client != nil {
		r.client.CloseIdleConnections()
	}
	return nil
}

// Interface guards
var (
	_ caddy.CleanerUpper    = (*Rspamd)(nil)
	_ caddy.Provisioner     = (*Rspamd)(nil)
	_ checks.Check          = (*Rspamd)(nil)
	_ caddyfile.Unmarshaler = (*Rspamd)(nil)
)
