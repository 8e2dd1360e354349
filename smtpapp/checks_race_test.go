package smtpapp

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/checks"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// lateOpen is a check that honours ctx (it stops at the deadline) but
// opens the message as the deadline passes: e.g. a check whose HTTP
// connect took its whole timeout.
type lateOpen struct {
	checks.Options
}

func (lateOpen) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "smtp.checks.latetest", New: func() caddy.Module { return new(lateOpen) }}
}
func (c *lateOpen) Provision(caddy.Context) error { return c.Options.Provision("checks.latetest") }
func (c *lateOpen) Check(ctx context.Context, m *checks.Message) (checks.Verdict, error) {
	<-ctx.Done()
	r, err := m.Open()
	if err == nil {
		io.Copy(io.Discard, r)
	}
	return checks.Verdict{}, ctx.Err()
}

func init() { caddy.RegisterModule(lateOpen{}) }

// TestLateOpenNoRace: a check that opens the message after its timeout
// (on_error accept) does not race with the commit of the draft (found
// by review: Open flushed the draft's writer from the check's goroutine).
// The race detector in CI runs it.
func TestLateOpenNoRace(t *testing.T) {
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"checks": []any{map[string]any{"check": "latetest", "timeout": "100ms", "on_error": "accept"}}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"s": srv}), nil)
	for i := 0; i < 5; i++ {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		got := c.Send("a@remote.test", "b@example.test", "Subject: x\r\n\r\n"+strings.Repeat("hello\r\n", 1000)+".\r\n")
		if !strings.HasPrefix(got, "250") {
			t.Fatalf("message %d: %s", i, got)
		}
	}
	time.Sleep(200 * time.Millisecond) // a sleep: the late opens happen in this time
}
