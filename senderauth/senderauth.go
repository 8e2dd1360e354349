// Package senderauth checks who sent a message: SPF (RFC 7208) for the
// MAIL FROM and HELO identities, DKIM signatures (RFC 6376, RFC 8463)
// and DMARC (RFC 7489), on mail from clients outside relay_networks. It
// writes one Authentication-Results header (RFC 8601) under the
// server's hostname, removes any that claims that authserv-id already,
// and enforces DMARC's p=reject (550 5.7.1) and p=quarantine (the
// quarantine) when asked to.
//
// It is a content check (package checks) that the server runs first, so
// that its header change, refusal or quarantine goes the same way as
// any check's. The protocols are the libraries': blitiri.com.ar/go/spf
// for SPF, github.com/emersion/go-msgauth for DKIM, DMARC records and
// the header; only the DMARC evaluation (alignment, the policy to
// apply, pct) is written here, as go-msgauth leaves it to its callers.
package senderauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/caddyserver/caddy/v2"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/dane"
	"github.com/caddy-smtp/caddy-smtp/message"
)

// Bounds of one message's checks.
const (
	// DefaultTimeout is how long all of a message's lookups may take.
	DefaultTimeout = 20 * time.Second
	// lookupTimeout bounds one DNS query.
	lookupTimeout = 5 * time.Second
	// maxSignatures is how many DKIM signatures are verified; more are
	// ignored (and noted): each costs a key lookup.
	maxSignatures = 8
	// maxAuthors bounds the From: addresses evaluated for DMARC (each
	// costs lookups in the message's budget); more is no single author.
	maxAuthors = 5
)

// Counter counts one method's result (spf, dkim, dmarc) for metrics.
type Counter func(method, result string)

// Auth is a server's sender authentication, a checks.Check.
type Auth struct {
	checks.Options

	cfg      Config
	authserv string
	resolver *net.Resolver
	timeout  time.Duration
	count    Counter
}

