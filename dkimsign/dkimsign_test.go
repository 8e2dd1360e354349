package dkimsign_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/emersion/go-msgauth/dkim"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/dkimsign"
)

// fileStorage is Caddy's default storage, in dir.
func fileStorage(dir string) *certmagic.FileStorage { return &certmagic.FileStorage{Path: dir} }

// newSigner makes a Signer on the storage in dir, failing the test on
// an error.
func newSigner(t *testing.T, dir string, cfg dkimsign.Config) *dkimsign.Signer {
	t.Helper()
	s, err := dkimsign.New(context.Background(), fileStorage(dir), &cfg, "servers.out.dkim", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// lookup answers TXT queries from records, as DNS would once they are
// published; a name not among them is NXDOMAIN.
func lookup(records ...[]dkimsign.Record) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		var out []string
		for _, rs := range records {
			for _, r := range rs {
				if strings.EqualFold(r.Name, strings.TrimSuffix(name, ".")) {
					out = append(out, r.Value)
				}
			}
		}
		if out == nil {
			return nil, &fs.PathError{Op: "lookup", Path: name, Err: fs.ErrNotExist}
		}
		return out, nil
	}
}

// signed signs msg and returns it with the signature fields prepended,
// as the server spools it.
func signed(t *testing.T, s *dkimsign.Signer, msg string) string {
	t.Helper()
	fields, err := s.Sign(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(fields) == 0 {
		t.Fatal("Sign: no signature")
	}
	for _, f := range fields {
		if !strings.HasPrefix(f, "DKIM-Signature:") || !strings.HasSuffix(f, "\r\n") {
			t.Fatalf("Sign: field %q", f)
		}
		for _, line := range strings.Split(strings.TrimSuffix(f, "\r\n"), "\r\n") {
			if len(line) > 998 {
				t.Fatalf("Sign: a line of %d characters", len(line))
			}
		}
	}
	return strings.Join(fields, "") + msg
}

// verify checks every signature of msg with go-msgauth and returns the
// verifications by selector, each error or nil.
func verify(t *testing.T, msg string, lookupTXT func(string) ([]string, error)) map[string]error {
	t.Helper()
	verifs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookupTXT})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	out := make(map[string]error)
	sel := regexp.MustCompile(`(?:^|[;\s])s=([^;\s]+)`)
	for i, v := range verifs {
		// the i-th DKIM-Signature field's selector names the result
		fields := regexp.MustCompile(`(?mi)^DKIM-Signature:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)`).FindAllStringSubmatch(msg, -1)
		m := sel.FindStringSubmatch(fields[i][1])
		out[v.Domain+"/"+m[1]] = v.Err
	}
	return out
}

const plainMessage = "From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: hello\r\n" +
	"Date: Fri, 15 May 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"\r\n" +
	"Hello Bob.\r\n"

var dateSelector = regexp.MustCompile(`^20[0-9]{6}$`)

