package dnssectest

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// keyPair is a zone's KSK and ZSK: the base names of ldns-keygen's files
// (without .key and .private) and the KSK's DS.
type keyPair struct {
	ksk, zsk string
	ds       string
}

// keygen makes a fresh ECDSAP256SHA256 KSK and ZSK for the zone with
// ldns-keygen, in a directory of the zone's own.
func (s *Server) keygen(zone string) (*keyPair, error) {
	dir := filepath.Join(s.dir, "keys", zone)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	gen := func(ksk bool) (string, error) {
		args := []string{"-a", "ECDSAP256SHA256"}
		if ksk {
			args = append(args, "-k")
		}
		args = append(args, zone)
		out, err := runBoundedIn(dir, s.tools.keygen, args...)
		if err != nil {
			return "", fmt.Errorf("ldns-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		base := strings.TrimSpace(string(out))
		if base == "" || strings.ContainsAny(base, "/\n") {
			return "", fmt.Errorf("ldns-keygen %s printed %q, not a key's base name", strings.Join(args, " "), out)
		}
		return filepath.Join(dir, base), nil
	}
	ksk, err := gen(true)
	if err != nil {
		return nil, err
	}
	zsk, err := gen(false)
	if err != nil {
		return nil, err
	}
	dsText, err := os.ReadFile(ksk + ".ds")
	if err != nil {
		return nil, fmt.Errorf("the KSK's DS: %v", err)
	}
	ds, err := dns.NewRR(string(dsText))
	if err != nil {
		return nil, fmt.Errorf("the KSK's DS %q: %v", dsText, err)
	}
	d, ok := ds.(*dns.DS)
	if !ok {
		return nil, fmt.Errorf("%s.ds holds %q, not a DS", ksk, dsText)
	}
	// One line with spaces: Unbound's trust-anchor: takes it as it is.
	text := fmt.Sprintf("%s DS %d %d %d %s", d.Hdr.Name, d.KeyTag, d.Algorithm, d.DigestType, strings.ToLower(d.Digest))
	return &keyPair{ksk: ksk, zsk: zsk, ds: text}, nil
}

// sign signs the zone text with ldns-signzone (NSEC; signatures valid
// from an hour ago for 30 days) and returns the signed zone.
func (s *Server) sign(zone, text string, kp *keyPair) (string, error) {
	dir := filepath.Dir(kp.ksk)
	in := filepath.Join(dir, "unsigned.zone")
	out := filepath.Join(dir, "signed.zone")
	if err := os.WriteFile(in, []byte(text), 0o644); err != nil {
		return "", err
	}
	const layout = "20060102150405"
	now := time.Now().UTC()
	args := []string{
		"-o", zone,
		"-i", now.Add(-time.Hour).Format(layout),
		"-e", now.Add(30 * 24 * time.Hour).Format(layout),
		"-f", out,
		in, kp.zsk, kp.ksk,
	}
	if b, err := runBoundedIn(dir, s.tools.signzone, args...); err != nil {
		return "", fmt.Errorf("ldns-signzone %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	signed, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	return string(signed), nil
}

// corrupt flips bits in the signature of every RRSIG of the signed zone
// except those over the DNSKEY set: the keys still validate against the
// trust anchor, and everything else in the zone is bogus.
func corrupt(zone, signed string) (string, error) {
	zp := dns.NewZoneParser(strings.NewReader(signed), zone, "")
	var b strings.Builder
	n := 0
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if sig, isSig := rr.(*dns.RRSIG); isSig && sig.TypeCovered != dns.TypeDNSKEY {
			raw, err := base64.StdEncoding.DecodeString(sig.Signature)
			if err != nil || len(raw) == 0 {
				return "", fmt.Errorf("RRSIG %q: bad signature", sig.String())
			}
			raw[len(raw)/2] ^= 0xff
			sig.Signature = base64.StdEncoding.EncodeToString(raw)
			n++
		}
		b.WriteString(rr.String())
		b.WriteByte('\n')
	}
	if err := zp.Err(); err != nil {
		return "", fmt.Errorf("reading the signed zone: %v", err)
	}
	if n == 0 {
		return "", fmt.Errorf("the signed zone has no RRSIG to corrupt")
	}
	return b.String(), nil
}
