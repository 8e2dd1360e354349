package smtpapp

import (
	"crypto/tls"
	"fmt"

	"strings"
	"sync"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestPerIPSlotGivenBack: a connection from a client at its limit waits
// for one of the client's connections to end, and is served when one
// does (issue 11 item 4: a client that reconnected at once after its
// QUIT got 421, because the closing connection still held its slot).
// Past the wait, it is refused.
func TestPerIPSlotGivenBack(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections_per_ip": 2})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	first := st.Dial(t, addr)
	st.Dial(t, addr)

	conn, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	third := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
	// The third now waits for a slot.
	srv := hostileApp(t).Server("mx")
	waiting := st.Eventually(5*time.Second, func() bool {
		_, waiting := srv.slots.Clients()
		return waiting == 1
	})
	if !waiting {
		t.Fatal("the third connection is not waiting for a slot")
	}
	first.Expect("221", "QUIT")
	if code, msg := third.Read(); code != 220 {
		t.Fatalf("connection after another of the client's ended: %d %s", code, msg)
	}
	third.Expect("250", "EHLO client.test")

	// Two open: a fourth waits, and is refused when no slot comes.
	conn4, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn4.Close()
	begin := time.Now()
	fourth := &st.Client{T: t, Conn: conn4, Text: st.NewText(conn4)}
	if code, msg := fourth.Read(); code != 421 || !strings.Contains(msg, "Too many connections from your address") {
		t.Fatalf("fourth connection: %d %s", code, msg)
	}
	if waited := time.Since(begin); waited < slotWait/2 {
		t.Fatalf("refused after %s, before the slot wait (%s)", waited, slotWait)
	}
}

// TestPerIPReconnectAtOnce: at its limit, a client whose every worker
// reconnects the moment it has read the 221 is never refused. STARTTLS
// in each session, as MTAs do.
func TestPerIPReconnectAtOnce(t *testing.T) {
	e := st.NewEnv(t)
	const limit, rounds = 5, 40
	s, addr := st.ServerConfig(t, map[string]any{"max_connections_per_ip": limit})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
	var wg sync.WaitGroup
	errs := make(chan string, limit*rounds)
	for w := 0; w < limit; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				nc, err := st.NetDial(addr)
				if err != nil {
					errs <- err.Error()
					return
				}
				c := &st.Client{T: t, Conn: nc, Text: st.NewText(nc)}
				nc.SetDeadline(time.Now().Add(20 * time.Second))
				code, msg := c.Read()
				if code != 220 {
					errs <- fmt.Sprintf("greeting %d %s", code, msg)
					nc.Close()
					continue
				}
				c.Cmd("EHLO client.test")
				c.Cmd("STARTTLS")
				tc := tls.Client(nc, st.TLSConfig(nil, ""))
				c.Conn, c.Text = tc, st.NewText(tc)
				c.Cmd("EHLO client.test")
				if code, msg := c.Cmd("QUIT"); code != 221 {
					errs <- fmt.Sprintf("QUIT %d %s", code, msg)
				}
				nc.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestRelayNetworksExemptPerIP: clients in relay_networks are not
// limited per address by default (Postfix's
// smtpd_client_event_limit_exceptions = $mynetworks);
// limit_relay_networks limits them too.
func TestRelayNetworksExemptPerIP(t *testing.T) {
	e := st.NewEnv(t)
	exempt, exemptAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"max_connections_per_ip": 2, "relay_networks": []string{"127.0.0.0/8"}})
	limited, limitedAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"max_connections_per_ip": 2, "relay_networks": []string{"127.0.0.0/8"}, "limit_relay_networks": true})
	e.Load(st.App(map[string]any{"exempt": exempt, "limited": limited}), nil)
	for i := 0; i < 5; i++ {
		st.Dial(t, exemptAddr).Expect("250", "EHLO client.test")
	}
	st.Dial(t, limitedAddr)
	st.Dial(t, limitedAddr)
	conn, err := st.NetDial(limitedAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	third := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
	if code, msg := third.Read(); code != 421 {
		t.Fatalf("limit_relay_networks: third connection got %d %s", code, msg)
	}
}

// TestSlowCommandInTLS: after STARTTLS too, a command line that does
// not arrive whole within read_timeout gets 421 4.4.2 (inside TLS) and
// a close, however steadily its bytes come (one TLS record a byte).
func TestSlowCommandInTLS(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"read_timeout": "1s"})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	go func() {
		for _, b := range []byte("EHLO slow.test\r\n") {
			if _, err := c.Conn.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(300 * time.Millisecond) // a sleep: the slow client under test
		}
	}()
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	code, msg := c.Read()
	if got := fmt.Sprintf("%d %s", code, msg); got != "421 4.4.2 localhost Error: timeout exceeded" {
		t.Fatalf("got %q after %s", got, time.Since(begin))
	}
	if at := time.Since(begin); at > 4*time.Second {
		t.Fatalf("cut after %s, want about read_timeout (1s)", at)
	}
	if code, msg := c.Read(); code != 0 {
		t.Fatalf("after the 421: %d %s, want the connection closed", code, msg)
	}
}

// TestJunkCommands: commands that do nothing for mail are limited
// (max_junk_commands, as Postfix's smtpd_junk_command_limit), in
// plaintext and inside TLS: the one past the limit is answered, and a
// 421 follows at once. MAIL, RCPT, DATA and RSET of a transaction are
// not junk, and an accepted message starts the count again.
func TestJunkCommands(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"max_junk_commands": 5})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
	const cut = "421 4.7.0 localhost Error: too many commands without mail, closing connection"

	t.Run("plaintext", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		for i := 0; i < 20; i++ { // transactions are no junk
			c.Expect("250", "MAIL FROM:<a@remote.test>")
			c.Expect("250", "RCPT TO:<b@example.test>")
			c.Expect("250", "RSET")
		}
		for i := 0; i < 6; i++ {
			c.Expect("250", "NOOP")
		}
		if code, msg := c.Read(); fmt.Sprintf("%d %s", code, msg) != cut {
			t.Fatalf("after the 6th NOOP: %d %s, want %s", code, msg, cut)
		}
		if code, msg := c.Read(); code != 0 {
			t.Fatalf("after the 421: %d %s", code, msg)
		}
	})
	t.Run("tls", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil { // STARTTLS: junk 1
			t.Fatal(err)
		}
		c.Expect("250", "EHLO client.test")
		c.Expect("252", "VRFY postmaster") // 2
		c.Expect("502", "HELP")            // 3
		c.Expect("250", "RSET")            // 4: no transaction
		c.Expect("250", "NOOP")            // 5
		c.Expect("250", "NOOP")            // 6
		if code, msg := c.Read(); fmt.Sprintf("%d %s", code, msg) != cut {
			t.Fatalf("after the 6th junk command: %d %s, want %s", code, msg, cut)
		}
	})
	t.Run("messages", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		for i := 0; i < 10; i++ {
			if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
				t.Fatalf("message %d: %s", i, got)
			}
			for j := 0; j < 4; j++ {
				c.Expect("250", "NOOP")
			}
		}
	})
}
