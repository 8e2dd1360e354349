package smtpapp

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-smtp/caddy-smtp/delivery"
)

// metrics are the app's Prometheus collectors, registered in Caddy's
// metrics registry so that they appear on the admin endpoint's /metrics
// next to Caddy's own. Labels stay low-cardinality: server, direction,
// TLS version, result, reason, target type.
type metrics struct {
	connections   *prometheus.CounterVec   // server, result
	handshakes    *prometheus.CounterVec   // server, direction, version, result
	messages      *prometheus.CounterVec   // server, result, reason
	bytes         *prometheus.CounterVec   // server
	deliveries    *prometheus.CounterVec   // server, via, result, tls
	acceptLatency *prometheus.HistogramVec // server
	deliveryDelay *prometheus.HistogramVec // server, result
}

const ns, sub = "caddy", "smtp"

func newMetrics(ctx caddy.Context, a *App) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_total", Help: "SMTP connections, by server and result (accepted, or refused and why)."},
			[]string{"server", "result"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tls_handshakes_total", Help: "TLS handshakes, inbound (STARTTLS or implicit) and outbound, by version and result."},
			[]string{"server", "direction", "version", "result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "messages_total", Help: "Messages accepted, and transactions or commands rejected by reason."},
			[]string{"server", "result", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "received_bytes_total", Help: "Bytes of accepted messages, Received: header included."},
			[]string{"server"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "delivery_attempts_total", Help: "Delivery attempts per recipient, by target type, result (sent, deferred, bounced) and client TLS outcome (none, untrusted, verified, failed)."},
			[]string{"server", "via", "result", "tls"}),
		acceptLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "accept_latency_seconds", Help: "From the end of DATA to the 250: the durable write of the message.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"server"}),
		deliveryDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "delivery_delay_seconds", Help: "From acceptance to the final outcome of a recipient.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 12)}, []string{"server", "result"}),
	}
	queueSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "queue_messages", Help: "Messages in the queue."},
		func() float64 { n, _ := a.queueStats(); return float64(n) })
	queueAge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
		Name: "queue_oldest_age_seconds", Help: "Age of the oldest message in the queue (0 when empty)."},
		func() float64 { _, age := a.queueStats(); return age.Seconds() })
	reg := ctx.GetMetricsRegistry()
	for _, c := range []prometheus.Collector{m.connections, m.handshakes, m.messages, m.bytes,
		m.deliveries, m.acceptLatency, m.deliveryDelay, queueSize, queueAge} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// queueStats counts the queue and the age of its oldest record; queue
// ids begin with their arrival time, so no envelope is read.
func (a *App) queueStats() (int, time.Duration) {
	if a.spool == nil {
		return 0, 0
	}
	ids, err := a.spool.IDs()
	if err != nil || len(ids) == 0 {
		return 0, 0
	}
	// A stray file with a shorter name must not break the scrape.
	for _, id := range ids {
		if len(id) < 11 {
			continue
		}
		if ms, err := strconv.ParseInt(id[:11], 16, 64); err == nil {
			return len(ids), time.Since(time.UnixMilli(ms))
		}
	}
	return len(ids), 0
}

// Attempt implements queue.Metrics.
func (m *metrics) Attempt(server string, res delivery.Result, delay time.Duration) {
	via := res.Via
	if via == "" {
		via = "none"
	}
	m.deliveries.WithLabelValues(server, via, res.Status.String(), string(res.TLSOutcome())).Inc()
	if res.Status != delivery.Deferred {
		m.deliveryDelay.WithLabelValues(server, res.Status.String()).Observe(delay.Seconds())
	}
}

// Handshake implements queue.Metrics: an outbound TLS handshake.
func (m *metrics) Handshake(server, version, result string) {
	m.handshakes.WithLabelValues(server, "out", version, result).Inc()
}