// New checks cfg and makes the check; authserv is the server's
// hostname, the authserv-id of its Authentication-Results; field names
// the config in errors.
func New(cfg Config, authserv, field string, count Counter) (*Auth, error) {
	switch {
	case cfg.SPF == nil && !cfg.DKIM && cfg.DMARC == "":
		return nil, fmt.Errorf("%s: nothing to check: give spf, dkim or dmarc", field)
	case cfg.DMARC != "" && !oneOf(cfg.DMARC, DMARCEnforce, DMARCReportOnly):
		return nil, fmt.Errorf("%s.dmarc: %q is not one of enforce, report_only", field, cfg.DMARC)
	case cfg.DMARC != "" && (cfg.SPF == nil || !cfg.DKIM):
		return nil, fmt.Errorf("%s.dmarc: needs spf and dkim", field)
	case cfg.SPF != nil && !oneOf(cfg.SPF.Fail, "", "record", "reject"):
		return nil, fmt.Errorf("%s.spf.fail: %q is not one of record, reject", field, cfg.SPF.Fail)
	case !oneOf(cfg.OnTemperror, "", checks.OnErrorTempfail, checks.OnErrorAccept):
		return nil, fmt.Errorf("%s.on_temperror: %q is not one of tempfail, accept", field, cfg.OnTemperror)
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("%s.timeout: must not be negative", field)
	case authserv == "":
		return nil, fmt.Errorf("%s: the server needs a hostname (the authserv-id)", field)
	}
	cfg.DMARC = strings.ToLower(cfg.DMARC)
	if cfg.SPF != nil {
		spfCfg := *cfg.SPF
		spfCfg.Fail = strings.ToLower(spfCfg.Fail)
		cfg.SPF = &spfCfg
	}
	cfg.OnTemperror = strings.ToLower(cfg.OnTemperror)
	if cfg.OnTemperror == "" {
		cfg.OnTemperror = checks.OnErrorTempfail
	}
	a := &Auth{cfg: cfg, authserv: authserv, resolver: net.DefaultResolver, timeout: time.Duration(cfg.Timeout), count: count}
	if a.timeout == 0 {
		a.timeout = DefaultTimeout
	}
	if cfg.Resolver != "" {
		server, err := dane.ResolverAddr(cfg.Resolver)
		if err == nil {
			var host string
			if host, _, err = net.SplitHostPort(server); err == nil && (host == "" || strings.ContainsAny(host, "[]")) {
				err = errors.New("no host")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s.resolver: %q: %w", field, cfg.Resolver, err)
		}
		a.resolver = dane.NetResolver(server)
	}
	if a.count == nil {
		a.count = func(string, string) {}
	}
	// The check's own bound is past the lookups' (which end in
	// temperror results, for on_temperror), so that it only catches a
	// check that does not end; anything else that goes wrong is a
	// tempfail: a check is never waived silently.
	a.Options = checks.Options{Timeout: caddy.Duration(a.timeout + 5*time.Second), OnError: checks.OnErrorTempfail,
		MaxSize: 1 << 40, MaxConcurrent: 1024}
	if err := a.Options.Provision(field); err != nil {
		return nil, err
	}
	return a, nil
}

// results is what the methods found for one message.
type results struct {
	spfHelo, spfFrom spf.Result
	heloName         string
	nullSender       bool
	mailFrom         string // the MAIL FROM domain SPF checked (HELO's for <>)
	dkim             []*dkim.Verification
	dkimNote         string
	dkimTooLarge     bool
	fromDomains      []string // the From: address domains
	fromErr          error    // why the From: has no domain to evaluate
	fromDomain       string   // the one the DMARC result is for
	dmarc            authres.ResultValue
	dmarcReason      string
	policy           dmarc.Policy
	temperror        []string // which methods had DNS trouble
}

// Check checks a message; see the package doc.
func (a *Auth) Check(ctx context.Context, m *checks.Message) (checks.Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	r, err := m.Open()
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the message: %w", err)
	}
	fields, _, err := message.ReadHeader(bufio.NewReader(r))
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the header: %w", err)
	}
	if m.Relay || m.Auth != "" {
		// Not checked; a forged verdict of ours still goes.
		v := checks.Verdict{Action: checks.Accept, Reason: "not checked: relay_networks or authenticated client"}
		v.Edits = a.removeForged(fields)
		return v, nil
	}
	var res results
	res.fromDomains, res.fromErr = authorDomains(fields)
	if a.cfg.SPF != nil {
		a.checkSPF(ctx, m, &res)
	}
	if a.cfg.DKIM {
		r, err := m.Open()
		if err != nil {
			return checks.Verdict{}, fmt.Errorf("reading the message: %w", err)
		}
		if why := unverifiable(r); why != "" {
			// go-msgauth joins a field's lines one by one (quadratic
			// time): a hostile header is not given to it.
			res.dkimNote = why
			res.dkimTooLarge = true
			a.count("dkim", string(authres.ResultPermError))
		} else if err := a.checkDKIM(ctx, m, &res); err != nil {
			return checks.Verdict{}, err
		}
	}
	if a.cfg.DMARC != "" {
		a.checkDMARC(ctx, &res)
	}
	return a.verdict(fields, &res), nil
}

func (a *Auth) checkSPF(ctx context.Context, m *checks.Message, res *results) {
	ip := net.IP(m.ClientIP.Unmap().AsSlice())
	opts := []spf.Option{spf.WithResolver(boundResolver{a.resolver}), spf.WithContext(ctx)}
	res.spfHelo, res.heloName = spf.None, strings.ToLower(m.Helo)
	if helo := m.Helo; helo != "" && !strings.HasPrefix(helo, "[") {
		// RFC 7208 2.3: the HELO identity, checked as postmaster@helo.
		res.spfHelo, _ = spf.CheckHostWithSender(ip, helo, "postmaster@"+helo, opts...)
	}
	if m.From == "" {
		// The null sender: the MAIL FROM identity is the HELO's (2.4).
		res.spfFrom, res.mailFrom, res.nullSender = res.spfHelo, normalize(m.Helo), true
	} else {
		res.spfFrom, _ = spf.CheckHostWithSender(ip, m.Helo, m.From, opts...)
		res.mailFrom = normalize(m.From[strings.LastIndexByte(m.From, '@')+1:])
	}
	if res.spfFrom == spf.TempError {
		// The HELO identity's trouble matters only when it is the
		// MAIL FROM's too (the null sender).
		res.temperror = append(res.temperror, "spf")
	}
	a.count("spf", string(res.spfFrom))
}

