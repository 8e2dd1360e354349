package mtasts

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func TestPattern(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "mx.example.com", want: "mx.example.com"},
		{in: "MX.Example.COM.", want: "mx.example.com"},
		{in: "*.example.com", want: "*.example.com"},
		{in: "xn--mnchen-3ya.example", want: "xn--mnchen-3ya.example"},
		{in: "localhost", want: "localhost"},
		{in: "*.*.example.com", err: "wildcard"},
		{in: "mx.*.example.com", err: "wildcard"},
		{in: "mx*.example.com", err: "wildcard"},
		{in: "*", err: "wildcard"},
		{in: "*example.com", err: "wildcard"},
		{in: "192.0.2.1", err: "IP address"},
		{in: "[192.0.2.1]", err: "IP address"},
		{in: "2001:db8::1", err: "IP address"},
		{in: "*.192.0.2.1", err: "IP address"},
		{in: "10.0.0", err: "all digits"},
		{in: "", err: "no host name"},
		{in: "mx..example.com", err: "empty"},
		{in: "-mx.example.com", err: "hyphen"},
		{in: "mx_1.example.com", err: "letters, digits and hyphens"},
		{in: "münchen.example", err: "A-labels"},
		{in: strings.Repeat("a", 64) + ".example", err: "63"},
	} {
		got, err := pattern(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("pattern(%q): %v", tc.in, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("pattern(%q) = %q, want %q", tc.in, got, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("pattern(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

// provision provisions h outside any config: no smtp app.
func provision(t *testing.T, h Handler) (*Handler, error) {
	t.Helper()
	err := h.Provision(st.CaddyContext(t))
	return &h, err
}

func TestPolicyBody(t *testing.T) {
	h, err := provision(t, Handler{Mode: "enforce", MX: []string{"mail.example.com", "*.example.net", "backupmx.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	body, id := h.Policy()
	// RFC 8461 §3.2's example, with CRLF line ends.
	want := "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n"
	if string(body) != want {
		t.Errorf("body:\n%q\nwant\n%q", body, want)
	}
	if len(id) != 20 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Errorf("id %q: want 20 hex digits (RFC 8461 §3.1 allows 1 to 32 letters and digits)", id)
	}
	body[0] = 'X'
	if b, _ := h.Policy(); b[0] != 'v' {
		t.Error("Policy returns the handler's own body: a caller changed what is served")
	}
}

// The id is the policy's: it changes with mode, mx and max_age, and with
// nothing else (spelling of names and durations, repeated provisioning).
func TestPolicyID(t *testing.T) {
	base := Handler{Mode: "enforce", MX: []string{"mx.example.com"}, MaxAge: caddy.Duration(24 * time.Hour)}
	id := func(h Handler) string {
		t.Helper()
		p, err := provision(t, h)
		if err != nil {
			t.Fatal(err)
		}
		_, id := p.Policy()
		return id
	}
	baseID := id(base)
	for name, h := range map[string]Handler{
		"again":             base,
		"mx in other case":  {Mode: "enforce", MX: []string{"MX.example.COM."}, MaxAge: base.MaxAge},
		"max_age as 86400s": {Mode: "enforce", MX: []string{"mx.example.com"}, MaxAge: caddy.Duration(86400 * time.Second)},
	} {
		if got := id(h); got != baseID {
			t.Errorf("%s: id %s, want %s", name, got, baseID)
		}
	}
	if id(Handler{MX: []string{"mx.example.com"}, MaxAge: base.MaxAge}) != id(Handler{Mode: "testing", MX: []string{"mx.example.com"}, MaxAge: base.MaxAge}) {
		t.Error("the default mode gives another id than mode testing")
	}
	if id(Handler{Mode: "enforce", MX: []string{"mx.example.com"}}) != id(Handler{Mode: "enforce", MX: []string{"mx.example.com"}, MaxAge: DefaultMaxAge}) {
		t.Error("the default max_age gives another id than max_age 7d")
	}
	seen := map[string]string{baseID: "base"}
	for name, h := range map[string]Handler{
		"mode testing":  {Mode: "testing", MX: base.MX, MaxAge: base.MaxAge},
		"mode none":     {Mode: "none", MX: base.MX, MaxAge: base.MaxAge},
		"another mx":    {Mode: "enforce", MX: []string{"mx2.example.com"}, MaxAge: base.MaxAge},
		"one mx more":   {Mode: "enforce", MX: []string{"mx.example.com", "*.example.net"}, MaxAge: base.MaxAge},
		"mx reordered":  {Mode: "enforce", MX: []string{"*.example.net", "mx.example.com"}, MaxAge: base.MaxAge},
		"max_age 2d":    {Mode: "enforce", MX: base.MX, MaxAge: caddy.Duration(48 * time.Hour)},
		"max_age 1s":    {Mode: "enforce", MX: base.MX, MaxAge: caddy.Duration(time.Second)},
		"max_age a day": {Mode: "enforce", MX: base.MX, MaxAge: caddy.Duration(24*time.Hour + time.Second)},
	} {
		got := id(h)
		if other, dup := seen[got]; dup {
			t.Errorf("%s: same id %s as %s", name, got, other)
		}
		seen[got] = name
	}
}

func TestProvisionErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Handler
		err  string
	}{
		{"bad mode", Handler{Mode: "strict", MX: []string{"mx.example.com"}}, `mode: "strict" is not one of none, testing, enforce`},
		{"mode in capitals", Handler{Mode: "Enforce", MX: []string{"mx.example.com"}}, `mode: "Enforce"`},
		{"two wildcards", Handler{MX: []string{"*.*.example.com"}}, `mx: "*.*.example.com": a wildcard`},
		{"inner wildcard", Handler{MX: []string{"mx.*.example.com"}}, `mx: "mx.*.example.com": a wildcard`},
		{"an IP", Handler{MX: []string{"mx.example.com", "192.0.2.25"}}, `mx: "192.0.2.25" is an IP address`},
		{"an IPv6", Handler{MX: []string{"2001:db8::25"}}, `mx: "2001:db8::25" is an IP address`},
		{"twice", Handler{MX: []string{"mx.example.com", "MX.example.com"}}, `mx: "mx.example.com" is listed twice`},
		{"max_age over a year", Handler{MX: []string{"mx.example.com"}, MaxAge: MaxMaxAge + caddy.Duration(time.Second)}, "max_age: 8766h0m1s is above RFC 8461's limit of 31557600s"},
		{"max_age negative", Handler{MX: []string{"mx.example.com"}, MaxAge: -1}, "max_age: -1ns is negative"},
		{"max_age fraction", Handler{MX: []string{"mx.example.com"}, MaxAge: caddy.Duration(1500 * time.Millisecond)}, "max_age: 1.5s is not a whole number of seconds"},
		{"no mx, no smtp app", Handler{Mode: "enforce"}, "mx is required"},
		{"no mx, testing", Handler{}, "mx is required"},
	} {
		_, err := provision(t, tc.h)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.err)
		}
	}
}

func TestProvisionLimits(t *testing.T) {
	// A year is allowed; mode none needs no mx (RFC 8461 §3.2 ABNF).
	h, err := provision(t, Handler{Mode: "none", MaxAge: MaxMaxAge})
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := h.Policy(); string(body) != "version: STSv1\r\nmode: none\r\nmax_age: 31557600\r\n" {
		t.Errorf("body %q", body)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Handler
		err  string
	}{
		{in: "mta_sts", want: Handler{}},
		{in: "mta_sts {\n}", want: Handler{}},
		{
			in:   "mta_sts {\n mode enforce\n mx mx1.example.com *.example.net\n mx mx2.example.com\n max_age 1d\n}",
			want: Handler{Mode: "enforce", MX: []string{"mx1.example.com", "*.example.net", "mx2.example.com"}, MaxAge: caddy.Duration(24 * time.Hour)},
		},
		{in: "mta_sts enforce", err: "wrong argument count"},
		{in: "mta_sts {\n mode\n}", err: "wrong argument count"},
		{in: "mta_sts {\n mode enforce testing\n}", err: "wrong argument count"},
		{in: "mta_sts {\n mx\n}", err: "wrong argument count"},
		{in: "mta_sts {\n max_age soon\n}", err: "max_age:"},
		{in: "mta_sts {\n id 123\n}", err: `unknown mta_sts directive "id"`},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if h.Mode != tc.want.Mode || h.MaxAge != tc.want.MaxAge || strings.Join(h.MX, " ") != strings.Join(tc.want.MX, " ") {
			t.Errorf("%q: got %+v, want %+v", tc.in, h, tc.want)
		}
	}
}
