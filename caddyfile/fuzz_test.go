package caddyfile

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// fuzzCaddyfile wraps body as the body of the smtp global option.
func fuzzCaddyfile(body string) []byte {
	return []byte("{\n\tsmtp {\n" + body + "\n\t}\n}\n")
}

// FuzzCaddyfile adapts a Caddyfile whose smtp global option has a random
// body (which may close the option early and go on with other global
// options or site blocks) and asserts:
//
//   - the adapter does not panic;
//   - it is deterministic: adapting the same input again gives the same
//     JSON, the same warnings and the same error;
//   - when it adapts, apps.smtp (if present) decodes strictly
//     (DisallowUnknownFields) into smtpapp.App, survives a round trip
//     through it unchanged, and every module inside it (route targets,
//     trust pools) decodes strictly into its module's type and survives
//     a round trip too (checkModuleJSON, as for the goldens).
//
// Inputs with "import" are skipped: the import directive reads files,
// and a fuzzer must not make the adapter read /dev/zero or glob /.
// The seeds in testdata/fuzz/FuzzCaddyfile are the smtp bodies of the
// goldens in testdata/.
func FuzzCaddyfile(f *testing.F) {
	for _, body := range []string{
		"",
		"server mx",
		"queue {\n\tpath /var/spool/smtp\n\thold\n}\nserver mx {\n\tlisten :25 127.0.0.1:2525\n\ttls encrypt\n\taccept_domains example.com\n\trelay_networks 10.0.0.0/8\n\troute * {\n\t\tmaildir /var/mail/{domain}/{local}\n\t}\n}",
		"server a {\n\tmax_message_size 25MiB\n\tread_timeout 1d12h\n\troute example.com {\n\t\trelay 10.0.0.5:587 {\n\t\t\ttls verify {\n\t\t\t\ttrust_pool pki_root local\n\t\t\t}\n\t\t\tauth u {env.PW}\n\t\t}\n\t}\n}",
		"server a {\n\troute *\n}\nserver a",
		"}\n}\nexample.com {\n\trespond hi\n",
	} {
		f.Add(body)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		f.Fatal("no caddyfile adapter registered")
	}
	f.Fuzz(func(t *testing.T, body string) {
		if len(body) > 8<<10 {
			t.Skip("input too large")
		}
		if strings.Contains(body, "import") {
			t.Skip("import reads files")
		}
		input := fuzzCaddyfile(body)
		out, warnings, err := adapter.Adapt(input, map[string]any{"filename": "Caddyfile"})
		out2, warnings2, err2 := adapter.Adapt(input, map[string]any{"filename": "Caddyfile"})
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("adapting twice: errors differ: %v / %v", err, err2)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("adapting twice: JSON differs:\n%s\n%s", out, out2)
		}
		if !reflect.DeepEqual(warnings, warnings2) {
			t.Fatalf("adapting twice: warnings differ:\n%v\n%v", warnings, warnings2)
		}
		if err != nil {
			return
		}

		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapter output is not a JSON config: %v\n%s", err, out)
		}
		smtpJSON, ok := cfg.Apps["smtp"]
		if !ok {
			return // e.g. the body closed the option and nothing produced the app
		}
		dec := json.NewDecoder(bytes.NewReader(smtpJSON))
		dec.DisallowUnknownFields()
		var app smtpapp.App
		if err := dec.Decode(&app); err != nil {
			t.Fatalf("apps.smtp does not decode strictly into smtpapp.App: %v\n%s", err, smtpJSON)
		}
		again, err := json.Marshal(&app)
		if err != nil {
			t.Fatalf("re-marshalling apps.smtp: %v", err)
		}
		wantV, want := canonicalJSON(t, "apps.smtp", smtpJSON)
		gotV, got := canonicalJSON(t, "re-marshalled", again)
		if !reflect.DeepEqual(wantV, gotV) {
			t.Fatalf("apps.smtp changes in a round trip through smtpapp.App:\n%s", lineDiff(want, got))
		}
		coveredPaths(reflect.TypeFor[smtpapp.App](), wantV, "", map[string]bool{},
			func(path, id string, obj map[string]any, inlineKey string) {
				checkModuleJSON(t, "fuzz input", path, id, obj, inlineKey)
			})
	})
}
