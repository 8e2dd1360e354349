package dkimsign

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// keyStore reads and makes keys in Caddy's storage (the layout is in
// the package comment).
type keyStore struct {
	storage certmagic.Storage
	logger  *zap.Logger
}

func domainDir(domain string) string { return "smtp/dkim/" + domain }

func keyPath(domain, selector string) string { return domainDir(domain) + "/" + selector + ".key" }

func defaultSelectorPath(domain string) string { return domainDir(domain) + "/default_selector" }

func lockName(domain string) string { return "smtp_dkim_" + domain }

// load returns the domain's keys for the algorithms, under selector (or
// the domain's default selector when it is empty), reading them from
// storage. What is missing (the default selector, a key) is made under
// the domain's storage lock, after looking again once it is held:
// another instance on the same storage may have made it meanwhile.
func (ks *keyStore) load(ctx context.Context, domain, selector string, algorithms []string) ([]*key, error) {
	keys, err := ks.read(ctx, domain, selector, algorithms)
	if err == nil {
		return keys, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := ks.storage.Lock(ctx, lockName(domain)); err != nil {
		return nil, fmt.Errorf("locking storage for the key: %v", err)
	}
	defer func() {
		if err := ks.storage.Unlock(context.WithoutCancel(ctx), lockName(domain)); err != nil {
			ks.logger.Error("unlocking dkim key storage", zap.String("domain", domain), zap.Error(err))
		}
	}()
	if selector == "" {
		selector, err = ks.defaultSelector(ctx, domain)
		if errors.Is(err, fs.ErrNotExist) {
			selector = time.Now().UTC().Format("20060102")
			if err = ks.storage.Store(ctx, defaultSelectorPath(domain), []byte(selector+"\n")); err != nil {
				return nil, fmt.Errorf("storing the default selector: %v", err)
			}
			ks.logger.Info("dkim default selector chosen", zap.String("domain", domain), zap.String("selector", selector),
				zap.String("storage_key", defaultSelectorPath(domain)))
		}
		if err != nil {
			return nil, err
		}
	}
	keys = nil
	for _, alg := range algorithms {
		sel := selector + "-" + alg
		k, err := ks.readKey(ctx, domain, sel, alg)
		if errors.Is(err, fs.ErrNotExist) {
			k, err = ks.make(ctx, domain, sel, alg)
		}
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// read returns the keys when they are all in storage; an error that is
// fs.ErrNotExist when something is still to make.
func (ks *keyStore) read(ctx context.Context, domain, selector string, algorithms []string) ([]*key, error) {
	if selector == "" {
		var err error
		if selector, err = ks.defaultSelector(ctx, domain); err != nil {
			return nil, err
		}
	}
	var keys []*key
	for _, alg := range algorithms {
		k, err := ks.readKey(ctx, domain, selector+"-"+alg, alg)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// defaultSelector returns the selector chosen for the domain when its
// first key was made without a configured one.
func (ks *keyStore) defaultSelector(ctx context.Context, domain string) (string, error) {
	b, err := ks.storage.Load(ctx, defaultSelectorPath(domain))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("reading %s from storage: %v", defaultSelectorPath(domain), err)
	}
	sel := strings.ToLower(strings.TrimSpace(string(b)))
	if err := checkSelector(sel); err != nil {
		return "", fmt.Errorf("%s in storage: %v", defaultSelectorPath(domain), err)
	}
	return sel, nil
}

// readKey loads one key; alg is the algorithm it must have, or "" for
// any (an older key found in storage). fs.ErrNotExist when it is not
// there.
func (ks *keyStore) readKey(ctx context.Context, domain, selector, alg string) (*key, error) {
	p := keyPath(domain, selector)
	b, err := ks.storage.Load(ctx, p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("reading %s from storage: %v", p, err)
	}
	signer, got, err := parseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s in storage: %v", p, err)
	}
	if alg == "" {
		// an older key: one whose name has an algorithm's suffix must
		// have that algorithm, as the record's name says
		for _, a := range []string{Ed25519, RSA2048} {
			if strings.HasSuffix(selector, "-"+a) {
				alg = a
			}
		}
	}
	if alg != "" && got != alg {
		return nil, fmt.Errorf("%s in storage: a %s key, not %s", p, got, alg)
	}
	ks.logger.Debug("dkim key loaded", zap.String("domain", domain), zap.String("selector", selector),
		zap.String("algorithm", got), zap.String("storage_key", p))
	return &key{domain: domain, selector: selector, algorithm: got, signer: signer}, nil
}

// make makes a key and stores it.
func (ks *keyStore) make(ctx context.Context, domain, selector, alg string) (*key, error) {
	if name := selector + "._domainkey." + domain; len(name) > 253 {
		return nil, fmt.Errorf("the record name %s is longer than 253 characters", name)
	}
	var signer crypto.Signer
	switch alg {
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		signer = priv
	case RSA2048:
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		signer = priv
	default:
		return nil, fmt.Errorf("unknown algorithm %q", alg)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, err
	}
	p := keyPath(domain, selector)
	if err := ks.storage.Store(ctx, p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		return nil, fmt.Errorf("storing %s: %v", p, err)
	}
	k := &key{domain: domain, selector: selector, algorithm: alg, signer: signer}
	rec := k.record(true)
	ks.logger.Info("dkim key made", zap.String("domain", domain), zap.String("selector", selector),
		zap.String("algorithm", alg), zap.String("storage_key", p),
		zap.String("record_name", rec.Name), zap.String("record", rec.Value))
	return k, nil
}

// others returns the domain's keys in storage that are not in use, by
// selector. A key that cannot be read is logged and left out: it signs
// nothing, and its record is not one we can vouch for.
func (ks *keyStore) others(ctx context.Context, domain string, inUse []*key) []*key {
	names, err := ks.storage.List(ctx, domainDir(domain), false)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			ks.logger.Warn("listing older dkim keys", zap.String("domain", domain), zap.Error(err))
		}
		return nil
	}
	slices.Sort(names)
	var out []*key
	for _, name := range names {
		sel, ok := strings.CutSuffix(path.Base(name), ".key")
		if !ok || checkSelector(sel) != nil || slices.ContainsFunc(inUse, func(k *key) bool { return k.selector == sel }) {
			continue
		}
		k, err := ks.readKey(ctx, domain, sel, "")
		if err != nil {
			ks.logger.Warn("older dkim key left out", zap.String("domain", domain), zap.String("selector", sel), zap.Error(err))
			continue
		}
		out = append(out, k)
	}
	return out
}

// parseKey reads a PEM private key: PKCS#8 ("PRIVATE KEY"), or PKCS#1
// ("RSA PRIVATE KEY", as openssl genrsa and opendkim-genkey write them)
// so that an existing key can be put in storage. It returns the key and
// its algorithm (ed25519 or rsa<bits>).
func parseKey(b []byte) (crypto.Signer, string, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, "", errors.New("no PEM block")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, "", fmt.Errorf("a PEM block of type %q, not a private key", block.Type)
	}
	if err != nil {
		return nil, "", err
	}
	switch k := parsed.(type) {
	case ed25519.PrivateKey:
		return k, Ed25519, nil
	case *rsa.PrivateKey:
		bits := k.N.BitLen()
		if bits < 1024 {
			// RFC 8301 3.2: verifiers must not consider such keys valid
			return nil, "", fmt.Errorf("an RSA key of %d bits (at least 1024)", bits)
		}
		return k, fmt.Sprintf("rsa%d", bits), nil
	default:
		return nil, "", fmt.Errorf("a %T key (ed25519 or RSA)", parsed)
	}
}

// record is the key's TXT record (RFC 6376 3.6.1): for Ed25519 the
// raw 32-byte public key (RFC 8463 4.2), for RSA the DER
// SubjectPublicKeyInfo.
func (k *key) record(inUse bool) Record {
	var kt string
	var pub []byte
	switch p := k.signer.Public().(type) {
	case ed25519.PublicKey:
		kt, pub = "ed25519", p
	default:
		der, err := x509.MarshalPKIXPublicKey(p)
		if err != nil {
			panic(err) // an RSA key parsed or made here always marshals
		}
		kt, pub = "rsa", der
	}
	return Record{
		Name:      k.selector + "._domainkey." + k.domain,
		Type:      "TXT",
		Value:     "v=DKIM1; k=" + kt + "; p=" + base64.StdEncoding.EncodeToString(pub),
		Domain:    k.domain,
		Selector:  k.selector,
		Algorithm: k.algorithm,
		InUse:     inUse,
	}
}