// TestKeysMadeOnceAndReused: the first New makes a key per algorithm
// under a default selector (the date) kept in storage; a second New on
// the same storage (a restart) loads the same keys and makes nothing.
func TestKeysMadeOnceAndReused(t *testing.T) {
	dir := t.TempDir()
	cfg := dkimsign.Config{Domains: []string{"Example.COM."}}
	first := newSigner(t, dir, cfg)
	recs := first.Records()
	if len(recs) != 2 {
		t.Fatalf("records: %+v", recs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "smtp", "dkim", "example.com", "default_selector"))
	if err != nil {
		t.Fatal(err)
	}
	sel := strings.TrimSpace(string(b))
	if !dateSelector.MatchString(sel) {
		t.Fatalf("default selector %q", sel)
	}
	for i, alg := range []string{"ed25519", "rsa2048"} {
		r := recs[i]
		k := map[string]string{"ed25519": "ed25519", "rsa2048": "rsa"}[alg]
		if r.Name != sel+"-"+alg+"._domainkey.example.com" || r.Type != "TXT" || r.Domain != "example.com" ||
			r.Selector != sel+"-"+alg || r.Algorithm != alg || !r.InUse ||
			!regexp.MustCompile(`^v=DKIM1; k=`+k+`; p=[A-Za-z0-9+/]+=*$`).MatchString(r.Value) {
			t.Errorf("record %d: %+v", i, r)
		}
		pemKey, err := os.ReadFile(filepath.Join(dir, "smtp", "dkim", "example.com", sel+"-"+alg+".key"))
		if err != nil || !strings.HasPrefix(string(pemKey), "-----BEGIN PRIVATE KEY-----\n") {
			t.Errorf("key file of %s: %v\n%s", alg, err, pemKey)
		}
	}
	if len(recs[0].Value) != len("v=DKIM1; k=ed25519; p=")+44 {
		t.Errorf("an ed25519 record holds the raw 32-byte key (RFC 8463): %s", recs[0].Value)
	}

	before := snapshot(t, dir)
	again := newSigner(t, dir, cfg)
	if !slices.Equal(again.Records(), recs) {
		t.Fatalf("after a restart:\n got %+v\nwant %+v", again.Records(), recs)
	}
	if after := snapshot(t, dir); !maps(after, before) {
		t.Fatalf("a restart changed storage:\n%v\n%v", before, after)
	}
	// and the restarted signer's signatures verify with the first's records
	for sel, err := range verify(t, signed(t, again, plainMessage), lookup(recs)) {
		if err != nil {
			t.Errorf("%s: %v", sel, err)
		}
	}
}

// snapshot returns the files under dir (but locks) and their contents.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, string(filepath.Separator)+"locks"+string(filepath.Separator)) {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// TestTwoNodes: two Signers made at once on one storage (two Caddy
// instances sharing it) make one key per algorithm between them, under
// the storage lock, and sign with the same keys.
func TestTwoNodes(t *testing.T) {
	dir := t.TempDir()
	cfg := dkimsign.Config{Domains: []string{"example.com", "example.org"}}
	const nodes = 4
	signers := make([]*dkimsign.Signer, nodes)
	errs := make([]error, nodes)
	storages := make([]*countingStorage, nodes)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		storages[i] = &countingStorage{FileStorage: fileStorage(dir)}
		wg.Go(func() {
			<-start
			c := cfg
			signers[i], errs[i] = dkimsign.New(context.Background(), storages[i], &c, "servers.out.dkim", zap.NewNop())
		})
	}
	close(start)
	wg.Wait()
	stores := 0
	for i := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if storages[i].unlockedStores > 0 {
			t.Errorf("node %d stored outside the lock", i)
		}
		stores += storages[i].stores
	}
	// per domain: the default selector and two keys, made once
	if stores != 6 {
		t.Errorf("%d stores between the nodes, want 6", stores)
	}
	recs := signers[0].Records()
	if len(recs) != 4 {
		t.Fatalf("records: %+v", recs)
	}
	for i := 1; i < nodes; i++ {
		if !slices.Equal(signers[i].Records(), recs) {
			t.Errorf("node %d:\n got %+v\nwant %+v", i, signers[i].Records(), recs)
		}
	}
	for i := range nodes {
		for sel, err := range verify(t, signed(t, signers[i], plainMessage), lookup(recs)) {
			if err != nil {
				t.Errorf("node %d, %s: %v", i, sel, err)
			}
		}
	}
}

// countingStorage counts stores, and those made without holding a lock.
type countingStorage struct {
	*certmagic.FileStorage
	mu                     sync.Mutex
	locked                 int
	stores, unlockedStores int
}

func (s *countingStorage) Lock(ctx context.Context, name string) error {
	err := s.FileStorage.Lock(ctx, name)
	if err == nil {
		s.mu.Lock()
		s.locked++
		s.mu.Unlock()
	}
	return err
}

func (s *countingStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	s.locked--
	s.mu.Unlock()
	return s.FileStorage.Unlock(ctx, name)
}

func (s *countingStorage) Store(ctx context.Context, key string, value []byte) error {
	s.mu.Lock()
	s.stores++
	if s.locked == 0 {
		s.unlockedStores++
	}
	s.mu.Unlock()
	return s.FileStorage.Store(ctx, key, value)
}

