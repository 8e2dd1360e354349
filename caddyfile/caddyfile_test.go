package caddyfile

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage" // the `storage file_system` global option

	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav" // the checks
	_ "github.com/caddy-smtp/caddy-smtp/checks/milter"
	_ "github.com/caddy-smtp/caddy-smtp/checks/rspamd"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir" // the route targets
	_ "github.com/caddy-smtp/caddy-smtp/delivery/mx"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/relay"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json from the adapter's output")

// adapt runs the Caddyfile adapter (httpcaddyfile, which this package
// extends with the smtp global option) on input.
func adapt(t *testing.T, filename string, input []byte) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("no caddyfile adapter registered")
	}
	return adapter.Adapt(input, map[string]any{"filename": filename})
}

// canonicalJSON re-indents a JSON document with sorted keys, so that two
// semantically equal documents print the same.
func canonicalJSON(t *testing.T, name string, b []byte) (any, string) {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", name, err, b)
	}
	out, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	return v, string(out)
}

// lineDiff is a small LCS line diff with three lines of context: "-"
// lines are only in want, "+" lines only in got.
func lineDiff(want, got string) string {
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var lines []string
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			lines = append(lines, "  "+a[i])
			i++
			j++
		case i < len(a) && (j == len(b) || lcs[i+1][j] >= lcs[i][j+1]):
			lines = append(lines, "- "+a[i])
			i++
		default:
			lines = append(lines, "+ "+b[j])
			j++
		}
	}
	const context = 3
	var sb strings.Builder
	last := -1
	for k, l := range lines {
		near := false
		for d := max(0, k-context); d <= min(len(lines)-1, k+context); d++ {
			if !strings.HasPrefix(lines[d], "  ") {
				near = true
				break
			}
		}
		if !near {
			continue
		}
		if last >= 0 && k > last+1 {
			sb.WriteString("  ...\n")
		}
		sb.WriteString(l + "\n")
		last = k
	}
	return sb.String()
}

// TestGolden adapts every testdata/*.caddyfile and compares the full
// config with the hand-written testdata/*.json beside it. The JSON
// files are the spec: check them against the field docs of package
// smtpapp, do not just regenerate them (-update) and commit.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "*.caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no testdata/*.caddyfile")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".caddyfile")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			out, warnings, err := adapt(t, in, src)
			if err != nil {
				t.Fatalf("adapting %s: %v", in, err)
			}
			for _, w := range warnings {
				t.Errorf("adapting %s: warning: %s", in, w)
			}
			goldenPath := strings.TrimSuffix(in, ".caddyfile") + ".json"
			gotV, got := canonicalJSON(t, "adapted "+in, out)
			if *update {
				if err := os.WriteFile(goldenPath, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantRaw, err := os.ReadFile(goldenPath)
			if err != nil {
				t.Fatalf("%v (run with -update to create it, then check it by hand)", err)
			}
			wantV, want := canonicalJSON(t, goldenPath, wantRaw)
			if !reflect.DeepEqual(wantV, gotV) {
				t.Errorf("%s adapts to a different config than %s (- want, + got):\n%s",
					in, goldenPath, lineDiff(want, got))
			}
		})
	}
}

// TestGoldenJSONIsAppConfig decodes the smtp app of every golden JSON
// strictly into smtpapp.App: a misspelled or nonexistent field in a
// golden (or in the adapter's output) fails here.
func TestGoldenJSONIsAppConfig(t *testing.T) {
	goldens, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, g := range goldens {
		t.Run(filepath.Base(g), func(t *testing.T) {
			smtpJSON := goldenSMTPApp(t, g)
			dec := json.NewDecoder(bytes.NewReader(smtpJSON))
			dec.DisallowUnknownFields()
			var app smtpapp.App
			if err := dec.Decode(&app); err != nil {
				t.Fatalf("apps.smtp of %s does not decode into smtpapp.App: %v", g, err)
			}
			// and it must survive a round trip unchanged
			again, err := json.Marshal(&app)
			if err != nil {
				t.Fatal(err)
			}
			wantV, want := canonicalJSON(t, g, smtpJSON)
			gotV, got := canonicalJSON(t, "re-marshalled", again)
			if !reflect.DeepEqual(wantV, gotV) {
				t.Errorf("apps.smtp of %s changes in a round trip through smtpapp.App:\n%s", g, lineDiff(want, got))
			}
			// The modules inside (route targets, trust pools) are raw
			// JSON to smtpapp.App: decode each into its module's type.
			coveredPaths(reflect.TypeFor[smtpapp.App](), wantV, "", map[string]bool{},
				func(path, id string, obj map[string]any, inlineKey string) {
					checkModuleJSON(t, g, path, id, obj, inlineKey)
				})
		})
	}
}

// checkModuleJSON decodes the module object obj (found at path in golden
// g) strictly into a new instance of module id, and checks that it
// survives a round trip.
func checkModuleJSON(t *testing.T, g, path, id string, obj map[string]any, inlineKey string) {
	t.Helper()
	info, err := caddy.GetModule(id)
	if err != nil {
		t.Errorf("apps.smtp.%s of %s: %v", path, g, err)
		return
	}
	rest := maps.Clone(obj)
	delete(rest, inlineKey)
	raw, err := json.Marshal(rest)
	if err != nil {
		t.Fatal(err)
	}
	mod := info.New()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(mod); err != nil {
		t.Errorf("apps.smtp.%s of %s does not decode into module %s: %v", path, g, id, err)
		return
	}
	again, err := json.Marshal(mod)
	if err != nil {
		t.Fatal(err)
	}
	wantV, want := canonicalJSON(t, g, raw)
	gotV, got := canonicalJSON(t, "re-marshalled", again)
	if !reflect.DeepEqual(wantV, gotV) {
		t.Errorf("apps.smtp.%s of %s changes in a round trip through module %s:\n%s", path, g, id, lineDiff(want, got))
	}
}