func (a *Auth) checkDKIM(ctx context.Context, m *checks.Message, res *results) error {
	r, err := m.Open()
	if err != nil {
		return fmt.Errorf("reading the message: %w", err)
	}
	vs, err := dkim.VerifyWithOptions(r, &dkim.VerifyOptions{LookupTXT: a.lookupTXT(ctx), MaxVerifications: maxSignatures})
	switch {
	case errors.Is(err, dkim.ErrTooManySignatures):
		res.dkimNote = fmt.Sprintf("more than %d signatures; the rest not verified", maxSignatures)
	case err != nil:
		// The message could not be read as one (go-msgauth's own
		// header reader): no signature can be verified.
		res.dkimNote = "message not verifiable: " + checks.OneLine(err.Error())
		vs = nil
	}
	res.dkim = vs
	if len(vs) == 0 {
		a.count("dkim", "none")
	}
	for _, v := range vs {
		result := dkimResult(v.Err)
		if result == authres.ResultTempError && alignedAny(normalize(v.Domain), res.fromDomains) {
			// Only a signature that could authenticate the author: a
			// stale list signature whose DNS is dead changes nothing.
			res.temperror = append(res.temperror, "dkim")
		}
		a.count("dkim", string(result))
	}
	return nil
}

// dkimResult maps a verification's error onto RFC 8601's result names.
func dkimResult(err error) authres.ResultValue {
	switch {
	case err == nil:
		return authres.ResultPass
	case dkim.IsTempFail(err):
		return authres.ResultTempError
	case dkim.IsPermFail(err):
		return authres.ResultPermError
	}
	return authres.ResultFail
}

func (a *Auth) checkDMARC(ctx context.Context, res *results) {
	defer func() { a.count("dmarc", string(res.dmarc)) }()
	if res.fromErr != nil {
		res.dmarc, res.dmarcReason = authres.ResultPermError, res.fromErr.Error()
		return
	}
	// Several authors (RFC 7489 6.6.1): each domain is evaluated, and
	// the strictest failing policy applies.
	rank := map[dmarc.Policy]int{dmarc.PolicyNone: 1, dmarc.PolicyQuarantine: 2, dmarc.PolicyReject: 3}
	var passed, temp, failed bool
	for _, from := range res.fromDomains {
		result, policy, reason := a.evaluate(ctx, from, res)
		switch result {
		case authres.ResultFail:
			if !failed || rank[policy] > rank[res.policy] {
				res.policy, res.fromDomain, res.dmarcReason = policy, from, reason
			}
			failed = true
		case authres.ResultTempError:
			temp = true
			if !failed {
				res.fromDomain, res.dmarcReason = from, reason
			}
		case authres.ResultPass:
			passed = true
		}
		if res.fromDomain == "" {
			res.fromDomain = from
		}
	}
	switch {
	case failed && temp && res.policy != dmarc.PolicyReject:
		// An author whose policy is unknown (DNS) might reject: a
		// weaker failing co-author must not decide for it.
		res.dmarc = authres.ResultFail
		res.temperror = append(res.temperror, "dmarc")
	case failed:
		res.dmarc = authres.ResultFail
	case temp:
		res.dmarc = authres.ResultTempError
		res.temperror = append(res.temperror, "dmarc")
	case passed:
		res.dmarc = authres.ResultPass
	default:
		res.dmarc = authres.ResultNone
	}
}

// evaluate is DMARC for one author domain.
func (a *Auth) evaluate(ctx context.Context, from string, res *results) (authres.ResultValue, dmarc.Policy, string) {
	rec, org, err := a.lookupDMARC(ctx, from)
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		return authres.ResultNone, "", ""
	case err != nil:
		return authres.ResultTempError, "", "DMARC record lookup failed"
	}
	if res.spfFrom == spf.Pass && aligned(res.mailFrom, from, rec.SPFAlignment) {
		return authres.ResultPass, "", ""
	}
	for _, v := range res.dkim {
		if v.Err == nil && aligned(normalize(v.Domain), from, rec.DKIMAlignment) {
			return authres.ResultPass, "", ""
		}
	}
	policy, reason := rec.Policy, ""
	if org && rec.SubdomainPolicy != "" && from != publicSuffixOrg(from) {
		// The record is the organizational domain's, for a subdomain
		// (RFC 7489 6.6.3): its sp= applies.
		policy = rec.SubdomainPolicy
	}
	if rec.Percent != nil && *rec.Percent < 100 && rand.IntN(100) >= *rec.Percent {
		// Not sampled (6.6.4): the next policy down applies.
		switch policy {
		case dmarc.PolicyReject:
			policy = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			policy = dmarc.PolicyNone
		}
		reason = "pct sampling"
	}
	return authres.ResultFail, policy, reason
}

