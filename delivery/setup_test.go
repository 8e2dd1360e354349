package delivery_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestSetupFailuresDefer: a next hop that refuses the session (a 5xx
// greeting, a 5xx to AUTH because our password is wrong) has not
// refused the message: it is deferred, with the next hop's reply, and
// the caller may try its next host. Postfix does the same by default.
func TestSetupFailuresDefer(t *testing.T) {
	ca := st.NewCA(t, "Setup CA")
	auth := st.NewUpstream(t, st.UpstreamOpts{TLS: st.TLSServerConfig(ca.Issue(t, "smarthost.test", "smarthost.test")),
		AuthUser: "gw", AuthPass: "right"})
	policy := &delivery.ClientTLS{Level: "encrypt"}
	if err := policy.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	res, tryNext := delivery.SendSMTP(context.Background(), poolJob("auth", false),
		delivery.Hop{Host: "smarthost.test", Addr: auth.Addr}, policy, &delivery.Credentials{Username: "gw", Password: "wrong"}, nil)
	if res[0].Status != delivery.Deferred || !strings.HasPrefix(res[0].Code, "4.") || !strings.Contains(res[0].Reply, "AUTH at ") ||
		!strings.Contains(res[0].Reply, " 535 ") || res[0].TLSVersion == "" || !tryNext {
		t.Fatalf("wrong password: %+v (try next %v)", res[0], tryNext)
	}

	// A host that greets with 554, as one that wants no mail does.
	addr := st.ServeRaw(t, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("554 5.3.2 no SMTP service here\r\n"))
		bufio.NewReader(c).ReadString('\n') // QUIT, or the hang-up
	})
	none := &delivery.ClientTLS{Level: "none"}
	none.Provision(st.CaddyContext(t))
	for _, p := range []*delivery.ClientTLS{none, policy} {
		res, tryNext = delivery.SendSMTP(context.Background(), poolJob("greeting", false),
			delivery.Hop{Host: "nomail.test", Addr: addr}, p, nil, nil)
		if res[0].Status != delivery.Deferred || res[0].Code != "4.3.2" || !strings.Contains(res[0].Reply, "554 5.3.2 no SMTP service here") || !tryNext {
			t.Fatalf("554 greeting, level %s: %+v (try next %v)", p.Level, res[0], tryNext)
		}
	}
}