// TestNewSelector: a new selector in the config makes new keys beside
// the old ones, which stay in storage unchanged and whose records are
// still listed (not in use) after the new ones; going back to the old
// selector uses the old keys again.
func TestNewSelector(t *testing.T) {
	dir := t.TempDir()
	old := newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}})
	oldRecs := old.Records()
	before := snapshot(t, dir)

	s := newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}, Selector: "2026B"})
	recs := s.Records()
	if len(recs) != 4 {
		t.Fatalf("records: %+v", recs)
	}
	if recs[0].Name != "2026b-ed25519._domainkey.example.com" || recs[1].Name != "2026b-rsa2048._domainkey.example.com" ||
		!recs[0].InUse || !recs[1].InUse {
		t.Errorf("keys in use: %+v", recs[:2])
	}
	for i, r := range recs[2:] {
		want := oldRecs[i]
		want.InUse = false
		if r != want {
			t.Errorf("old record %d: %+v, want %+v", i, r, want)
		}
	}
	after := snapshot(t, dir)
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed", p)
		}
	}
	// the new keys sign
	for sel, err := range verify(t, signed(t, s, plainMessage), lookup(recs[:2])) {
		if err != nil || !strings.HasPrefix(sel, "example.com/2026b-") {
			t.Errorf("%s: %v", sel, err)
		}
	}

	// only ed25519 now: the old selector's rsa key and the 2026b ones
	// are listed as old
	only := newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}, Selector: "2026b", Algorithms: []string{"ed25519"}})
	var inUse, notInUse []string
	for _, r := range only.Records() {
		if r.InUse {
			inUse = append(inUse, r.Selector)
		} else {
			notInUse = append(notInUse, r.Selector)
		}
	}
	if !slices.Equal(inUse, []string{"2026b-ed25519"}) || len(notInUse) != 3 || !slices.Contains(notInUse, "2026b-rsa2048") {
		t.Errorf("in use %v, not %v", inUse, notInUse)
	}

	back := newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}})
	if !slices.Equal(back.Records()[:2], oldRecs) {
		t.Errorf("back to the default selector: %+v", back.Records())
	}
}

