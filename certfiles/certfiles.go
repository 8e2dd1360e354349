// Package certfiles puts certificate files a server names into Caddy's
// tls app, so that they live in the one certificate cache Caddy has
// (OCSP stapling and refresh, caddytls.AllMatchingCertificates, HTTPS
// sites of the same config), as Caddy's own `tls cert key` does. This is
// written here because caddytls has no exported way to add a
// certificate from another app once the tls app is provisioned.
package certfiles

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
)

// Load loads a certificate chain file and its key file with Caddy's
// file loader (the tls app's `load_files`) into the tls app's
// certificate cache, as the tls app loads its own, and returns the tag
// that selects it (a caddytls connection policy's certificate_selection
// any_tag). So there is one cache: the tls app staples and
// refreshes OCSP for it, and sees it (caddytls.AllMatchingCertificates).
//
// The tls app takes certificate loaders only from its own JSON, which
// our `certificate` field is not part of, and has no exported way to
// add one once provisioned. Its cache is reachable only through a
// certmagic.Config made on it, and the tls app gives one to every
// issuer of an automation policy provisioned against it that asks for
// it (caddytls.ConfigSetter). This policy is never added to the tls
// app, so it manages no name and its issuer is never asked to issue.
func Load(ctx caddy.Context, certFile, keyFile string) (string, error) {
	tlsAppIface, err := ctx.App("tls")
	if err != nil {
		return "", fmt.Errorf("getting tls app: %w", err)
	}
	tlsApp, ok := tlsAppIface.(*caddytls.TLS)
	if !ok {
		return "", fmt.Errorf("tls app is %T", tlsAppIface)
	}
	loaded, err := caddytls.FileLoader{{Certificate: certFile, Key: keyFile}}.LoadCertificates()
	if err != nil {
		return "", err
	}
	cert := loaded[0].Certificate
	cache := new(cacheAccess)
	ap := &caddytls.AutomationPolicy{
		Issuers: []certmagic.Issuer{cache},
		// What the tls app does for the certificates it loads itself.
		DisableOCSPStapling: tlsApp.DisableOCSPStapling,
	}
	if err := ap.Provision(tlsApp); err != nil {
		return "", fmt.Errorf("reaching the tls app's certificate cache: %w", err)
	}
	if cache.magic == nil {
		return "", errors.New("reaching the tls app's certificate cache: the tls app gave no certmagic config")
	}
	tag := tagOf(cert)
	if _, err := cache.magic.CacheUnmanagedTLSCertificate(ctx, cert, []string{tag}); err != nil {
		return "", fmt.Errorf("caching the certificate in the tls app: %w", err)
	}
	return tag, nil
}

// tagOf names a certificate chain by its content. A
// certificate stays in the tls app's cache after a config reload that
// replaced its files (the cache drops only what the tls app loaded
// itself); a tag per server would then select the old chain and the new
// one alike, so the tag is the chain's.
func tagOf(cert tls.Certificate) string {
	h := sha256.New()
	for _, der := range cert.Certificate {
		h.Write(der)
	}
	return "caddy-smtp/certificate/" + hex.EncodeToString(h.Sum(nil)[:16])
}

// cacheAccess is the issuer through which Load gets a
// certmagic.Config on the tls app's certificate cache (SetConfig). It
// belongs to no automation policy of the tls app, so it is never asked
// to issue; if it were, it refuses.
type cacheAccess struct {
	magic *certmagic.Config
}

// SetConfig implements caddytls.ConfigSetter.
func (c *cacheAccess) SetConfig(cfg *certmagic.Config) { c.magic = cfg }

// Issue implements certmagic.Issuer; it never issues.
func (*cacheAccess) Issue(context.Context, *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	return nil, errors.New("smtp: a server's certificate files are not issued")
}

// IssuerKey implements certmagic.Issuer.
func (*cacheAccess) IssuerKey() string { return "caddy-smtp-certificate-files" }

// Interface guards
var (
	_ certmagic.Issuer      = (*cacheAccess)(nil)
	_ caddytls.ConfigSetter = (*cacheAccess)(nil)
)
