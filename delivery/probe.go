package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"time"
)

// HopPolicy is the client TLS level that would be in force for a hop
// (after PrepareDANE and any RaiseToVerify), and its source, as the
// delivery log would say it.
func HopPolicy(policy *ClientTLS, hop Hop) string {
	level, source := hopLevel(policy, hop)
	if level == levelTLSA {
		return "dane " + source
	}
	return string(level) + " " + source
}

// TLSARecords returns the usable TLSA records PrepareDANE found for the
// hop, as "usage selector type data".
func (h *Hop) TLSARecords() []string {
	var out []string
	for _, r := range h.tlsa {
		out = append(out, r.String())
	}
	return out
}

// ProbeResult is what a TLS probe of a next hop found, in the spirit of
// Postfix's posttls-finger.
type ProbeResult struct {
	Remote      string   `json:"remote"`
	STARTTLS    bool     `json:"starttls"`
	TLSVersion  string   `json:"tls_version,omitempty"`
	TLSCipher   string   `json:"tls_cipher,omitempty"`
	Subject     string   `json:"subject,omitempty"`
	Issuer      string   `json:"issuer,omitempty"`
	DNSNames    []string `json:"dns_names,omitempty"`
	NotAfter    string   `json:"not_after,omitempty"`
	CertSHA256  string   `json:"cert_sha256,omitempty"`
	SPKISHA256  string   `json:"spki_sha256,omitempty"`
	Verified    bool     `json:"verified"`
	Match       string   `json:"match,omitempty"`
	Error       string   `json:"error,omitempty"`
	LevelPolicy string   `json:"tls_policy"`
}

// Probe connects to a hop, says EHLO with hostname, and does STARTTLS
// and the handshake under the level in force, without sending mail; it
// reports the certificate and whether, and by what, it was
// authenticated. It never fails the handshake for verification, so
// that the certificate can be shown.
func Probe(ctx context.Context, hop Hop, policy *ClientTLS, hostname string) ProbeResult {
	level, _ := hopLevel(policy, hop)
	res := ProbeResult{Remote: hop.String(), LevelPolicy: HopPolicy(policy, hop)}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := (&net.Dialer{Timeout: DialTimeout}).DialContext(ctx, "tcp", hop.Addr)
	if err != nil {
		res.Error = fmt.Sprintf("connect: %v", err)
		return res
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	pre, err := preTLS(conn, hostname)
	if err != nil {
		res.Error = fmt.Sprintf("%s %s: %v", pre.stage, hop, err)
		return res
	}
	res.STARTTLS = pre.starttls
	if !pre.starttls {
		quit(conn)
		res.Error = "STARTTLS not offered"
		return res
	}
	if err := startTLS(conn); err != nil {
		res.Error = fmt.Sprintf("STARTTLS: %v", err)
		return res
	}
	var v Verification
	cfg := policy.config(hop, level, &v)
	var verr error
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		var roots = cfg.RootCAs
		if policy != nil {
			roots = policy.roots
		}
		verr = policy.check(cs.PeerCertificates, roots, cfg.ServerName, hop, level, &v)
		return nil // show the certificate even when it does not verify
	}
	tc := tls.Client(conn, cfg)
	tc.SetDeadline(time.Now().Add(CommandTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		res.Error = tlsFailure(err, hop.String())
		return res
	}
	cs := tc.ConnectionState()
	res.TLSVersion, res.TLSCipher = tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		c, k := sha256.Sum256(leaf.Raw), sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		res.Subject, res.Issuer, res.DNSNames = leaf.Subject.String(), leaf.Issuer.String(), leaf.DNSNames
		res.NotAfter = leaf.NotAfter.UTC().Format(time.RFC3339)
		res.CertSHA256, res.SPKISHA256 = hex.EncodeToString(c[:]), hex.EncodeToString(k[:])
	}
	res.Verified, res.Match = v.Verified, v.Match
	if verr != nil {
		res.Error = verr.Error()
	}
	tc.Write([]byte("QUIT\r\n"))
	return res
}
