package dane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"testing"
	"time"
)

// chain makes a CA and a leaf it issued for names, valid from..until.
func chain(t *testing.T, from, until time.Time, names ...string) (leaf, ca *x509.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "TA"},
		NotBefore: from, NotAfter: until.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: from, NotAfter: until, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(der)
	return leaf, ca
}

func rec(usage, selector, mtype uint8, c *x509.Certificate) Record {
	data := c.Raw
	if selector == SelectorSPKI {
		data = c.RawSubjectPublicKeyInfo
	}
	var h []byte
	switch mtype {
	case MatchFull:
		h = data
	case MatchSHA256:
		s := sha256.Sum256(data)
		h = s[:]
	case MatchSHA512:
		s := sha512.Sum512(data)
		h = s[:]
	}
	return Record{Usage: usage, Selector: selector, MatchingType: mtype, Data: hex.EncodeToString(h)}
}

// TestVerify: each usable record form against a chain, with the right
// and a wrong name, and an expired leaf (DANE-EE ignores dates and
// names; DANE-TA does not).
func TestVerify(t *testing.T) {
	now := time.Now()
	leaf, ca := chain(t, now.Add(-time.Hour), now.Add(time.Hour), "mx.example.test")
	expired, expiredCA := chain(t, now.Add(-48*time.Hour), now.Add(-24*time.Hour), "other.test")
	other, otherCA := chain(t, now.Add(-time.Hour), now.Add(time.Hour), "mx.example.test")
	names := []string{"mx.example.test", "example.test"}
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		rec   Record
		names []string
		ok    bool
	}{
		{"3 1 1", []*x509.Certificate{leaf, ca}, rec(3, 1, 1, leaf), names, true},
		{"3 0 1", []*x509.Certificate{leaf, ca}, rec(3, 0, 1, leaf), names, true},
		{"3 1 2", []*x509.Certificate{leaf}, rec(3, 1, 2, leaf), names, true},
		{"3 0 0", []*x509.Certificate{leaf}, rec(3, 0, 0, leaf), names, true},
		{"3 1 1 other key", []*x509.Certificate{leaf, ca}, rec(3, 1, 1, other), names, false},
		{"3 1 1 expired, wrong name", []*x509.Certificate{expired, expiredCA}, rec(3, 1, 1, expired), names, true},
		{"2 0 1 right name", []*x509.Certificate{leaf, ca}, rec(2, 0, 1, ca), names, true},
		{"2 1 1 right name", []*x509.Certificate{leaf, ca}, rec(2, 1, 1, ca), names, true},
		{"2 0 1 wrong name", []*x509.Certificate{leaf, ca}, rec(2, 0, 1, ca), []string{"mx.elsewhere.test"}, false},
		{"2 0 1 next-hop name", []*x509.Certificate{other, otherCA}, rec(2, 0, 1, otherCA), []string{"mx.nope.test", "mx.example.test"}, true},
		{"2 0 1 expired", []*x509.Certificate{expired, expiredCA}, rec(2, 0, 1, expiredCA), []string{"other.test"}, false},
		{"2 0 1 TA not sent", []*x509.Certificate{leaf}, rec(2, 0, 1, ca), names, false},
		{"2 0 1 of another CA", []*x509.Certificate{leaf, ca}, rec(2, 0, 1, otherCA), names, false},
		{"2 x x matching the leaf only", []*x509.Certificate{leaf, ca}, rec(2, 0, 1, leaf), names, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Verify(tc.chain, []Record{tc.rec}, tc.names, now)
			if tc.ok != (err == nil) {
				t.Fatalf("Verify = %v, %v; want ok %v", got, err, tc.ok)
			}
			if err == nil && got != tc.rec {
				t.Fatalf("matched %v, want %v", got, tc.rec)
			}
			if err != nil && !errors.Is(err, ErrNoMatch) {
				t.Fatalf("error %v is not ErrNoMatch", err)
			}
		})
	}
	// One matching record among others is enough.
	if _, err := Verify([]*x509.Certificate{leaf, ca}, []Record{rec(3, 1, 1, other), rec(2, 0, 1, otherCA), rec(3, 1, 1, leaf)}, names, now); err != nil {
		t.Fatalf("mixed records: %v", err)
	}
}

// TestUsable: only DANE-TA and DANE-EE with known selectors and matching
// types are usable for SMTP; PKIX-TA and PKIX-EE and unknown values are
// counted as unusable.
func TestUsable(t *testing.T) {
	in := []Record{
		{3, 1, 1, "AB"}, {2, 0, 2, "cd"}, {0, 0, 1, "ef"}, {1, 1, 1, "01"},
		{4, 1, 1, "02"}, {3, 2, 1, "03"}, {3, 1, 3, "04"}, {3, 1, 1, ""}, {255, 255, 255, "05"},
	}
	usable, unusable := Usable(in)
	if len(usable) != 2 || usable[0].Data != "ab" || unusable != 7 {
		t.Fatalf("usable %v, unusable %d", usable, unusable)
	}
}
