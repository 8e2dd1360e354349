package smtpapp

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	"github.com/emersion/go-smtp"
)

// TestClientLevels runs every client TLS level against upstreams
// without STARTTLS, with a self-signed certificate, with a certificate
// of a test CA for the right name and for a wrong one, with a handshake
// that fails, and with 4xx and 5xx replies, and checks the outcome
// (sent, deferred, bounced), what was logged, and what arrived.
func TestClientLevels(t *testing.T) {
	e := st.NewEnv(t)
	ca := st.NewCA(t, "Upstream CA")
	selfCA := st.NewCA(t, "Self-signed")
	right := ca.Issue(t, "upstream.test", "upstream.test")
	wrong := ca.Issue(t, "wrong.test", "wrong.test")
	self := selfCA.Issue(t, "upstream.test", "upstream.test")
	tlsWith := func(c tls.Certificate) *tls.Config { return &tls.Config{Certificates: []tls.Certificate{c}} }

	upstreams := map[string]*st.Upstream{
		"plain":       st.NewUpstream(t, st.UpstreamOpts{}),
		"self-signed": st.NewUpstream(t, st.UpstreamOpts{TLS: tlsWith(self)}),
		"ca-right":    st.NewUpstream(t, st.UpstreamOpts{TLS: tlsWith(right)}),
		"ca-wrong":    st.NewUpstream(t, st.UpstreamOpts{TLS: tlsWith(wrong)}),
		"broken-tls":  st.NewUpstream(t, st.UpstreamOpts{BrokenTLS: true}),
		"4xx": st.NewUpstream(t, st.UpstreamOpts{TLS: tlsWith(right), RcptErr: &smtp.SMTPError{
			Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}}),
		"5xx": st.NewUpstream(t, st.UpstreamOpts{TLS: tlsWith(right), RcptErr: &smtp.SMTPError{
			Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}}),
	}
	levels := []string{"none", "may", "encrypt", "verify"}

	type want struct {
		status   string // sent, deferred, bounced
		tls      bool
		verified bool
		reply    string // substring of the logged reply
	}
	sent := want{status: "sent"}
	sentTLS := want{status: "sent", tls: true}
	sentVerified := want{status: "sent", tls: true, verified: true}
	notOffered := want{status: "deferred", reply: "TLS is required, but was not offered by host"}
	notVerified := want{status: "deferred", reply: "certificate not verified"}
	handshake := want{status: "deferred", reply: "TLS handshake with"}
	temp := want{status: "deferred", tls: true, verified: true, reply: "451 4.3.0 try later"}
	perm := want{status: "bounced", tls: true, verified: true, reply: "550 5.1.1 no such user"}
	expect := map[string]map[string]want{
		"plain":       {"none": sent, "may": sent, "encrypt": notOffered, "verify": notOffered},
		"self-signed": {"none": sent, "may": sentTLS, "encrypt": sentTLS, "verify": notVerified},
		"ca-right":    {"none": sent, "may": sentVerified, "encrypt": sentVerified, "verify": sentVerified},
		"ca-wrong":    {"none": sent, "may": sentTLS, "encrypt": sentTLS, "verify": notVerified},
		"broken-tls":  {"none": sent, "may": sent, "encrypt": handshake, "verify": handshake},
		"4xx":         {"none": {status: "deferred", reply: "451 4.3.0"}, "may": temp, "encrypt": temp, "verify": temp},
		"5xx":         {"none": {status: "bounced", reply: "550 5.1.1"}, "may": perm, "encrypt": perm, "verify": perm},
	}

	servers := make(map[string]any)
	gateways := make(map[string]string)
	for name, u := range upstreams {
		for _, level := range levels {
			// Every level gets the trust pool: verify needs it, and
			// may/encrypt use it to log whether the peer was trusted.
			policy := map[string]any{"level": level, "server_name": "upstream.test",
				"trust_pool": map[string]any{"provider": "file", "pem_files": []string{ca.PEMFile}}}
			s, addr := st.ServerConfig(t, map[string]any{
				"hostname":       "gw.example.test",
				"relay_networks": []string{"127.0.0.1"},
				"tls":            map[string]any{"level": "none"},
				"routes":         st.RelayRoute(u.Addr, policy),
			})
			key := name + "/" + level
			servers[strings.ReplaceAll(key, "/", "-")] = s
			gateways[key] = addr
		}
	}
	e.Load(e.DeliveringApp(servers, nil), nil)

	ids := make(map[string]string)
	for key, addr := range gateways {
		ids[key] = st.Submit(t, addr, "sender@example.test", "rcpt@remote.test", "Subject: "+key+"\r\n\r\nbody\r\n.\r\n")
	}
	for name := range upstreams {
		for _, level := range levels {
			key := name + "/" + level
			t.Run(key, func(t *testing.T) {
				w := expect[name][level]
				l := e.DeliveryLine(t, ids[key])
				if l["status"] != w.status {
					t.Fatalf("status %v, want %s: %v", l["status"], w.status, l["reply"])
				}
				if l["tls"] != w.tls {
					t.Errorf("tls %v, want %v", l["tls"], w.tls)
				}
				if w.tls && l["tls_verified"] != w.verified {
					t.Errorf("tls_verified %v, want %v", l["tls_verified"], w.verified)
				}
				if reply, _ := l["reply"].(string); !strings.Contains(reply, w.reply) {
					t.Errorf("reply %q, want it to contain %q", reply, w.reply)
				}
				if !strings.Contains(fmt.Sprint(l["relay"]), "127.0.0.1") {
					t.Errorf("relay %v", l["relay"])
				}
				// Sent means it arrived, over TLS exactly when logged so.
				if w.status == "sent" {
					found := false
					for _, m := range upstreams[name].Received() {
						if strings.Contains(string(m.Data), "Subject: "+key+"\r\n") {
							found = true
							if m.TLS != w.tls {
								t.Errorf("arrived with TLS=%v, logged %v", m.TLS, w.tls)
							}
						}
					}
					if !found {
						t.Error("logged as sent but did not arrive")
					}
				}
			})
		}
	}
	// The gateway never greets as "localhost", before or after STARTTLS.
	for name, u := range upstreams {
		for _, h := range u.HelloNames() {
			if h != "gw.example.test" {
				t.Errorf("%s: gateway said EHLO %q", name, h)
			}
		}
	}
	// may logged its fallback to plaintext.
	if len(e.LogLines("tls handshake failed; retrying in plaintext (level may)")) == 0 {
		t.Error("no log line for the plaintext retry under may")
	}
}