func goldenSMTPApp(t *testing.T, path string) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	smtpJSON, ok := cfg.Apps["smtp"]
	if !ok {
		t.Fatalf("%s has no apps.smtp", path)
	}
	return smtpJSON
}

// TestGoldensCoverEveryField walks the JSON fields of smtpapp.App and
// fails for any that no golden sets: the design wants every JSON field to
// have a Caddyfile form, and the goldens to show it. A new field needs a
// directive and a golden (testdata/*.caddyfile + .json) here.
//
// It walks into the modules of our own namespaces (ownNamespaces): every
// registered delivery target must appear in a golden, as a path like
// servers.*.routes[].deliver(relay), and so must each of its fields,
// down to its tls (delivery.ClientTLS). Modules of other namespaces
// (Caddy's CA pools under trust_pool) are opaque: the field must be set,
// not every field of every pool.
func TestGoldensCoverEveryField(t *testing.T) {
	for ns := range ownNamespaces {
		if len(caddy.GetModules(ns)) == 0 {
			t.Fatalf("no module registered in namespace %s: import the delivery modules", ns)
		}
	}
	required := map[string]bool{}
	jsonFieldPaths(reflect.TypeFor[smtpapp.App](), "", required, map[reflect.Type]bool{})

	covered := map[string]bool{}
	goldens, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, g := range goldens {
		var v any
		if err := json.Unmarshal(goldenSMTPApp(t, g), &v); err != nil {
			t.Fatal(err)
		}
		coveredPaths(reflect.TypeFor[smtpapp.App](), v, "", covered, nil)
	}
	var missing []string
	for p := range required {
		if !covered[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	for _, p := range missing {
		t.Errorf("JSON field apps.smtp.%s is set by no golden in testdata/: give it a Caddyfile form and a golden", p)
	}
	// the walk itself must reach into the targets and their tls
	for _, p := range []string{
		"servers.*.routes[].deliver(relay).addresses",
		"servers.*.routes[].deliver(relay).tls.trust_pool",
		"servers.*.routes[].deliver(mx).port",
		"servers.*.routes[].deliver(maildir).path",
	} {
		if !required[p] {
			t.Errorf("the field walk does not reach apps.smtp.%s", p)
		}
	}
}

// ownNamespaces are the module namespaces whose modules the field walk
// of TestGoldensCoverEveryField descends into.
var ownNamespaces = map[string]bool{"smtp.delivery": true}

// moduleField reports the namespace and inline key of a field that holds
// one inline Caddy module (json.RawMessage tagged
// `caddy:"namespace=... inline_key=..."`).
func moduleField(f reflect.StructField) (namespace, inlineKey string, ok bool) {
	if f.Type != reflect.TypeFor[json.RawMessage]() {
		return "", "", false
	}
	for _, kv := range strings.Fields(f.Tag.Get("caddy")) {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "namespace":
			namespace = v
		case "inline_key":
			inlineKey = v
		}
	}
	return namespace, inlineKey, namespace != "" && inlineKey != ""
}

// jsonField returns the JSON name of a struct field, or "" if it is not
// marshalled.
func jsonField(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("json")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		name = f.Name
	}
	return name
}

// leafType reports whether t marshals as a JSON scalar or opaque value
// rather than as an object we should walk into.
func leafType(t reflect.Type) bool {
	if t == reflect.TypeFor[json.RawMessage]() || t == reflect.TypeFor[caddy.Duration]() {
		return true
	}
	if _, ok := reflect.New(t).Interface().(json.Marshaler); ok {
		return true
	}
	return false
}

func jsonFieldPaths(t reflect.Type, prefix string, out map[string]bool, seen map[reflect.Type]bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case leafType(t):
		return
	case t.Kind() == reflect.Struct:
		if seen[t] {
			return
		}
		seen[t] = true
		defer delete(seen, t)
		for f := range t.Fields() {
			name := jsonField(f)
			if name == "" {
				continue
			}
			out[prefix+name] = true
			if ns, _, ok := moduleField(f); ok {
				if ownNamespaces[ns] {
					for _, m := range caddy.GetModules(ns) {
						p := prefix + name + "(" + m.ID.Name() + ")"
						out[p] = true
						jsonFieldPaths(reflect.TypeOf(m.New()), p+".", out, seen)
					}
				}
				continue
			}
			jsonFieldPaths(f.Type, prefix+name+".", out, seen)
		}
	case t.Kind() == reflect.Map:
		jsonFieldPaths(t.Elem(), prefix+"*.", out, seen)
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		if t.Elem().Kind() != reflect.Uint8 {
			jsonFieldPaths(t.Elem(), strings.TrimSuffix(prefix, ".")+"[].", out, seen)
		}
	}
}

