package smtpapp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestValidateTouchesNoDisk: `caddy validate` (provisioning and
// validating without starting) neither creates nor converts the spool,
// and still reports a listen address repeated across servers.
func TestValidateTouchesNoDisk(t *testing.T) {
	e := st.NewEnv(t)
	dir := filepath.Join(t.TempDir(), "not-yet")
	s, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	cfg := func(servers map[string]any) *caddy.Config {
		raw := e.Config(map[string]any{"queue": map[string]any{"path": dir}, "servers": servers}, nil)
		var c caddy.Config
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	if err := caddy.Validate(cfg(map[string]any{"mx": s})); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("validate created the spool directory: %v", err)
	}
	err := caddy.Validate(cfg(map[string]any{"a": s, "b": s}))
	if err == nil || !strings.Contains(err.Error(), "is also a listen address of server") {
		t.Fatalf("validate with one address in two servers: %v", err)
	}
}