// lookupDMARC finds the DMARC record for the author domain, at the
// domain itself or else at its organizational domain (org true).
func (a *Auth) lookupDMARC(ctx context.Context, from string) (*dmarc.Record, bool, error) {
	rec, err := a.lookupRecord(ctx, from)
	if !errors.Is(err, errNoRecord) {
		return rec, false, err // found (usable or not), or DNS trouble
	}
	org := publicSuffixOrg(from)
	if org == from || org == "" {
		return nil, false, dmarc.ErrNoPolicy
	}
	rec, err = a.lookupRecord(ctx, org)
	if errors.Is(err, errNoRecord) {
		err = dmarc.ErrNoPolicy
	}
	return rec, true, err
}

// authorDomains are the domains of the message's From: addresses. A
// message with no From: field or several, or one that does not parse,
// has none (RFC 7489 6.6.1): under enforce it is refused.
func authorDomains(fields []message.Field) ([]string, error) {
	var from []message.Field
	for _, f := range fields {
		if strings.EqualFold(f.Name, "From") {
			from = append(from, f)
		}
	}
	if len(from) != 1 {
		return nil, fmt.Errorf("%d From: fields", len(from))
	}
	list, err := message.ParseAddressList(strings.TrimSpace(from[0].Value()))
	if err != nil || len(list) == 0 {
		return nil, errors.New("the From: field does not parse")
	}
	if len(list) > maxAuthors {
		return nil, fmt.Errorf("%d From: addresses, more than %d", len(list), maxAuthors)
	}
	var domains []string
	for _, addr := range list {
		d := normalize(addr.Address[strings.LastIndexByte(addr.Address, '@')+1:])
		if d == "" || !strings.Contains(d, ".") {
			return nil, errors.New("a From: address has no domain")
		}
		if !slices.Contains(domains, d) {
			domains = append(domains, d)
		}
	}
	return domains, nil
}

// alignedAny: domain is aligned (relaxed) with one of the authors'.
func alignedAny(domain string, from []string) bool {
	for _, f := range from {
		if aligned(domain, f, dmarc.AlignmentRelaxed) {
			return true
		}
	}
	return false
}

// aligned compares an authenticated domain with the author domain:
// strict is equality, relaxed the same organizational domain.
func aligned(domain, from string, mode dmarc.AlignmentMode) bool {
	if domain == "" {
		return false
	}
	if domain == from {
		return true
	}
	if mode == dmarc.AlignmentStrict {
		return false
	}
	org := publicSuffixOrg(from)
	return org != "" && org == publicSuffixOrg(domain)
}

// publicSuffixOrg is the organizational domain (RFC 7489 3.2): one
// label under the public suffix.
func publicSuffixOrg(d string) string {
	org, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return ""
	}
	return org
}

// normalize is a domain in lower-case A-labels without the final dot.
func normalize(d string) string {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		return a
	}
	return d
}

