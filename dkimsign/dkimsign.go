// Package dkimsign signs outbound mail with DKIM (RFC 6376; Ed25519 per
// RFC 8463), with keys managed the way Caddy manages certificates:
// made on first use, kept in Caddy's storage (so nodes sharing storage
// share them, and a restart never loses them), and the DNS record to
// publish derived from each.
//
// # Selectors
//
// Dual signing (RFC 8463 section 3) needs a key, hence a selector, per
// algorithm: the DNS selector of a key is the configured selector, a
// hyphen, and the algorithm's name: with `selector 2026a` the keys are
// published at `2026a-ed25519._domainkey.<domain>` and
// `2026a-rsa2048._domainkey.<domain>`. The suffix is there for a single
// algorithm too, so that adding the second one later leaves the first
// key where it is. Without a configured selector, the first key made
// for a domain chooses one, the date (UTC) in the form 20260515, and
// keeps it in storage for every later key and restart of that domain.
//
// # Storage
//
// Keys live in Caddy's storage (certmagic.Storage: the data directory's
// files by default, or any storage module), never in the config:
//
//	smtp/dkim/<domain>/default_selector      the chosen selector, when none is configured
//	smtp/dkim/<domain>/<selector>.key         a private key, PKCS#8 PEM ("PRIVATE KEY")
//
// <domain> is the domain in lower case and A-labels (IDNA), <selector>
// the DNS selector (with its algorithm suffix). A missing key is made
// under the storage's lock for the domain (smtp_dkim_<domain>), so two
// Caddy instances on one storage make it once and both load it. A key
// that is there but cannot be read is an error, never replaced: its
// record may be published.
//
// A new selector in the config makes new keys beside the old ones,
// which stay in storage: their records are still returned by Records
// (InUse false), so that `caddy smtp-dns` keeps listing them while
// mail signed with them may still be verified. Deleting an old key from
// storage (and its record from DNS) retires it.
package dkimsign

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/net/idna"
)

// Config is a server's outbound DKIM signing (servers.<name>.dkim).
type Config struct {
	// Sign mail whose From: domain is one of these (compared in lower
	// case and A-labels, so `bücher.example` and
	// `xn--bcher-kva.example` are one domain). The signing domain (d=)
	// is the From: domain itself, so that DMARC aligns strictly.
	// Subdomains are not included: list each.
	Domains []string `json:"domains,omitempty"`

	// The selector of the keys, before the algorithm suffix: `2026a`
	// makes the keys `2026a-ed25519` and `2026a-rsa2048`. Letters,
	// digits, hyphens and dots (a DNS sub-domain). Default: chosen when
	// a domain's first key is made (the date, 20260515), and kept in
	// storage. A new selector makes new keys beside the old ones.
	Selector string `json:"selector,omitempty"`

	// Key algorithms, one signature each: `ed25519` (RFC 8463) and
	// `rsa2048` (RSA, 2048 bits). Default: both (dual signing, RFC 8463
	// section 3: verifiers that do not know Ed25519 check the RSA
	// signature). The signatures are prepended in this order.
	Algorithms []string `json:"algorithms,omitempty"`
}

// Algorithms a key can have.
const (
	Ed25519 = "ed25519"
	RSA2048 = "rsa2048"
)

// defaultAlgorithms is dual signing, Ed25519 first as in RFC 8463's
// example (appendix A.3).
var defaultAlgorithms = []string{Ed25519, RSA2048}

// Record is a DNS record to publish: a key's TXT record.
type Record struct {
	// Name is the owner name, fully qualified, without the final dot:
	// `2026a-ed25519._domainkey.example.com`.
	Name string `json:"name"`
	// Type is TXT.
	Type string `json:"type"`
	// Value is the TXT data, unquoted and in one piece (an RSA record
	// is longer than one 255-byte string: a zone file splits it):
	// `v=DKIM1; k=ed25519; p=<base64>`.
	Value string `json:"value"`

	// Domain is the signing domain (d=), in A-labels.
	Domain string `json:"domain"`
	// Selector is the DNS selector (s=), with its algorithm suffix.
	Selector string `json:"selector"`
	// Algorithm is the key's: ed25519 or rsa2048 (rsa<bits> for an old
	// key of another size).
	Algorithm string `json:"algorithm"`
	// InUse is true for the keys that sign; false for older keys still
	// in storage, whose records stay published until they are deleted.
	InUse bool `json:"in_use"`
}

// ErrNotSigned is wrapped by the errors of Sign for a message that
// cannot be signed for what it is (no single From: address, a header
// that is malformed or too large): it may go on unsigned. Any other
// error of Sign is a failure to read the message.
var ErrNotSigned = errors.New("not signed")

