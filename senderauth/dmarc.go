package senderauth

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
)

// DMARC record discovery and parsing, written here: go-msgauth's
// dmarc.Lookup takes the first of several records and refuses a whole
// record for one bad optional tag, where RFC 7489 says several records
// are none (6.6.3) and bad optional tags are ignored for their
// defaults (6.3). Its Record type is reused.

// errDMARCTemp is a DMARC lookup that DNS could not answer.
var errDMARCTemp = errors.New("DMARC record lookup failed")

// errNoRecord is a name without a DMARC record: only then does
// discovery go on to the organizational domain (RFC 7489 6.6.3); a
// record found but unusable (several, no valid policy) ends it with
// dmarc.ErrNoPolicy.
var errNoRecord = errors.New("no DMARC record")

// lookupRecord returns the one DMARC record at _dmarc.<domain>:
// dmarc.ErrNoPolicy when there is none, several, or none that has a
// valid policy.
func (a *Auth) lookupRecord(ctx context.Context, domain string) (*dmarc.Record, error) {
	txts, err := boundResolver{a.resolver}.LookupTXT(ctx, "_dmarc."+domain)
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return nil, errNoRecord
	case err != nil:
		return nil, errDMARCTemp
	}
	var recs []string
	for _, t := range txts {
		if v, _, _ := strings.Cut(t, ";"); strings.ReplaceAll(strings.ReplaceAll(v, " ", ""), "\t", "") == "v=DMARC1" {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		return nil, errNoRecord
	case 1:
	default:
		return nil, dmarc.ErrNoPolicy
	}
	return parseRecord(recs[0])
}

// maxRecord bounds what of a DMARC record is read.
const maxRecord = 4096

// parseRecord reads a DMARC record leniently: tag names and policy
// values are case-insensitive, a bad optional tag gets its default,
// and a record without a valid p= is p=none when it asks for reports
// (rua=, 6.6.3) and no policy otherwise.
func parseRecord(txt string) (*dmarc.Record, error) {
	if len(txt) > maxRecord {
		txt = txt[:maxRecord]
	}
	rec := &dmarc.Record{DKIMAlignment: dmarc.AlignmentRelaxed, SPFAlignment: dmarc.AlignmentRelaxed}
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if _, seen := tags[k]; !seen {
			tags[k] = strings.TrimSpace(v)
		}
	}
	policy := func(v string) (dmarc.Policy, bool) {
		switch p := dmarc.Policy(strings.ToLower(v)); p {
		case dmarc.PolicyNone, dmarc.PolicyQuarantine, dmarc.PolicyReject:
			return p, true
		}
		return "", false
	}
	p, ok := policy(tags["p"])
	if !ok {
		if tags["rua"] == "" {
			return nil, dmarc.ErrNoPolicy
		}
		p = dmarc.PolicyNone
	}
	rec.Policy = p
	if v, set := tags["sp"]; set {
		sp, ok := policy(v)
		if !ok {
			// An invalid sp= is an invalid policy (6.6.3): none.
			sp = dmarc.PolicyNone
		}
		rec.SubdomainPolicy = sp
	}
	if strings.EqualFold(tags["adkim"], "s") {
		rec.DKIMAlignment = dmarc.AlignmentStrict
	}
	if strings.EqualFold(tags["aspf"], "s") {
		rec.SPFAlignment = dmarc.AlignmentStrict
	}
	if v, ok := tags["pct"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 100 {
			rec.Percent = &n
		}
	}
	return rec, nil
}