// verdict writes the header and decides.
func (a *Auth) verdict(fields []message.Field, res *results) checks.Verdict {
	var ar []arResult
	var summary []string
	if a.cfg.SPF != nil {
		if !res.nullSender && res.spfHelo != spf.None {
			ar = append(ar, arResult{method: "spf", result: string(res.spfHelo), props: [][2]string{{"smtp.helo", res.heloName}}})
		}
		mailfrom := res.mailFrom
		if res.nullSender {
			mailfrom = "postmaster@" + res.mailFrom // RFC 7208 2.4
		}
		ar = append(ar, arResult{method: "spf", result: string(res.spfFrom), props: [][2]string{{"smtp.mailfrom", mailfrom}}})
		summary = append(summary, "spf="+string(res.spfFrom))
	}
	if a.cfg.DKIM {
		switch {
		case res.dkimTooLarge:
			ar = append(ar, arResult{method: "dkim", result: string(authres.ResultPermError), reason: res.dkimNote})
			summary = append(summary, "dkim=permerror")
		case len(res.dkim) == 0:
			ar = append(ar, arResult{method: "dkim", result: string(authres.ResultNone), reason: res.dkimNote})
			summary = append(summary, "dkim=none")
		}
		for _, v := range res.dkim {
			r := arResult{method: "dkim", result: string(dkimResult(v.Err)),
				props: [][2]string{{"header.d", v.Domain}, {"header.i", v.Identifier}}}
			if v.Err != nil {
				r.reason = v.Err.Error()
			}
			ar = append(ar, r)
			summary = append(summary, "dkim="+r.result+"("+checks.OneLine(v.Domain)+")")
		}
	}
	if a.cfg.DMARC != "" {
		reason := res.dmarcReason
		if res.dmarc == authres.ResultFail {
			reason = strings.TrimSpace("p=" + string(res.policy) + " " + reason)
		}
		ar = append(ar, arResult{method: "dmarc", result: string(res.dmarc), reason: reason,
			props: [][2]string{{"header.from", res.fromDomain}}})
		summary = append(summary, "dmarc="+string(res.dmarc))
		if res.dmarc == authres.ResultFail {
			summary = append(summary, "policy="+string(res.policy))
		}
	}
	edits := a.removeForged(fields)
	v := checks.Verdict{Action: checks.Accept, Reason: strings.Join(summary, " ")}
	if len(edits) > 0 {
		v.Reason += fmt.Sprintf(" (%d forged Authentication-Results removed)", len(edits))
	}
	v.Edits = append(edits, message.HeaderEdit{Op: message.InsertHeader, Name: "Authentication-Results",
		Value: formatAR(a.authserv, ar)})

	dmarcPassed := res.dmarc == authres.ResultPass
	enforce := a.cfg.DMARC == DMARCEnforce
	switch {
	case len(res.temperror) > 0 && !dmarcPassed && a.cfg.OnTemperror == checks.OnErrorTempfail:
		v.Action, v.Edits = checks.Tempfail, nil
		v.Reply = "DNS lookups for " + strings.Join(dedup(res.temperror), ", ") + " failed, try again later"
		if res.temperror[0] == "spf" {
			v.Code = "4.7.24" // RFC 7372: SPF validation error
		}
	case enforce && res.fromErr != nil:
		// RFC 7489 6.6.1: no single author to evaluate DMARC for.
		v.Action, v.Edits = checks.Reject, nil
		v.Reply = "Message has no single valid From: address (" + res.fromErr.Error() + ")"
	case enforce && res.dmarc == authres.ResultFail && res.policy == dmarc.PolicyReject:
		v.Action, v.Edits = checks.Reject, nil
		v.Reply = "DMARC policy of " + res.fromDomain + " rejects this message (not authenticated)"
	case enforce && res.dmarc == authres.ResultFail && res.policy == dmarc.PolicyQuarantine:
		v.Action = checks.Quarantine
		v.Reason = "dmarc=fail policy=quarantine from " + res.fromDomain + ": " + v.Reason
	case a.cfg.SPF != nil && a.cfg.SPF.Fail == "reject" && res.spfFrom == spf.Fail && !dmarcPassed &&
		(!enforce || res.dmarc != authres.ResultFail):
		// SPF fail alone, with no DMARC policy deciding.
		v.Action, v.Edits = checks.Reject, nil
		v.Code = "5.7.23" // RFC 7372: SPF validation failed
		v.Reply = "SPF check failed for " + res.mailFrom
	}
	return v
}

func dedup(s []string) []string {
	var out []string
	for _, x := range s {
		if len(out) == 0 || out[len(out)-1] != x {
			out = append(out, x)
		}
	}
	return out
}

// lookupTXT is a TXT lookup for go-msgauth, bounded in time by the
// message's context and per query.
func (a *Auth) lookupTXT(ctx context.Context) func(string) ([]string, error) {
	return func(name string) ([]string, error) { return boundResolver{a.resolver}.LookupTXT(ctx, name) }
}

// boundResolver bounds each of SPF's queries in time.
type boundResolver struct{ r *net.Resolver }

func (b boundResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	return b.r.LookupTXT(ctx, name)
}

func (b boundResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	return b.r.LookupMX(ctx, name)
}

func (b boundResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	return b.r.LookupIPAddr(ctx, host)
}

func (b boundResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	return b.r.LookupAddr(ctx, addr)
}

var _ checks.Check = (*Auth)(nil)