// Signer signs messages with the keys of one Config. It is safe for
// concurrent use. A nil *Signer signs nothing and has no records.
type Signer struct {
	keys    map[string][]*key // by signing domain, the keys in use in algorithm order
	records []Record
}

// key is one private key and where it is published.
type key struct {
	domain, selector, algorithm string
	signer                      crypto.Signer
}

// New checks cfg and loads its keys from storage, making each on first
// use; field names the config in errors (`servers.outbound.dkim`). A
// nil cfg is no signing: a nil *Signer and no error.
func New(ctx context.Context, storage certmagic.Storage, cfg *Config, field string, logger *zap.Logger) (*Signer, error) {
	if cfg == nil {
		return nil, nil
	}
	if storage == nil {
		return nil, fmt.Errorf("%s: no storage for the keys", field)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	domains, err := normalDomains(cfg.Domains)
	if err != nil {
		return nil, fmt.Errorf("%s.domains: %v", field, err)
	}
	selector := strings.ToLower(cfg.Selector)
	if selector != "" {
		if err := checkSelector(selector); err != nil {
			return nil, fmt.Errorf("%s.selector: %v", field, err)
		}
	}
	algorithms := cfg.Algorithms
	if len(algorithms) == 0 {
		algorithms = defaultAlgorithms
	}
	for i, a := range algorithms {
		if a != Ed25519 && a != RSA2048 {
			return nil, fmt.Errorf("%s.algorithms: %q is not one of ed25519, rsa2048", field, a)
		}
		if slices.Contains(algorithms[:i], a) {
			return nil, fmt.Errorf("%s.algorithms: %s twice", field, a)
		}
	}
	if selector != "" {
		for _, a := range algorithms {
			if err := checkSelector(selector + "-" + a); err != nil {
				return nil, fmt.Errorf("%s.selector: %v", field, err)
			}
		}
	}

	s := &Signer{keys: make(map[string][]*key)}
	ks := &keyStore{storage: storage, logger: logger}
	for _, d := range domains {
		keys, err := ks.load(ctx, d, selector, algorithms)
		if err != nil {
			return nil, fmt.Errorf("%s: domain %s: %v", field, d, err)
		}
		s.keys[d] = keys
		for _, k := range keys {
			s.records = append(s.records, k.record(true))
		}
	}
	for _, d := range domains {
		old := ks.others(ctx, d, s.keys[d])
		for _, k := range old {
			s.records = append(s.records, k.record(false))
		}
	}
	return s, nil
}

// Records returns the TXT records to publish: those of the keys in use
// (per domain, in the config's order of domains and algorithms), then
// those of older keys of the same domains still in storage (found when
// the Signer was made), by name.
func (s *Signer) Records() []Record {
	if s == nil {
		return nil
	}
	return slices.Clone(s.records)
}

// normalDomains returns the domains in lower case and A-labels, each
// once; a domain must be a host name (no wildcard, no IP address).
func normalDomains(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("no domain to sign for")
	}
	var out []string
	for _, raw := range in {
		d, err := normalDomain(raw)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", raw, err)
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out, nil
}

// domainProfile is IDNA for names to look up and sign for: UTS #46
// mapping (lower case), and the host name rules (letters, digits,
// hyphens).
var domainProfile = idna.New(idna.MapForLookup(), idna.StrictDomainName(true), idna.ValidateLabels(true), idna.VerifyDNSLength(true))

// normalDomain is a domain in lower case and A-labels, without a final
// dot.
func normalDomain(raw string) (string, error) {
	d := strings.TrimSuffix(strings.TrimSpace(raw), ".")
	if d == "" {
		return "", errors.New("empty domain")
	}
	a, err := domainProfile.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("not a domain name: %v", err)
	}
	if !strings.Contains(a, ".") {
		return "", errors.New("not a domain name: no dot")
	}
	last := a[strings.LastIndexByte(a, '.')+1:]
	if strings.Trim(last, "0123456789") == "" {
		return "", errors.New("an IP address is no signing domain")
	}
	return a, nil
}

// checkSelector checks a selector as RFC 6376 3.1 has it: a DNS
// sub-domain (labels of letters, digits and inner hyphens, up to 63
// characters each), short enough for `<selector>._domainkey.<domain>`.
func checkSelector(sel string) error {
	if len(sel) > 200 {
		return fmt.Errorf("%q is too long", sel)
	}
	for _, label := range strings.Split(sel, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q is not a DNS name (labels of letters, digits and inner hyphens, 1 to 63 long)", sel)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a DNS name (labels of letters, digits and inner hyphens, 1 to 63 long)", sel)
			}
		}
	}
	return nil
}
