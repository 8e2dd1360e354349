package sts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds a TXT lookup and a policy fetch each.
const DefaultTimeout = 30 * time.Second

// Fetcher looks up a domain's _mta-sts TXT record and fetches its
// policy from https://mta-sts.<domain>/.well-known/mta-sts.txt.
type Fetcher struct {
	// Resolver resolves the TXT record and the policy host (the mx
	// target's); nil: the system's.
	Resolver *net.Resolver
	// Roots verify the policy host's certificate; nil: the system roots.
	Roots *x509.CertPool
	// Timeout of each lookup and fetch; 0: DefaultTimeout.
	Timeout time.Duration
	// Port to fetch from; 0: 443, as RFC 8461 says. Tests set another.
	Port int
}

func (f *Fetcher) timeout() time.Duration {
	if f.Timeout > 0 {
		return f.Timeout
	}
	return DefaultTimeout
}

func (f *Fetcher) resolver() *net.Resolver {
	if f.Resolver != nil {
		return f.Resolver
	}
	return net.DefaultResolver
}

// TXT looks up _mta-sts.<domain>: the policy id, and whether there is a
// (single, valid) record. A name that does not exist is no error.
func (f *Fetcher) TXT(ctx context.Context, domain string) (id string, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout())
	defer cancel()
	records, err := f.resolver().LookupTXT(ctx, "_mta-sts."+domain)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("TXT lookup of _mta-sts.%s: %w", domain, err)
	}
	id, ok = ParseTXT(records)
	return id, ok, nil
}

// Fetch gets and parses a domain's policy: HTTPS with a certificate
// valid for mta-sts.<domain>, no redirects (RFC 8461 3.3), status 200,
// Content-Type text/plain, at most MaxPolicySize bytes, within the
// timeout.
func (f *Fetcher) Fetch(ctx context.Context, domain string) (*Policy, error) {
	host := "mta-sts." + domain
	port := "443"
	if f.Port != 0 {
		port = strconv.Itoa(f.Port)
	}
	dialer := &net.Dialer{Timeout: f.timeout(), Resolver: f.resolver()}
	client := &http.Client{
		Timeout: f.timeout(),
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				h, _, _ := net.SplitHostPort(addr)
				return dialer.DialContext(ctx, network, net.JoinHostPort(h, port))
			},
			TLSClientConfig:        &tls.Config{RootCAs: f.Roots, ServerName: host, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:    f.timeout(),
			ResponseHeaderTimeout:  f.timeout(),
			MaxResponseHeaderBytes: 16 << 10,
			DisableKeepAlives:      true,
			Proxy:                  nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirects are not followed (RFC 8461 3.3)")
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/mta-sts.txt", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the policy of %s: %w", domain, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the policy of %s: status %s (redirects are not followed)", domain, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || !strings.EqualFold(mt, "text/plain") {
		return nil, fmt.Errorf("fetching the policy of %s: Content-Type %q is not text/plain", domain, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the policy of %s: %w", domain, err)
	}
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("the policy of %s is larger than %d bytes", domain, MaxPolicySize)
	}
	p, err := Parse(body)
	if err != nil {
		return nil, fmt.Errorf("the policy of %s: %w", domain, err)
	}
	return p, nil
}
