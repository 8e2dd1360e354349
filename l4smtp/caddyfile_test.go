package l4smtp_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// TestCaddyfile: `smtp <server>` inside a layer4 route adapts to the
// handler's JSON; bad forms fail with the file and line.
func TestCaddyfile(t *testing.T) {
	adapt := func(handler string) ([]byte, error) {
		in := "{\n\tlayer4 {\n\t\t127.0.0.1:2587 {\n\t\t\troute {\n\t\t\t\tproxy_protocol\n\t\t\t\t" + handler + "\n\t\t\t}\n\t\t}\n\t}\n}\n"
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), map[string]any{"filename": "Testfile"})
		return out, err
	}
	out, err := adapt("smtp gateway")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			Layer4 struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []map[string]any `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"layer4"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	h := cfg.Apps.Layer4.Servers["srv0"].Routes[0].Handle
	if len(h) != 2 || h[1]["handler"] != "smtp" || h[1]["server"] != "gateway" || len(h[1]) != 2 {
		t.Fatalf("adapted handlers: %v", h)
	}
	for _, bad := range []struct{ in, want, at string }{
		{"smtp", "smtp handler needs the name of an smtp app server", "Testfile:6"},
		{"smtp a b", "wrong argument count", "Testfile:6"},
		{"smtp a {\n\t\t\t\t\tx\n\t\t\t\t}", "smtp handler takes no block", "Testfile:7"},
	} {
		_, err := adapt(bad.in)
		if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), bad.at) {
			t.Errorf("%q: %v, want %q at %s", bad.in, err, bad.want, bad.at)
		}
	}
}