// coveredPaths records in out the field paths of type t that the JSON
// value v sets. Module fields are followed into the module named by
// their inline key, as path(name); onModule, if not nil, sees every
// module object on the way.
func coveredPaths(t reflect.Type, v any, prefix string, out map[string]bool,
	onModule func(path, id string, obj map[string]any, inlineKey string)) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if leafType(t) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return
		}
		for f := range t.Fields() {
			name := jsonField(f)
			if name == "" {
				continue
			}
			fv, ok := obj[name]
			if !ok {
				continue
			}
			out[prefix+name] = true
			if ns, key, isMod := moduleField(f); isMod {
				modObj, ok := fv.(map[string]any)
				if !ok {
					continue
				}
				modName, _ := modObj[key].(string)
				p := prefix + name + "(" + modName + ")"
				out[p] = true
				if onModule != nil {
					onModule(p, ns+"."+modName, modObj, key)
				}
				if info, err := caddy.GetModule(ns + "." + modName); err == nil {
					coveredPaths(reflect.TypeOf(info.New()), modObj, p+".", out, onModule)
				}
				continue
			}
			coveredPaths(f.Type, fv, prefix+name+".", out, onModule)
		}
	case reflect.Map:
		if obj, ok := v.(map[string]any); ok {
			for _, ev := range obj {
				coveredPaths(t.Elem(), ev, prefix+"*.", out, onModule)
			}
		}
	case reflect.Slice, reflect.Array:
		if arr, ok := v.([]any); ok {
			for _, ev := range arr {
				coveredPaths(t.Elem(), ev, strings.TrimSuffix(prefix, ".")+"[].", out, onModule)
			}
		}
	}
}

