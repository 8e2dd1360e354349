// Package metrics holds the gateway's Prometheus collectors, registered
// in Caddy's metrics registry so that they appear on the admin
// endpoint's /metrics next to Caddy's own.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-smtp/caddy-smtp/delivery"
)

// Metrics are the smtp app's collectors. Labels stay low-cardinality:
// server, direction, TLS version, result, reason, target type.
type Metrics struct {
	Connections   *prometheus.CounterVec   // server, result
	Handshakes    *prometheus.CounterVec   // server, direction, version, result
	Messages      *prometheus.CounterVec   // server, result, reason
	Bytes         *prometheus.CounterVec   // server
	Deliveries    *prometheus.CounterVec   // server, via, result, tls
	TLSPolicies   *prometheus.CounterVec   // server, policy, tls
	Checks        *prometheus.CounterVec   // server, check, verdict
	CheckLatency  *prometheus.HistogramVec // server, check
	Quarantined   *prometheus.CounterVec   // server, check
	AuthResults   *prometheus.CounterVec   // server, method, result
	AcceptLatency *prometheus.HistogramVec // server
	DeliveryDelay *prometheus.HistogramVec // server, result
}

const ns, sub = "caddy", "smtp"

// New makes the collectors and registers them in reg, with three gauges
// that call queueStats and quarantineSize when scraped: the number of
// queued messages, the age of the oldest, and the number of messages
// in the quarantine.
func New(reg prometheus.Registerer, queueStats func() (int, time.Duration), quarantineSize func() int) (*Metrics, error) {
	m := &Metrics{
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_total", Help: "SMTP connections, by server and result (accepted, or refused and why)."},
			[]string{"server", "result"}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tls_handshakes_total", Help: "TLS handshakes, inbound (STARTTLS or implicit) and outbound, by version and result."},
			[]string{"server", "direction", "version", "result"}),
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "messages_total", Help: "Messages accepted, and transactions or commands rejected by reason."},
			[]string{"server", "result", "reason"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "received_bytes_total", Help: "Bytes of accepted messages, Received: header included."},
			[]string{"server"}),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "delivery_attempts_total", Help: "Delivery attempts per recipient, by target type, result (sent, deferred, bounced) and client TLS outcome (none, untrusted, verified, failed)."},
			[]string{"server", "via", "result", "tls"}),
		TLSPolicies: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tls_policy_attempts_total", Help: "Delivery attempts per recipient by where the client TLS level in force came from (route, requiretls, dane, mta-sts enforce, mta-sts testing) and the TLS outcome."},
			[]string{"server", "policy", "tls"}),
		Checks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "checks_total", Help: "Content checks per message, by check and verdict (accept, reject, tempfail, discard, quarantine, skipped, error)."},
			[]string{"server", "check", "verdict"}),
		CheckLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "check_latency_seconds", Help: "How long a content check took for a message.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"server", "check"}),
		Quarantined: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "quarantined_total", Help: "Messages quarantined, by the check that quarantined them."},
			[]string{"server", "check"}),
		AuthResults: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "auth_results_total", Help: "Sender authentication results of inbound messages, by method (spf, dkim: one per signature or none, dmarc) and result (pass, fail, softfail, neutral, none, temperror, permerror)."},
			[]string{"server", "method", "result"}),
		AcceptLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "accept_latency_seconds", Help: "From the end of DATA to the 250: the durable write of the message.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"server"}),
		DeliveryDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "delivery_delay_seconds", Help: "From acceptance to the final outcome of a recipient.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)}, []string{"server", "result"}),
	}
	queueSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "queue_messages", Help: "Messages in the queue."},
		func() float64 { n, _ := queueStats(); return float64(n) })
	queueAge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "queue_oldest_age_seconds", Help: "Age of the oldest message in the queue (0 when empty)."},
		func() float64 { _, age := queueStats(); return age.Seconds() })
	quarantine := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "quarantine_messages", Help: "Messages in the quarantine."},
		func() float64 { return float64(quarantineSize()) })
	for _, c := range []prometheus.Collector{m.Connections, m.Handshakes, m.Messages, m.Bytes,
		m.Deliveries, m.TLSPolicies, m.Checks, m.CheckLatency, m.Quarantined, m.AuthResults, m.AcceptLatency, m.DeliveryDelay,
		queueSize, queueAge, quarantine} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Attempt implements queue.Metrics.
func (m *Metrics) Attempt(server string, res delivery.Result, delay time.Duration) {
	via := res.Via
	if via == "" {
		via = "none"
	}
	m.Deliveries.WithLabelValues(server, via, res.Status.String(), string(res.TLSOutcome())).Inc()
	if res.TLSSource != "" {
		m.TLSPolicies.WithLabelValues(server, res.TLSSource, string(res.TLSOutcome())).Inc()
	}
	if res.Status != delivery.Deferred {
		m.DeliveryDelay.WithLabelValues(server, res.Status.String()).Observe(delay.Seconds())
	}
}

// Handshake implements queue.Metrics: an outbound TLS handshake.
func (m *Metrics) Handshake(server, version, result string) {
	m.Handshakes.WithLabelValues(server, "out", version, result).Inc()
}
