package delivery_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// BenchmarkSendSMTP is one delivery of a 4 KiB message to an in-process
// upstream, with and without STARTTLS (level may): on a new connection
// each, or on a session kept in a Pool ("reused").
func BenchmarkSendSMTP(b *testing.B) {
	ca := st.NewCA(b, "Bench CA")
	cert := ca.Issue(b, "upstream.test", "upstream.test")
	for _, c := range []struct {
		withTLS, reuse bool
	}{{false, false}, {true, false}, {false, true}, {true, true}} {
		withTLS := c.withTLS
		name := "plain"
		opts := st.UpstreamOpts{}
		level := "none"
		if withTLS {
			name, level = "starttls", "may"
			opts.TLS = st.TLSServerConfig(cert)
		}
		if c.reuse {
			name += "-reused"
		}
		b.Run(name, func(b *testing.B) {
			var pool *delivery.Pool
			if c.reuse {
				pool = delivery.NewPool()
				defer pool.Close()
			}
			u := st.NewUpstream(b, opts)
			policy := &delivery.ClientTLS{Level: level}
			if err := policy.Provision(st.CaddyContext(b)); err != nil {
				b.Fatal(err)
			}
			body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("x", 62)+"\r\n", 64)
			env := &spool.Envelope{ID: "BENCH", From: "a@example.test", Size: int64(len(body)), Received: time.Now()}
			job := &delivery.Job{
				Envelope:   env,
				Recipients: []*spool.Recipient{{Address: "b@upstream.test", Status: spool.StatusQueued}},
				Open: func() (io.ReadSeekCloser, error) {
					return nopCloser{strings.NewReader(body)}, nil
				},
				Hostname: "gw.example.test",
				Logger:   zap.NewNop(),
			}
			hop := delivery.Hop{Host: "upstream.test", Addr: u.Addr}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				res, _ := delivery.SendSMTP(context.Background(), job, hop, policy, nil, pool)
				if res[0].Status != delivery.Sent || (withTLS && res[0].TLSVersion == "") {
					b.Fatalf("%+v", res[0])
				}
			}
		})
	}
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }
