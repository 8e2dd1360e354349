package delivery_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// strictHop is a next hop without STARTTLS that refuses a second EHLO
// on a connection, as OpenSMTPD does ("503 5.5.1 Invalid command:
// Already identified"). It counts the EHLO and HELO commands of each
// connection and whether a message was accepted.
type strictHop struct {
	addr string
	// ehlo500 makes it answer EHLO with 500, as a server without ESMTP.
	ehlo500 bool

	mu       sync.Mutex
	hellos   []int // EHLO/HELO commands per connection
	accepted int
}

func newStrictHop(t *testing.T, ehlo500 bool) *strictHop {
	h := &strictHop{ehlo500: ehlo500}
	h.addr = st.ServeRaw(t, h.serve)
	return h
}

func (h *strictHop) serve(c net.Conn) {
	defer c.Close()
	h.mu.Lock()
	conn := len(h.hellos)
	h.hellos = append(h.hellos, 0)
	h.mu.Unlock()
	r := bufio.NewReader(c)
	say := func(s string) { c.Write([]byte(s + "\r\n")) }
	say("220 strict.test ESMTP")
	identified, inData := false, false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if inData {
			if line == "." {
				inData = false
				h.mu.Lock()
				h.accepted++
				h.mu.Unlock()
				say("250 2.0.0 queued")
			}
			continue
		}
		verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
		switch verb {
		case "EHLO", "HELO":
			h.mu.Lock()
			h.hellos[conn]++
			h.mu.Unlock()
			switch {
			case identified:
				say("503 5.5.1 Invalid command: Already identified")
			case verb == "EHLO" && h.ehlo500:
				say("500 5.5.1 Invalid command: Command unrecognized")
			case verb == "EHLO":
				identified = true
				say("250-strict.test Hello")
				say("250-8BITMIME")
				say("250 ENHANCEDSTATUSCODES")
			default:
				identified = true
				say("250 strict.test Hello")
			}
		case "MAIL", "RCPT":
			if !identified {
				say("503 5.5.1 Invalid command: Say hello first")
				continue
			}
			say("250 2.0.0 Ok")
		case "DATA":
			inData = true
			say("354 Enter mail, end with \".\" on a line by itself")
		case "RSET", "NOOP":
			say("250 2.0.0 Ok")
		case "QUIT":
			say("221 2.0.0 Bye")
			return
		default:
			say("500 5.5.1 Invalid command: Command unrecognized")
		}
	}
}

// TestOneEHLOWithoutSTARTTLS: at every level that may send in
// plaintext, a next hop that offers no STARTTLS hears exactly one EHLO
// per connection (RFC 3207 4.2 asks for a second only after TLS), and a
// next hop that refuses a repeated EHLO gets the mail. A next hop that
// refuses EHLO itself gets HELO. At the levels that need TLS, the
// failure says STARTTLS was not offered, not that the greeting failed.
func TestOneEHLOWithoutSTARTTLS(t *testing.T) {
	for _, level := range []string{"none", "may", "encrypt", "verify"} {
		for _, ehlo500 := range []bool{false, true} {
			name := level
			if ehlo500 {
				name += "/no-esmtp"
			}
			t.Run(name, func(t *testing.T) {
				hop := newStrictHop(t, ehlo500)
				policy := &delivery.ClientTLS{Level: level}
				if err := policy.Provision(st.CaddyContext(t)); err != nil {
					t.Fatal(err)
				}
				res, _ := delivery.SendSMTP(context.Background(), poolJob("strict-"+level, false),
					delivery.Hop{Host: "strict.test", Addr: hop.addr}, policy, nil, nil)
				hop.mu.Lock()
				defer hop.mu.Unlock()
				want := 1
				if ehlo500 {
					want = 2 // EHLO refused, then HELO
				}
				switch level {
				case "none", "may":
					if res[0].Status != delivery.Sent || hop.accepted != 1 {
						t.Fatalf("not delivered: %+v (accepted %d, hellos %v)", res[0], hop.accepted, hop.hellos)
					}
					if len(hop.hellos) != 1 || hop.hellos[0] != want {
						t.Fatalf("hellos per connection %v, want [%d]", hop.hellos, want)
					}
				default:
					if res[0].Status != delivery.Deferred || !strings.Contains(res[0].Reply, "TLS is required, but was not offered") {
						t.Fatalf("level %s: %+v", level, res[0])
					}
				}
			})
		}
	}
}

// TestSetupFailureNamesCommand: a failed setup says which command the
// next hop refused.
func TestSetupFailureNamesCommand(t *testing.T) {
	addr := st.ServeRaw(t, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("220 picky.test\r\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(strings.ToUpper(line), "EHLO") {
				c.Write([]byte("550 5.7.1 EHLO refused\r\n"))
			} else {
				c.Write([]byte("502 5.5.1 no\r\n"))
			}
		}
	})
	policy := &delivery.ClientTLS{Level: "may"}
	if err := policy.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	res, _ := delivery.SendSMTP(context.Background(), poolJob("picky", false),
		delivery.Hop{Host: "picky.test", Addr: addr}, policy, nil, nil)
	if res[0].Status != delivery.Deferred || !strings.Contains(res[0].Reply, "EHLO at picky.test") ||
		!strings.Contains(res[0].Reply, "550 5.7.1 EHLO refused") {
		t.Fatalf("EHLO refused: %+v", res[0])
	}
}