// TestBrokenKey: a key in storage that does not parse is an error,
// never replaced by a new one (its record may be published); one of the
// wrong algorithm too.
func TestBrokenKey(t *testing.T) {
	dir := t.TempDir()
	newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}, Selector: "s1"})
	keyFile := filepath.Join(dir, "smtp", "dkim", "example.com", "s1-rsa2048.key")
	if err := os.WriteFile(keyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := dkimsign.New(context.Background(), fileStorage(dir), &dkimsign.Config{Domains: []string{"example.com"}, Selector: "s1"}, "servers.out.dkim", nil)
	if err == nil || !strings.Contains(err.Error(), "servers.out.dkim: domain example.com: smtp/dkim/example.com/s1-rsa2048.key in storage: no PEM block") {
		t.Errorf("New: %v", err)
	}
	if b, _ := os.ReadFile(keyFile); string(b) != "garbage" {
		t.Error("the broken key was replaced")
	}

	ed, _ := os.ReadFile(filepath.Join(dir, "smtp", "dkim", "example.com", "s1-ed25519.key"))
	if err := os.WriteFile(keyFile, ed, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = dkimsign.New(context.Background(), fileStorage(dir), &dkimsign.Config{Domains: []string{"example.com"}, Selector: "s1"}, "servers.out.dkim", nil)
	if err == nil || !strings.Contains(err.Error(), "a ed25519 key, not rsa2048") {
		t.Errorf("New with an ed25519 key as the rsa one: %v", err)
	}

	// an old key that does not parse is left out of the records, not an error
	s := newSigner(t, dir, dkimsign.Config{Domains: []string{"example.com"}, Selector: "s2"})
	for _, r := range s.Records() {
		if r.Selector == "s1-rsa2048" {
			t.Errorf("the broken old key is listed: %+v", r)
		}
	}
}

// TestConfigErrors: each field's mistakes, named.
func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  dkimsign.Config
		want string
	}{
		{dkimsign.Config{}, "servers.out.dkim.domains: no domain to sign for"},
		{dkimsign.Config{Domains: []string{"*.example.com"}}, `servers.out.dkim.domains: "*.example.com": not a domain name`},
		{dkimsign.Config{Domains: []string{"192.0.2.1"}}, `servers.out.dkim.domains: "192.0.2.1": an IP address is no signing domain`},
		{dkimsign.Config{Domains: []string{"localhost"}}, `"localhost": not a domain name: no dot`},
		{dkimsign.Config{Domains: []string{"example.com"}, Selector: "a_b"}, `servers.out.dkim.selector: "a_b" is not a DNS name`},
		{dkimsign.Config{Domains: []string{"example.com"}, Selector: "-a"}, `servers.out.dkim.selector: "-a" is not a DNS name`},
		{dkimsign.Config{Domains: []string{"example.com"}, Selector: strings.Repeat("a", 60)}, `servers.out.dkim.selector:`},
		{dkimsign.Config{Domains: []string{"example.com"}, Algorithms: []string{"rsa1024"}}, `servers.out.dkim.algorithms: "rsa1024" is not one of ed25519, rsa2048`},
		{dkimsign.Config{Domains: []string{"example.com"}, Algorithms: []string{"ed25519", "ed25519"}}, `servers.out.dkim.algorithms: ed25519 twice`},
	} {
		_, err := dkimsign.New(context.Background(), fileStorage(t.TempDir()), &c.cfg, "servers.out.dkim", nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if s, err := dkimsign.New(context.Background(), nil, nil, "x", nil); s != nil || err != nil {
		t.Errorf("nil config: %v %v", s, err)
	}
	var none *dkimsign.Signer
	if f, err := none.Sign(strings.NewReader(plainMessage)); f != nil || err != nil || none.Records() != nil {
		t.Errorf("nil signer: %v %v", f, err)
	}
}

// otherDomainSigner signs as other.example with a key of its own, as a
// mailing list or an earlier hop would have.
func otherDomainSigner(t *testing.T) (func(msg string) string, dkimsign.Record) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec := dkimsign.Record{Name: "list._domainkey.other.example", Type: "TXT",
		Value: "v=DKIM1; k=ed25519; p=" + b64(pub)}
	return func(msg string) string {
		var b strings.Builder
		err := dkim.Sign(&b, strings.NewReader(msg), &dkim.SignOptions{
			Domain: "other.example", Selector: "list", Signer: priv, Hash: crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationSimple,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b.String()
	}, rec
}

// TestSignVerify: both algorithms' signatures verify (go-msgauth's
// verifier, keys from Records as DNS would serve them) on plain mail, a
// long folded header, an 8-bit body, a header-only message, a message
// already signed by another domain (both signatures verify), read
// through a one-byte reader too; the signed headers are oversigned; a
// changed body byte, a header added or changed fails.
func TestSignVerify(t *testing.T) {
	s := newSigner(t, t.TempDir(), dkimsign.Config{Domains: []string{"example.com"}, Selector: "t1"})
	recs := s.Records()
	otherSign, otherRec := otherDomainSigner(t)
	look := lookup(recs, []dkimsign.Record{otherRec})

	var refs strings.Builder
	refs.WriteString("References:")
	for i := range 400 {
		refs.WriteString(" <" + strings.Repeat("r", 40) + "." + string(rune('a'+i%26)) + "@example.net>\r\n")
	}
	folded := "From: \"Alice, the\r\n  sender\" <alice@example.com>\r\n" +
		"To: bob@example.net,\r\n\tcarol@example.net\r\n" +
		"Subject: =?utf-8?q?a_long_subject?=\r\n" + strings.Repeat("  folded\r\n", 50) +
		refs.String() +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"body\r\n"
	eightBit := "From: alice@example.com\r\n" +
		"To: bob@example.net\r\n" +
		"Subject: 8bit\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=iso-8859-1\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Gr\xfc\xdfe, na\xefve caf\xe9  with  spaces \t\r\n" +
		"Grüße in UTF-8 too\r\n" +
		"\r\n\r\n\r\n"
	headerOnly := "From: alice@example.com\r\nSubject: nothing more\r\n"

	for name, msg := range map[string]string{
		"plain":       plainMessage,
		"folded":      folded,
		"8bit":        eightBit,
		"header only": headerOnly,
		"signed by other.example": otherSign("From: alice@example.com\r\nTo: list@other.example\r\n" +
			"List-Id: <list.other.example>\r\nSubject: [list] hi\r\n\r\nhi\r\n"),
		"no final line end": strings.TrimSuffix(plainMessage, "\r\n"),
	} {
		t.Run(name, func(t *testing.T) {
			fields, err := s.Sign(iotest.OneByteReader(strings.NewReader(msg)))
			if err != nil || len(fields) != 2 {
				t.Fatalf("Sign one byte at a time: %v %v", fields, err)
			}
			out := signed(t, s, msg)
			if name == "header only" {
				// go-msgauth's verifier wants the empty line that
				// ends a header (dkimpy and OpenDKIM do without)
				out += "\r\n"
			}
			res := verify(t, out, look)
			want := 2
			if strings.Contains(msg, "d=other.example") {
				want = 3
			}
			if len(res) != want {
				t.Fatalf("verifications: %v", res)
			}
			for sel, err := range res {
				if err != nil {
					t.Errorf("%s: %v\n%s", sel, err, out)
				}
			}
			if !strings.Contains(out, "a=ed25519-sha256") || !strings.Contains(out, "a=rsa-sha256") ||
				strings.Count(out, "c=relaxed/relaxed") != 2 || !strings.Contains(out, "d=example.com") {
				t.Errorf("signature tags:\n%s", out)
			}
		})
	}

	// what is signed: oversigned fields one more time than present,
	// others as often as present
	out := signed(t, s, folded)
	verifs, err := dkim.VerifyWithOptions(strings.NewReader(out), &dkim.VerifyOptions{LookupTXT: look})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(verifs[0].HeaderKeys, ":")
	want := "from:from:reply-to:subject:subject:date:to:to:cc:message-id:mime-version:mime-version:" +
		"content-type:content-type:content-transfer-encoding:content-transfer-encoding:references"
	if got != want {
		t.Errorf("h=%s\nwant %s", got, want)
	}

	for name, change := range map[string]func(string) string{
		"a body byte":        func(m string) string { return strings.Replace(m, "Hello Bob.", "Hello Bib.", 1) },
		"the subject":        func(m string) string { return strings.Replace(m, "Subject: hello", "Subject: hellO", 1) },
		"a second From":      func(m string) string { return strings.Replace(m, "Date:", "From: eve@example.com\r\nDate:", 1) },
		"a From on top":      func(m string) string { return "From: eve@example.net\r\n" + m },
		"a Cc added":         func(m string) string { return strings.Replace(m, "Date:", "Cc: eve@example.net\r\nDate:", 1) },
		"a Reply-To added":   func(m string) string { return strings.Replace(m, "Date:", "Reply-To: eve@example.net\r\nDate:", 1) },
		"a Content-Type one": func(m string) string { return strings.Replace(m, "Date:", "Content-Type: text/html\r\nDate:", 1) },
	} {
		orig := signed(t, s, plainMessage)
		m := change(orig)
		if m == orig {
			t.Fatalf("%s: no change", name)
		}
		for sel, err := range verify(t, m, look) {
			if err == nil {
				t.Errorf("%s changed, %s: verified", name, sel)
			}
		}
	}
	// whitespace changes are what relaxed/relaxed forgives
	m := strings.Replace(signed(t, s, plainMessage), "Subject: hello", "subject:   hello ", 1)
	m = strings.Replace(m, "Hello Bob.\r\n", "Hello   Bob. \r\n\r\n", 1)
	for sel, err := range verify(t, m, look) {
		if err != nil {
			t.Errorf("whitespace, %s: %v", sel, err)
		}
	}
}

// TestFromDomain: which messages are signed, by their From: field.
func TestFromDomain(t *testing.T) {
	s := newSigner(t, t.TempDir(), dkimsign.Config{Domains: []string{"example.com", "Bücher.example"}, Selector: "t1", Algorithms: []string{"ed25519"}})
	recs := s.Records()
	if len(recs) != 2 || recs[1].Domain != "xn--bcher-kva.example" || recs[1].Name != "t1-ed25519._domainkey.xn--bcher-kva.example" {
		t.Fatalf("records: %+v", recs)
	}
	body := "Subject: x\r\n\r\nx\r\n"
	for _, c := range []struct {
		header string
		domain string // signed for; "" not signed
		why    string // ErrNotSigned's reason; "" no error
	}{
		{"From: alice@example.com\r\n", "example.com", ""},
		{"From: Alice <ALICE@EXAMPLE.COM>\r\n", "example.com", ""},
		{"From: alice@example.com.\r\n", "", "From: mail:"},
		{"FROM : \"Doe, Alice\" (the boss) <alice@example.com>\r\n", "example.com", ""},
		{"From: =?koi8-r?B?4czJ08E=?= <alice@example.com>\r\n", "example.com", ""},
		{"From: =?utf-8?q?Al=C3=AFce?=\r\n <alice@example.com>\r\n", "example.com", ""},
		{"From: alice@bücher.example\r\n", "xn--bcher-kva.example", ""},
		{"From: alice@XN--BCHER-KVA.example\r\n", "xn--bcher-kva.example", ""},
		{"From: alice@example.org\r\n", "", ""},
		{"From: alice@sub.example.com\r\n", "", ""},
		{"From: alice@example.com.evil.test\r\n", "", ""},
		{"To: bob@example.net\r\n", "", "no From: field"},
		{"From: alice@example.com\r\nFrom: eve@example.com\r\n", "", "2 From: fields"},
		{"From: alice@example.com, eve@example.com\r\n", "", "From: has 2 addresses"},
		{"From: undisclosed:;\r\n", "", "From: has 0 addresses"},
		{"From: not an address\r\n", "", "From: mail:"},
		{"From: alice@[192.0.2.1]\r\n", "", "From: domain"},
		{" From: alice@example.com\r\n", "", "starts with a continuation line"},
		{"From: alice@example.com\r\nthis is no field\r\n", "", "header line 2 is not a header field"},
		{"From: alice@example.com\r\nX-Big: " + strings.Repeat("x", dkimsign.MaxHeaderSize) + "\r\n", "", "header is larger than"},
		{"From: alice@example.com\r\n" + strings.Repeat("To: b@example.net\r\n", 300), "", "h= of"},
	} {
		fields, err := s.Sign(strings.NewReader(c.header + body))
		switch {
		case c.why != "":
			if !errors.Is(err, dkimsign.ErrNotSigned) || !strings.Contains(err.Error(), c.why) || fields != nil {
				t.Errorf("%.60q: %v %v, want ErrNotSigned: %s", c.header, fields, err, c.why)
			}
		case c.domain == "":
			if err != nil || fields != nil {
				t.Errorf("%.60q: %v %v, want nothing", c.header, fields, err)
			}
		default:
			if err != nil || len(fields) != 1 || !strings.Contains(fields[0], "d="+c.domain+";") {
				t.Errorf("%.60q: %v %v, want d=%s", c.header, fields, err, c.domain)
				continue
			}
			for sel, err := range verify(t, fields[0]+c.header+body, lookup(recs)) {
				if err != nil {
					t.Errorf("%.60q, %s: %v", c.header, sel, err)
				}
			}
		}
	}
}

// TestCaddyfile: the dkim directive's block.
func TestCaddyfile(t *testing.T) {
	for _, c := range []struct {
		in   string
		want dkimsign.Config
		err  string
	}{
		{"dkim {\n domains example.com example.org\n selector 2026a\n algorithms rsa2048 ed25519\n}",
			dkimsign.Config{Domains: []string{"example.com", "example.org"}, Selector: "2026a", Algorithms: []string{"rsa2048", "ed25519"}}, ""},
		{"dkim example.com {\n domains example.org\n}", dkimsign.Config{Domains: []string{"example.com", "example.org"}}, ""},
		{"dkim example.com", dkimsign.Config{Domains: []string{"example.com"}}, ""},
		{"dkim", dkimsign.Config{}, "dkim needs the domains"},
		{"dkim example.com {\n selector a b\n}", dkimsign.Config{}, "wrong argument count"},
		{"dkim example.com {\n selector a\n selector b\n}", dkimsign.Config{}, "duplicate selector"},
		{"dkim example.com {\n selector a_b\n}", dkimsign.Config{}, "is not a DNS name"},
		{"dkim example.com {\n algorithms rsa1024\n}", dkimsign.Config{}, `"rsa1024" is not one of ed25519, rsa2048`},
		{"dkim example.com {\n algorithms\n}", dkimsign.Config{}, "wrong argument count"},
		{"dkim example.com {\n keys x\n}", dkimsign.Config{}, `unknown dkim directive "keys"`},
	} {
		d := caddyfile.NewTestDispenser(c.in)
		d.Next()
		var got dkimsign.Config
		err := got.UnmarshalCaddyfile(d)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got.Domains, c.want.Domains) || got.Selector != c.want.Selector || !slices.Equal(got.Algorithms, c.want.Algorithms) {
			t.Errorf("%q: %+v %v, want %+v", c.in, got, err, c.want)
		}
	}
}

// TestSignConcurrent: one Signer signs for many sessions at once.
func TestSignConcurrent(t *testing.T) {
	s := newSigner(t, t.TempDir(), dkimsign.Config{Domains: []string{"example.com"}, Selector: "t1"})
	look := lookup(s.Records())
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				fields, err := s.Sign(strings.NewReader(plainMessage))
				if err != nil {
					t.Error(err)
					return
				}
				verifs, err := dkim.VerifyWithOptions(strings.NewReader(strings.Join(fields, "")+plainMessage), &dkim.VerifyOptions{LookupTXT: look})
				if err != nil || len(verifs) != 2 || verifs[0].Err != nil || verifs[1].Err != nil {
					t.Errorf("verify: %v %v", verifs, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestHostileHeader: headers near the bound, of many continuation
// lines or of one long line, are read in linear time and signed (or
// refused) quickly.
func TestHostileHeader(t *testing.T) {
	s := newSigner(t, t.TempDir(), dkimsign.Config{Domains: []string{"example.com"}, Selector: "t1"})
	look := lookup(s.Records())
	body := "\r\nbody\r\n"
	for name, c := range map[string]struct {
		header string
		signed bool
	}{
		"many continuation lines": {"From: alice@example.com\r\nX-Long: x\r\n" + strings.Repeat(" y\r\n", 250000), false},
		"a long folded To":        {"From: alice@example.com\r\nTo: x@example.net" + strings.Repeat(",\r\n <"+strings.Repeat("y", 40)+"@example.net>", 2000) + "\r\n", true},
		"one long line":           {"From: alice@example.com\r\nX-Long: " + strings.Repeat("y", 900000) + "\r\n", true},
		"a long folded From":      {"From: alice@example.com" + strings.Repeat("\r\n (comment)", 80000) + "\r\n", false},
		"a folded From":           {"From: alice@example.com" + strings.Repeat("\r\n (comment)", 1000) + "\r\n", true},
		"many fields":             {"From: alice@example.com\r\n" + strings.Repeat("X-A: b\r\n", 120000), true},
		"many From fields":        {strings.Repeat("From: alice@example.com\r\n", 40000), false},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			fields, err := s.Sign(strings.NewReader(c.header + body))
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("Sign took %v", took)
			}
			if !c.signed {
				if !errors.Is(err, dkimsign.ErrNotSigned) {
					t.Errorf("Sign: %v", err)
				}
				return
			}
			if err != nil || len(fields) != 2 {
				t.Fatalf("Sign: %v", err)
			}
			for sel, err := range verify(t, strings.Join(fields, "")+c.header+body, look) {
				if err != nil {
					t.Errorf("%s: %v", sel, err)
				}
			}
		})
	}
}