// TestErrors checks that every bad input fails to adapt with an error
// that names the file and line of the offending token and says what is
// wrong.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		line  int      // expected line in "Testfile:<line>"
		want  []string // phrases the error must contain
	}{
		{
			name: "unknown directive at smtp level",
			input: `{
	smtp {
		queue {
			path /tmp/q
		}
		servers mx
	}
}
`,
			line: 6,
			want: []string{`unknown smtp directive "servers"`},
		},
		{
			name: "unknown directive at server level",
			input: `{
	smtp {
		server mx {
			listen :25
			max_size 10MB
		}
	}
}
`,
			line: 5,
			want: []string{`unknown server directive "max_size"`},
		},
		{
			name: "unknown directive at tls level",
			input: `{
	smtp {
		server mx {
			tls may {
				client_auth none
				min_version tls1.2
			}
		}
	}
}
`,
			line: 6,
			want: []string{`unknown tls directive "min_version"`},
		},
		{
			name: "unknown directive at queue level",
			input: `{
	smtp {
		queue {
			dir /var/spool/smtp
		}
	}
}
`,
			line: 4,
			want: []string{`unknown queue directive "dir"`},
		},
		{
			name: "wrong tls level",
			input: `{
	smtp {
		server mx {
			tls secure
		}
	}
}
`,
			line: 4,
			want: []string{`tls level "secure" is not one of none, may, encrypt`},
		},
		{
			name: "empty tls level",
			input: `{
	smtp {
		server mx {
			tls ""
		}
	}
}
`,
			line: 4,
			want: []string{`tls level "" is not one of none, may, encrypt`},
		},
		{
			name: "tls with two levels",
			input: `{
	smtp {
		server mx {
			tls may encrypt
		}
	}
}
`,
			line: 4,
			want: []string{"wrong argument count"},
		},
		{
			name: "duplicate tls",
			input: `{
	smtp {
		server mx {
			tls may
			tls encrypt
		}
	}
}
`,
			line: 5,
			want: []string{"duplicate tls"},
		},
		{
			name: "wrong client_auth",
			input: `{
	smtp {
		server mx {
			tls encrypt {
				client_auth verify
			}
		}
	}
}
`,
			line: 5,
			want: []string{"client_auth", `"verify" is not one of none, request, require`},
		},
		{
			name: "bad size",
			input: `{
	smtp {
		server mx {
			max_message_size lots
		}
	}
}
`,
			line: 4,
			want: []string{`max_message_size: "lots" is not a size`},
		},
		{
			name: "negative size",
			input: `{
	smtp {
		server mx {
			max_message_size -1
		}
	}
}
`,
			line: 4,
			want: []string{`max_message_size: "-1" is not a size`},
		},
		{
			name: "zero size",
			input: `{
	smtp {
		server mx {
			max_message_size 0
		}
	}
}
`,
			line: 4,
			want: []string{`max_message_size: "0" must be above zero`},
		},
		{
			name: "size too large",
			input: `{
	smtp {
		server mx {
			max_message_size 2TiB
		}
	}
}
`,
			line: 4,
			want: []string{`max_message_size: "2TiB" is too large`},
		},
		{
			name: "size with a space",
			input: `{
	smtp {
		server mx {
			max_message_size 25 MiB
		}
	}
}
`,
			line: 4,
			want: []string{"max_message_size takes one argument"},
		},
		{
			name: "bad duration",
			input: `{
	smtp {
		server mx {
			read_timeout soon
		}
	}
}
`,
			line: 4,
			want: []string{`read_timeout: "soon" is not a duration (like 30s, 5m, 5d)`},
		},
		{
			name: "bad queue max_age",
			input: `{
	smtp {
		queue {
			max_age forever
		}
	}
}
`,
			line: 4,
			want: []string{`max_age: "forever" is not a duration (like 30s, 5m, 5d)`},
		},
		{
			name: "negative duration",
			input: `{
	smtp {
		server mx {
			data_timeout -5m
		}
	}
}
`,
			line: 4,
			want: []string{`data_timeout: "-5m" must not be negative`},
		},
		{
			name: "negative number",
			input: `{
	smtp {
		server mx {
			max_recipients -3
		}
	}
}
`,
			line: 4,
			want: []string{`max_recipients: "-3" is not a whole number`},
		},
		{
			name: "not a number",
			input: `{
	smtp {
		server mx {
			max_recipients x
		}
	}
}
`,
			line: 4,
			want: []string{`max_recipients: "x" is not a whole number`},
		},
		{
			name: "missing server name",
			input: `{
	smtp {
		server {
			listen :25
		}
	}
}
`,
			line: 3,
			want: []string{"server needs a name"},
		},
		{
			name: "server with two names",
			input: `{
	smtp {
		server mx submission {
			listen :25
		}
	}
}
`,
			line: 3,
			want: []string{"wrong argument count"},
		},
		{
			name: "duplicate server",
			input: `{
	smtp {
		server mx {
			listen :25
		}
		server mx {
			listen :2525
		}
	}
}
`,
			line: 6,
			want: []string{`duplicate server "mx"`},
		},
		{
			name: "duplicate queue",
			input: `{
	smtp {
		queue {
			path /a
		}
		queue {
			path /b
		}
	}
}
`,
			line: 6,
			want: []string{"duplicate queue"},
		},
		{
			name: "two smtp global options",
			input: `{
	smtp {
		server mx
	}
	smtp {
		server submission
	}
}
`,
			line: 5,
			want: []string{"the smtp global option may appear only once"},
		},
		{
			name: "smtp option with an argument",
			input: `{
	smtp mx {
		server mx
	}
}
`,
			line: 2,
			want: []string{"wrong argument count"},
		},
		{
			name: "protocols tls1.0",
			input: `{
	smtp {
		server mx {
			tls {
				protocols tls1.0
			}
		}
	}
}
`,
			line: 5,
			want: []string{"protocols", `"tls1.0" is not one of tls1.2, tls1.3`},
		},
		{
			name: "protocols with three versions",
			input: `{
	smtp {
		server mx {
			tls {
				protocols tls1.2 tls1.3 tls1.3
			}
		}
	}
}
`,
			line: 5,
			want: []string{"protocols needs a minimum and optionally a maximum"},
		},
		{
			name: "protocols with none",
			input: `{
	smtp {
		server mx {
			tls {
				protocols
			}
		}
	}
}
`,
			line: 5,
			want: []string{"protocols needs a minimum"},
		},
		{
			name: "certificate with one file",
			input: `{
	smtp {
		server mx {
			tls {
				certificate onlyone
			}
		}
	}
}
`,
			line: 5,
			want: []string{"certificate needs two arguments"},
		},
		{
			name: "certificate with three files",
			input: `{
	smtp {
		server mx {
			tls {
				certificate a.pem a.key extra
			}
		}
	}
}
`,
			line: 5,
			want: []string{"certificate needs two arguments"},
		},
		{
			name: "session_tickets maybe",
			input: `{
	smtp {
		server mx {
			tls {
				session_tickets maybe
			}
		}
	}
}
`,
			line: 5,
			want: []string{"session_tickets", `"maybe" is not on or off`},
		},
		{
			name: "implicit with an argument",
			input: `{
	smtp {
		server mx {
			tls {
				implicit yes
			}
		}
	}
}
`,
			line: 5,
			want: []string{"wrong argument count"},
		},
		{
			name: "bare_newlines sometimes",
			input: `{
	smtp {
		server mx {
			bare_newlines sometimes
		}
	}
}
`,
			line: 4,
			want: []string{"bare_newlines", `"sometimes" is not one of reject, normalize`},
		},
		{
			name: "requiretls with an argument",
			input: `{
	smtp {
		server mx {
			requiretls on
		}
	}
}
`,
			line: 4,
			want: []string{"wrong argument count"},
		},
		{
			name: "listen without addresses",
			input: `{
	smtp {
		server mx {
			hostname mx.example.com
			listen
		}
	}
}
`,
			line: 5,
			want: []string{"listen needs at least one argument"},
		},
		{
			name: "accept_domains without domains",
			input: `{
	smtp {
		server mx {
			accept_domains
		}
	}
}
`,
			line: 4,
			want: []string{"accept_domains needs at least one argument"},
		},
		{
			name: "client_ca without files",
			input: `{
	smtp {
		server mx {
			tls {
				client_ca
			}
		}
	}
}
`,
			line: 5,
			want: []string{"client_ca needs at least one argument"},
		},
		{
			name: "hostname without a name",
			input: `{
	smtp {
		server mx {
			listen :25
			hostname
		}
	}
}
`,
			line: 5,
			want: []string{"hostname needs one argument"},
		},
		{
			name: "hostname with two names",
			input: `{
	smtp {
		server mx {
			hostname mx.example.com mx2.example.com
		}
	}
}
`,
			line: 4,
			want: []string{"hostname takes one argument"},
		},
		{
			name: "queue path without a directory",
			input: `{
	smtp {
		queue {
			path
		}
	}
}
`,
			line: 4,
			want: []string{"path needs one argument"},
		},
		{
			name: "queue with an argument",
			input: `{
	smtp {
		queue /var/spool/smtp
	}
}
`,
			line: 3,
			want: []string{"wrong argument count"},
		},
		{
			name: "protocols minimum above maximum",
			input: `{
	smtp {
		server mx {
			tls {
				protocols tls1.3 tls1.2
			}
		}
	}
}
`,
			line: 5,
			want: []string{"protocols: the minimum tls1.3 is above the maximum tls1.2"},
		},
		{
			name: "queue workers not a number",
			input: `{
	smtp {
		queue {
			workers many
		}
	}
}
`,
			line: 4,
			want: []string{`workers: "many" is not a whole number`},
		},
		{
			name: "negative max_per_destination",
			input: `{
	smtp {
		queue {
			max_per_destination -1
		}
	}
}
`,
			line: 4,
			want: []string{`max_per_destination: "-1" is not a whole number`},
		},
		{
			name: "bad min_retry_interval",
			input: `{
	smtp {
		queue {
			min_retry_interval often
		}
	}
}
`,
			line: 4,
			want: []string{`min_retry_interval: "often" is not a duration (like 30s, 5m, 5d)`},
		},
		{
			name: "negative max_retry_interval",
			input: `{
	smtp {
		queue {
			max_retry_interval -1h
		}
	}
}
`,
			line: 4,
			want: []string{`max_retry_interval: "-1h" must not be negative`},
		},
		{
			name: "hold with an argument",
			input: `{
	smtp {
		queue {
			hold on
		}
	}
}
`,
			line: 4,
			want: []string{"wrong argument count"},
		},
		// routes
		{
			name: "route without domains",
			input: `{
	smtp {
		server mx {
			route {
				mx
			}
		}
	}
}
`,
			line: 4,
			want: []string{"route needs one or more recipient domains, or *"},
		},
		{
			name: "route without a target",
			input: `{
	smtp {
		server mx {
			route example.com
		}
	}
}
`,
			line: 4,
			want: []string{"route (line", "needs a delivery target: relay, mx or maildir"},
		},
		{
			name: "route with an empty block",
			input: `{
	smtp {
		server mx {
			route example.com {
			}
		}
	}
}
`,
			line: 5, // the closing brace: the parser notices at the block's end
			want: []string{"route (line", "needs a delivery target: relay, mx or maildir"},
		},
		{
			name: "route with two targets",
			input: `{
	smtp {
		server mx {
			route * {
				mx
				maildir /var/mail
			}
		}
	}
}
`,
			line: 6,
			want: []string{"route has more than one delivery target (maildir)"},
		},
		{
			name: "unknown delivery target",
			input: `{
	smtp {
		server mx {
			route * {
				carrier pigeon
			}
		}
	}
}
`,
			line: 5,
			want: []string{"smtp.delivery.carrier"},
		},
		{
			name: "relay without an address",
			input: `{
	smtp {
		server mx {
			route * {
				relay
			}
		}
	}
}
`,
			line: 5,
			want: []string{"relay needs at least one smarthost address"},
		},
		{
			name: "relay with a block but no address",
			input: `{
	smtp {
		server mx {
			route * {
				relay {
					tls encrypt
				}
			}
		}
	}
}
`,
			line: 5,
			want: []string{"relay needs at least one smarthost address"},
		},
		{
			name: "relay tls unknown level",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					tls strict
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{`tls level "strict" is not one of none, may, encrypt, verify, secure, fingerprint`},
		},
		{
			name: "relay tls with two levels",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					tls verify may
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{"wrong argument count"},
		},
		{
			name: "relay duplicate tls",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					tls verify
					tls may
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{"duplicate tls"},
		},
		{
			name: "unknown relay directive",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					starttls on
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{`unknown relay directive "starttls"`},
		},
		{
			name: "relay auth without a password",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					auth alice
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{"auth needs two arguments: <username> <password>"},
		},
		{
			name: "unknown directive in a target's tls",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net:587 {
					tls verify {
						client_auth require
					}
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{`unknown tls directive "client_auth"`},
		},
		{
			name: "target tls protocols tls1.0",
			input: `{
	smtp {
		server mx {
			route * {
				mx {
					tls {
						protocols tls1.0
					}
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{`protocols: "tls1.0" is not one of tls1.2, tls1.3`},
		},
		{
			name: "target tls server_name without a name",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net {
					tls verify {
						server_name
					}
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{"wrong argument count"},
		},
		{
			name: "trust_pool without a module",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net {
					tls verify {
						trust_pool
					}
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{"trust_pool needs a CA pool module"},
		},
		{
			name: "trust_pool with an unknown module",
			input: `{
	smtp {
		server mx {
			route * {
				relay smtp.example.net {
					tls verify {
						trust_pool vault /secret/ca
					}
				}
			}
		}
	}
}
`,
			line: 7,
			want: []string{"tls.ca_pool.source.vault"},
		},
		{
			name: "unknown mx directive",
			input: `{
	smtp {
		server mx {
			route * {
				mx {
					priority 10
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{`unknown mx directive "priority"`},
		},
		{
			name: "mx with an argument",
			input: `{
	smtp {
		server mx {
			route * {
				mx example.net
			}
		}
	}
}
`,
			line: 5,
			want: []string{"wrong argument count"},
		},
		{
			name: "mx port out of range",
			input: `{
	smtp {
		server mx {
			route * {
				mx {
					port 99999
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{`port: "99999" is not a port`},
		},
		{
			name: "mx resolver without an address",
			input: `{
	smtp {
		server mx {
			route * {
				mx {
					resolver
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{"wrong argument count"},
		},
		{
			name: "maildir without a path",
			input: `{
	smtp {
		server mx {
			route example.org {
				maildir
			}
		}
	}
}
`,
			line: 5,
			want: []string{"maildir needs a path"},
		},
		{
			name: "maildir with two paths",
			input: `{
	smtp {
		server mx {
			route example.org {
				maildir /var/mail/a /var/mail/b
			}
		}
	}
}
`,
			line: 5,
			want: []string{"wrong argument count"},
		},
		{
			name: "maildir with a block",
			input: `{
	smtp {
		server mx {
			route example.org {
				maildir /var/mail {
					mode 0700
				}
			}
		}
	}
}
`,
			line: 6,
			want: []string{"maildir takes no block"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := adapt(t, "Testfile", []byte(tc.input))
			if err == nil {
				t.Fatalf("adapting succeeded, want an error; got config:\n%s", out)
			}
			msg := err.Error()
			if !regexp.MustCompile(fmt.Sprintf(`\bTestfile:%d\b`, tc.line)).MatchString(msg) {
				t.Errorf("error does not name Testfile:%d:\n%s", tc.line, msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not say %q:\n%s", w, msg)
				}
			}
		})
	}
}

// validateConfig adapts a Caddyfile whose smtp option holds smtpBody
// (with the queue, storage and the local CA confined to a temporary
// directory, and the system trust store left alone), lets patch edit the
// JSON, and validates the result with caddy.Validate: it provisions
// every app (the smtp app's servers, the tls and pki apps it needs)
// without starting them, so no port is bound.
func validateConfig(t *testing.T, smtpBody string, patch func(smtp map[string]any)) error {
	t.Helper()
	return validateConfigQueue(t, "", smtpBody, patch)
}

// validateConfigQueue is validateConfig with queueBody added to the
// queue block.
func validateConfigQueue(t *testing.T, queueBody, smtpBody string, patch func(smtp map[string]any)) error {
	t.Helper()
	dir := t.TempDir()
	// Anything that still asks for Caddy's data or config directory
	// lands in the temporary directory too.
	t.Setenv("HOME", dir)
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))

	queue, storage := filepath.Join(dir, "queue"), filepath.Join(dir, "storage")
	input := fmt.Sprintf(`{
	skip_install_trust
	storage file_system %q
	smtp {
		queue {
			path %q
%s
		}
%s
	}
}
`, storage, queue, queueBody, smtpBody)
	out, _, err := adapt(t, "Testfile", []byte(input))
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", input, err)
	}

	var cfgMap map[string]any
	if err := json.Unmarshal(out, &cfgMap); err != nil {
		t.Fatal(err)
	}
	apps := cfgMap["apps"].(map[string]any)
	pki, _ := json.Marshal(apps["pki"])
	if string(pki) != `{"certificate_authorities":{"local":{"install_trust":false}}}` {
		t.Fatalf("adapted config does not keep the local CA out of the trust store: apps.pki = %s", pki)
	}
	if st, _ := json.Marshal(cfgMap["storage"]); !strings.Contains(string(st), storage) {
		t.Fatalf("adapted config does not use the temporary storage: storage = %s", st)
	}
	smtp := apps["smtp"].(map[string]any)
	if smtp["queue"].(map[string]any)["path"] != queue {
		t.Fatalf("adapted config does not use the temporary queue: %v", smtp["queue"])
	}
	if patch != nil {
		patch(smtp)
	}
	cfgJSON, err := json.Marshal(cfgMap)
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfgJSON, &cfg); err != nil {
		t.Fatalf("adapted config is not a caddy.Config: %v\n%s", err, cfgJSON)
	}
	return caddy.Validate(&cfg)
}

// writeCAPEM writes a self-signed CA certificate to a temporary file, for
// trust_pool file, and returns its path.
func writeCAPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caddyfile test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// server returns servers.<name> of an smtp app's JSON, for patching.
func server(smtp map[string]any, name string) map[string]any {
	return smtp["servers"].(map[string]any)[name].(map[string]any)
}

// routes returns a patch that sets servers.<name>.routes.
func routes(name string, rs ...any) func(smtp map[string]any) {
	return func(smtp map[string]any) { server(smtp, name)["routes"] = rs }
}

// tlsOf returns servers.<name>.tls of an smtp app's JSON, creating it.
func tlsOf(smtp map[string]any, name string) map[string]any {
	s := server(smtp, name)
	if s["tls"] == nil {
		s["tls"] = map[string]any{}
	}
	return s["tls"].(map[string]any)
}

// TestValidateGood is the control for TestValidateErrors: configs that
// must load, so that an error there is the config's and not the
// harness's.
func TestValidateGood(t *testing.T) {
	caPEM := writeCAPEM(t)
	for _, tc := range []struct{ name, queue, body string }{
		{"no tls at all", "", `
		server plain {
			listen 127.0.0.1:2525
			hostname mx.example.com
			tls none
			accept_domains example.com *.example.org
			relay_networks 10.0.0.0/8 192.0.2.1 2001:db8::/32
			max_message_size 10MB
			max_line_length 512
			bare_newlines normalize
		}`},
		{"managed certificate from the internal CA", "", `
		server mx {
			listen 127.0.0.1:2525
			hostname localhost
			tls encrypt {
				client_auth require
				protocols tls1.2 tls1.3
				ciphers TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
				session_tickets off
			}
			read_timeout 1m
			requiretls
		}
		server submissions {
			listen 127.0.0.1:4650
			hostname localhost
			tls {
				implicit
			}
		}`},
		{"every queue directive", `
			max_age 3d
			min_retry_interval 2m
			max_retry_interval 2h
			workers 4
			max_per_destination 2
			hold`, `
		server mx {
			hostname localhost
			tls none
		}`},
		{"every delivery target", "", fmt.Sprintf(`
		server gateway {
			listen 127.0.0.1:2525
			hostname localhost
			tls none
			route example.com *.example.com {
				relay 127.0.0.1:2526 mail.internal {
					tls verify {
						server_name mail.internal
						trust_pool file %q
						protocols tls1.2 tls1.3
					}
					auth relayuser {env.RELAY_PASSWORD}
				}
			}
			route internal.example {
				relay 127.0.0.1:2527 {
					tls verify {
						trust_pool pki_root local
					}
				}
			}
			route example.org {
				maildir /var/mail/{domain}/{local}
			}
			route legacy.example {
				relay 192.0.2.25 {
					tls none
				}
			}
			route * {
				mx {
					tls may
					resolver 127.0.0.1:5353
					port 2525
				}
			}
		}
		server mailbox {
			hostname localhost
			tls none
			route * {
				mx
			}
		}`, caPEM)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validateConfigQueue(t, tc.queue, tc.body, nil); err != nil {
				t.Fatalf("valid config does not load: %v", err)
			}
		})
	}
}

// TestValidateErrors: configs the Caddyfile parser accepts (or JSON the
// parser cannot produce) that the smtp app must refuse at provisioning,
// with an error naming the JSON field.
func TestValidateErrors(t *testing.T) {
	const plainMX = "\t\tserver mx {\n\t\t\thostname localhost\n\t\t\ttls none\n\t\t}"
	for _, tc := range []struct {
		name  string
		queue string // added to the queue block
		body  string
		patch func(smtp map[string]any)
		want  []string
	}{
		{
			name: "client_auth require with level may",
			body: `
		server mx {
			hostname localhost
			tls may {
				client_auth require
			}
		}`,
			want: []string{"servers.mx.tls.client_auth", "require is only valid with level encrypt"},
		},
		{
			name: "client_auth require with the default level",
			body: `
		server mx {
			hostname localhost
			tls {
				client_auth require
			}
		}`,
			want: []string{"servers.mx.tls.client_auth", "require is only valid with level encrypt"},
		},
		{
			name: "level none with implicit",
			body: `
		server mx {
			tls none {
				implicit
			}
		}`,
			want: []string{"servers.mx.tls.implicit", "needs level may or encrypt"},
		},
		{
			name: "level none with client_auth request",
			body: `
		server mx {
			tls none {
				client_auth request
			}
		}`,
			want: []string{"servers.mx.tls.client_auth", "level is none"},
		},
		{
			name: "level none with a certificate",
			body: `
		server mx {
			tls none {
				certificate /nonexistent/mx.pem /nonexistent/mx.key
			}
		}`,
			want: []string{"servers.mx.tls", "level is none"},
		},
		{
			name: "relay network with a bad prefix length",
			body: `
		server mx {
			tls none
			relay_networks 10.0.0.0/33
		}`,
			want: []string{"servers.mx.relay_networks", `"10.0.0.0/33"`},
		},
		{
			name: "relay network that is not an address",
			body: `
		server mx {
			tls none
			relay_networks mynetworks
		}`,
			want: []string{"servers.mx.relay_networks", `"mynetworks"`},
		},
		{
			name: "accept_domains star",
			body: `
		server mx {
			tls none
			accept_domains example.com *
		}`,
			want: []string{"servers.mx.accept_domains", `"*" is not a domain name`},
		},
		{
			name: "max_line_length below 512",
			body: `
		server mx {
			tls none
			max_line_length 100
		}`,
			want: []string{"servers.mx.max_line_length", "512"},
		},
		{
			name: "unsupported cipher",
			body: `
		server mx {
			hostname localhost
			tls {
				ciphers TLS_RSA_WITH_RC4_128_SHA
			}
		}`,
			want: []string{"servers.mx.tls.ciphers", "TLS_RSA_WITH_RC4_128_SHA"},
		},
		{
			name: "client_ca without client_auth",
			body: `
		server mx {
			hostname localhost
			tls {
				client_ca /nonexistent/ca.pem
			}
		}`,
			want: []string{"servers.mx.tls.client_ca", "client_auth is none"},
		},
		{
			name: "client_ca file missing",
			body: `
		server mx {
			hostname localhost
			tls {
				client_auth request
				client_ca /nonexistent/ca.pem
			}
		}`,
			want: []string{"servers.mx.tls.client_ca", "/nonexistent/ca.pem"},
		},
		{
			name: "certificate files missing",
			body: `
		server mx {
			hostname localhost
			tls {
				certificate /nonexistent/mx.pem /nonexistent/mx.key
			}
		}`,
			want: []string{"servers.mx.tls.certificate"},
		},
		{
			name: "listen on udp",
			body: `
		server mx {
			tls none
			listen udp/127.0.0.1:2525
		}`,
			want: []string{"servers.mx.listen", "stream network"},
		},
		{
			name: "hostname with a space",
			body: `
		server mx {
			tls none
			hostname "mx example"
		}`,
			want: []string{"servers.mx.hostname", "not a host name"},
		},
		// JSON the Caddyfile parser refuses to produce.
		{
			name:  "bare_newlines x in JSON",
			body:  "\t\tserver mx {\n\t\t\ttls none\n\t\t}",
			patch: func(smtp map[string]any) { server(smtp, "mx")["bare_newlines"] = "x" },
			want:  []string{"servers.mx.bare_newlines", `"x" is not one of reject, normalize`},
		},
		{
			name:  "tls level secure in JSON",
			body:  "\t\tserver mx",
			patch: func(smtp map[string]any) { tlsOf(smtp, "mx")["level"] = "secure" },
			want:  []string{"servers.mx.tls.level", `"secure" is not one of none, may, encrypt`},
		},
		{
			name:  "client_auth verify in JSON",
			body:  "\t\tserver mx",
			patch: func(smtp map[string]any) { tlsOf(smtp, "mx")["client_auth"] = "verify" },
			want:  []string{"servers.mx.tls.client_auth", `"verify" is not one of none, request, require`},
		},
		{
			name:  "protocols tls1.0 in JSON",
			body:  "\t\tserver mx {\n\t\t\thostname localhost\n\t\t}",
			patch: func(smtp map[string]any) { tlsOf(smtp, "mx")["protocols"] = []any{"tls1.0"} },
			want:  []string{"servers.mx.tls.protocols", `"tls1.0"`},
		},
		{
			name: "three protocols in JSON",
			body: "\t\tserver mx {\n\t\t\thostname localhost\n\t\t}",
			patch: func(smtp map[string]any) {
				tlsOf(smtp, "mx")["protocols"] = []any{"tls1.2", "tls1.3", "tls1.3"}
			},
			want: []string{"servers.mx.tls.protocols"},
		},
		{
			name: "certificate without key in JSON",
			body: "\t\tserver mx {\n\t\t\thostname localhost\n\t\t}",
			patch: func(smtp map[string]any) {
				tlsOf(smtp, "mx")["certificate"] = map[string]any{"certificate": "/nonexistent/mx.pem", "key": ""}
			},
			want: []string{"servers.mx.tls.certificate", "both certificate and key"},
		},
		{
			name:  "negative queue max_age in JSON",
			body:  "\t\tserver mx {\n\t\t\ttls none\n\t\t}",
			patch: func(smtp map[string]any) { smtp["queue"].(map[string]any)["max_age"] = "-1h" },
			want:  []string{"queue.max_age: must not be negative"},
		},
		{
			name:  "negative max_recipients in JSON",
			body:  "\t\tserver mx {\n\t\t\ttls none\n\t\t}",
			patch: func(smtp map[string]any) { server(smtp, "mx")["max_recipients"] = -1 },
			want:  []string{"servers.mx.max_recipients: must not be negative"},
		},
		{
			name: "protocols minimum above maximum in JSON",
			body: "\t\tserver mx {\n\t\t\thostname localhost\n\t\t}",
			patch: func(smtp map[string]any) {
				tlsOf(smtp, "mx")["protocols"] = []any{"tls1.3", "tls1.2"}
			},
			want: []string{"servers.mx.tls.protocols: the minimum tls1.3 is above the maximum tls1.2"},
		},
		{
			name:  "min_retry_interval above max_retry_interval",
			queue: "\t\t\tmin_retry_interval 2h\n\t\t\tmax_retry_interval 1h",
			body:  plainMX,
			want:  []string{"queue.min_retry_interval: above max_retry_interval"},
		},
		{
			name:  "negative workers in JSON",
			body:  plainMX,
			patch: func(smtp map[string]any) { smtp["queue"].(map[string]any)["workers"] = -1 },
			want:  []string{"queue.workers: must not be negative"},
		},
		// routes
		{
			name: "route with empty domains in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{},
				"deliver": map[string]any{"via": "maildir", "path": "/var/mail"},
			}),
			want: []string{"servers.mx.routes[0].domains: at least one domain (or *) is required"},
		},
		{
			name:  "route without deliver in JSON",
			body:  plainMX,
			patch: routes("mx", map[string]any{"domains": []any{"*"}}),
			want:  []string{"servers.mx.routes[0].deliver: a delivery target is required"},
		},
		{
			name: "route domain a*b in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"a*b"},
				"deliver": map[string]any{"via": "maildir", "path": "/var/mail"},
			}),
			want: []string{"servers.mx.routes[0].domains", `"a*b" is not a domain, *.domain or *`},
		},
		{
			name: "route domain with an @",
			body: `
		server mx {
			hostname localhost
			tls none
			route example.com {
				maildir /var/mail
			}
			route user@example.org {
				maildir /var/mail
			}
		}`,
			want: []string{"servers.mx.routes[1].domains", `"user@example.org" is not a domain, *.domain or *`},
		},
		{
			name: "unknown delivery target in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{"via": "carrier"},
			}),
			want: []string{"servers.mx.routes[0].deliver", "smtp.delivery.carrier"},
		},
		{
			name: "relay tls unknown level in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{
					"via":       "relay",
					"addresses": []any{"127.0.0.1:2526"},
					"tls":       map[string]any{"level": "strict"},
				},
			}),
			want: []string{"servers.mx.routes[0].deliver", `tls.level: "strict" is not one of none, may, encrypt, verify, secure, fingerprint`},
		},
		{
			name: "relay without addresses in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{"via": "relay"},
			}),
			want: []string{"servers.mx.routes[0].deliver", "relay: addresses: at least one smarthost is required"},
		},
		{
			name: "relay address with a bad port",
			body: `
		server mx {
			hostname localhost
			tls none
			route * {
				relay mail.internal:99999
			}
		}`,
			want: []string{"servers.mx.routes[0].deliver", `relay: addresses: "mail.internal:99999": bad port`},
		},
		{
			name: "relay auth with tls none",
			body: `
		server mx {
			hostname localhost
			tls none
			route * {
				relay mail.internal:587 {
					tls none
					auth relayuser secret
				}
			}
		}`,
			want: []string{"servers.mx.routes[0].deliver", "relay: username/password need TLS, but tls level is none"},
		},
		{
			name: "relay trust_pool file missing",
			body: `
		server mx {
			hostname localhost
			tls none
			route * {
				relay mail.internal:25 {
					tls verify {
						trust_pool file /nonexistent/ca.pem
					}
				}
			}
		}`,
			want: []string{"servers.mx.routes[0].deliver", "tls.trust_pool", "/nonexistent/ca.pem"},
		},
		{
			name: "target protocols minimum above maximum in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{
					"via": "mx",
					"tls": map[string]any{"protocols": []any{"tls1.3", "tls1.2"}},
				},
			}),
			want: []string{"servers.mx.routes[0].deliver", "mx: tls.protocols: the minimum tls1.3 is above the maximum tls1.2"},
		},
		{
			name: "target protocols tls1.1 in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{
					"via": "mx",
					"tls": map[string]any{"protocols": []any{"tls1.1"}},
				},
			}),
			want: []string{"servers.mx.routes[0].deliver", `tls.protocols: "tls1.1" is not one of tls1.2, tls1.3`},
		},
		{
			name: "mx port out of range in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{"via": "mx", "port": 70000},
			}),
			want: []string{"servers.mx.routes[0].deliver", "mx: port: 70000 is not a port"},
		},
		{
			name: "maildir without path in JSON",
			body: plainMX,
			patch: routes("mx", map[string]any{
				"domains": []any{"*"},
				"deliver": map[string]any{"via": "maildir"},
			}),
			want: []string{"servers.mx.routes[0].deliver", "maildir: path is required"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateConfigQueue(t, tc.queue, tc.body, tc.patch)
			if err == nil {
				t.Fatal("config loaded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
}
