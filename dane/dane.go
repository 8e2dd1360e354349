// Package dane is DANE for SMTP (RFC 7672) on the sending side: which
// TLSA records are usable, and whether a server's certificate chain
// matches them. Looking the records up, with DNSSEC, is lookup.go.
//
// Written here: github.com/miekg/dns has the TLSA type and the digest of
// a certificate (CertificateToDANE), but no SMTP DANE verification with
// RFC 7672's rules (DANE-EE ignores names and expiry; DANE-TA needs the
// name; usages 0 and 1 are unusable for SMTP).
package dane

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// TLSA certificate usages, selectors and matching types (RFC 6698 and
// RFC 7218's names).
const (
	UsageDANETA = 2 // trust anchor: a CA certificate or key in the chain
	UsageDANEEE = 3 // end entity: the server's own certificate or key

	SelectorCert = 0 // the full certificate (DER)
	SelectorSPKI = 1 // the SubjectPublicKeyInfo

	MatchFull   = 0 // the data itself
	MatchSHA256 = 1
	MatchSHA512 = 2
)

// Record is one TLSA record.
type Record struct {
	Usage, Selector, MatchingType uint8
	// Data is the association data in lower-case hex.
	Data string
}

func (r Record) String() string {
	return fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, r.Data)
}

// Usable splits records into those SMTP clients use (RFC 7672 3.1:
// DANE-TA(2) and DANE-EE(3), selectors 0 and 1, matching types 0, 1
// and 2) and a count of the rest. PKIX-TA(0) and PKIX-EE(1) are
// unusable for SMTP (RFC 7672 3.1.3).
func Usable(records []Record) (usable []Record, unusable int) {
	for _, r := range records {
		if (r.Usage == UsageDANETA || r.Usage == UsageDANEEE) && r.Selector <= SelectorSPKI &&
			r.MatchingType <= MatchSHA512 && r.Data != "" {
			r.Data = strings.ToLower(r.Data)
			usable = append(usable, r)
			continue
		}
		unusable++
	}
	return usable, unusable
}

// matches reports whether cert matches record's selector and matching
// type.
func matches(r Record, cert *x509.Certificate) bool {
	var data []byte
	switch r.Selector {
	case SelectorCert:
		data = cert.Raw
	case SelectorSPKI:
		data = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	var got string
	switch r.MatchingType {
	case MatchFull:
		got = hex.EncodeToString(data)
	case MatchSHA256:
		h := sha256.Sum256(data)
		got = hex.EncodeToString(h[:])
	case MatchSHA512:
		h := sha512.Sum512(data)
		got = hex.EncodeToString(h[:])
	default:
		return false
	}
	return got == r.Data
}

// ErrNoMatch is returned when no usable record matches the chain.
var ErrNoMatch = errors.New("no TLSA record matches the server's certificate chain")

// Verify checks a server's certificate chain (leaf first, as sent)
// against usable records: a DANE-EE record matching the leaf
// authenticates it whatever its names and dates (RFC 7672 3.1.1); a
// DANE-TA record matching a certificate of the chain makes it the
// trust anchor of an ordinary verification for one of names (the TLSA
// base domain, and the next-hop domain), at time now (RFC 7672 3.1.2,
// 3.2.2). It returns the record that matched.
func Verify(chain []*x509.Certificate, records []Record, names []string, now time.Time) (Record, error) {
	if len(chain) == 0 {
		return Record{}, errors.New("the server sent no certificate")
	}
	leaf := chain[0]
	for _, r := range records {
		if r.Usage == UsageDANEEE && matches(r, leaf) {
			return r, nil
		}
	}
	var lastErr error
	for _, r := range records {
		if r.Usage != UsageDANETA {
			continue
		}
		for i, ta := range chain {
			if i == 0 || !matches(r, ta) {
				continue // a trust anchor issues the leaf; DANE-EE is for the leaf itself
			}
			roots := x509.NewCertPool()
			roots.AddCert(ta)
			inter := x509.NewCertPool()
			for _, c := range chain[1:i] {
				inter.AddCert(c)
			}
			for _, name := range names {
				if name == "" {
					continue
				}
				_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name, CurrentTime: now,
					KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
				if err == nil {
					return r, nil
				}
				lastErr = err
			}
		}
	}
	if lastErr != nil {
		return Record{}, fmt.Errorf("%w: DANE-TA matched, but: %v", ErrNoMatch, lastErr)
	}
	return Record{}, ErrNoMatch
}
