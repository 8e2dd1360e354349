package mx

import (
	"context"
	"time"

	"github.com/caddy-smtp/caddy-smtp/delivery"
)

// Report is what the gateway would do for mail to a domain through this
// target, for `caddy smtp-tls check` and GET /smtp/tls-policy/<domain>.
type Report struct {
	Domain string `json:"domain"`
	// Level is the route's client TLS level.
	Level string `json:"level"`
	// MXSecure says the MX answer was DNSSEC-validated (checked under
	// the dane levels only).
	MXSecure bool `json:"mx_dnssec"`
	// MTASTS is the domain's policy, if any, and how it was found.
	MTASTS *PolicyReport `json:"mta_sts,omitempty"`
	Hosts  []HostReport  `json:"hosts"`
	// Error is why nothing could be tried (the reply mail would get).
	Error string `json:"error,omitempty"`
}

// PolicyReport describes an MTA-STS policy in force.
type PolicyReport struct {
	Mode       string    `json:"mode"`
	MX         []string  `json:"mx"`
	MaxAge     int64     `json:"max_age_seconds"`
	ID         string    `json:"id"`
	Fetched    time.Time `json:"fetched"`
	AgeSeconds int64     `json:"age_seconds"`
	How        string    `json:"how"`
}

// HostReport is one next hop.
type HostReport struct {
	Host string `json:"host"`
	Addr string `json:"addr"`
	// TLSPolicy is the level in force and its source, as the delivery
	// log would say it.
	TLSPolicy string `json:"tls_policy,omitempty"`
	// TLSA are the usable TLSA records DANE found.
	TLSA []string `json:"tlsa,omitempty"`
	// Skipped says why the hop would not be used (MTA-STS enforce).
	Skipped string `json:"skipped,omitempty"`
	// Deferred is the reply mail would get before connecting (DANE).
	Deferred string `json:"deferred,omitempty"`
	// Testing is why MTA-STS enforce would fail, in testing mode.
	Testing string `json:"mta_sts_testing,omitempty"`
	// Probe is the handshake's outcome, with connect.
	Probe *delivery.ProbeResult `json:"probe,omitempty"`
}

// Explain reports, without sending mail, what delivery to domain would
// do: the MX hosts, DANE and MTA-STS, the level per host; with connect
// it also tries each usable host's handshake (hostname for EHLO).
func (m *MX) Explain(ctx context.Context, domain, hostname string, connect bool) Report {
	rep := Report{Domain: domain, Level: string(m.TLS.EffectiveLevel())}
	p, fail := m.lookup(ctx, domain)
	if fail != nil {
		rep.Error = fail.Reply
		return rep
	}
	rep.MXSecure = p.mxSecure
	if e := p.policy; e != nil {
		rep.MTASTS = &PolicyReport{Mode: e.Policy.Mode, MX: e.Policy.MX, MaxAge: int64(e.Policy.MaxAge.Seconds()),
			ID: e.ID, Fetched: e.Fetched, AgeSeconds: int64(time.Since(e.Fetched).Seconds()), How: p.policyHow}
	}
	for _, hop := range p.hops {
		h := HostReport{Host: hop.Host, Addr: hop.Addr}
		fail, skip, testing := m.prepareHop(ctx, p, &hop)
		switch {
		case skip:
			h.Skipped = "not in the MTA-STS policy (enforce)"
		case fail != nil:
			h.Deferred = fail.Reply
		default:
			h.TLSPolicy, h.TLSA, h.Testing = delivery.HopPolicy(m.TLS, hop), hop.TLSARecords(), testing
			if connect {
				pr := delivery.Probe(ctx, hop, m.TLS, hostname)
				h.Probe = &pr
			}
		}
		rep.Hosts = append(rep.Hosts, h)
	}
	return rep
}
