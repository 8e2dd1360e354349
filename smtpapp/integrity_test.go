package smtpapp

import (
	"net"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestCutOffDataNotQueued: a client whose connection ends inside the
// message (DATA or BDAT, in plaintext or inside STARTTLS, the socket
// closed without a TLS close_notify, as a dropped connection does) has
// seen no 250, so nothing is queued: a cut-off BDAT chunk is not taken
// for a whole one (go-smtp v0.25.1 would), and the hang-up is no spool
// error.
func TestCutOffDataNotQueued(t *testing.T) {
	e := st.NewEnv(t)
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "may"}})
	e.Load(st.App(map[string]any{"s": srv}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))

	for _, c := range []struct {
		name, cmd string
		useTLS    bool
	}{
		{"bdat", "BDAT 1000 LAST\r\n", false},
		{"bdat-tls", "BDAT 1000 LAST\r\n", true},
		{"data", "DATA\r\n", false},
		{"data-tls", "DATA\r\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := st.Dial(t, addr)
			raw := cl.Conn.(*net.TCPConn)
			cl.Expect("250", "EHLO client.test")
			if c.useTLS {
				if err := cl.StartTLS(st.TLSConfig(nil, "")); err != nil {
					t.Fatal(err)
				}
				cl.Expect("250", "EHLO client.test")
			}
			cl.Expect("250", "MAIL FROM:<a@remote.test>")
			cl.Expect("250", "RCPT TO:<u@example.test>")
			if c.cmd == "DATA\r\n" {
				cl.Expect("354", "DATA")
			} else {
				cl.Conn.Write([]byte(c.cmd))
			}
			cl.Conn.Write([]byte("Subject: cut\r\n\r\nhalf a message, and then"))
			raw.CloseWrite() // FIN, and no close_notify
			// Whatever the server answers, it is not a 250.
			raw.SetReadDeadline(time.Now().Add(5 * time.Second))
			code, msg := cl.Read()
			if code == 250 {
				t.Fatalf("cut-off message acknowledged: %d %s", code, msg)
			}
			raw.Close()
		})
	}
	// The server has handled every hang-up once a new session gets in.
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("221", "QUIT")
	st.Eventually(5*time.Second, func() bool {
		return len(e.LogLines("message not accepted: the client hung up before the end of data was answered")) >= 2
	})
	if ids := e.SpoolIDs(); len(ids) != 0 {
		_, msg := e.SpoolRecord(ids[0])
		t.Fatalf("%d cut-off messages queued; the first: %q", len(ids), msg)
	}
	if l := e.LogLines("writing to spool failed; message not accepted"); len(l) != 0 {
		t.Fatalf("a hang-up logged as a spool failure: %v", l[0])
	}
}

// TestBDATResetIsNoSpoolError: RSET in the middle of a chunked message
// drops it, as RFC 3030 says, without an error-level spool log.
func TestBDATResetIsNoSpoolError(t *testing.T) {
	e := st.NewEnv(t)
	addr := e.LoadPlainServer()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	c.Expect("250", "RCPT TO:<u@example.test>")
	c.Conn.Write([]byte("BDAT 3\r\nabc"))
	if code, msg := c.Read(); code != 250 {
		t.Fatalf("BDAT 3: %d %s", code, msg)
	}
	c.Expect("250", "RSET")
	c.Expect("250", "NOOP")
	if l := e.LogLines("writing to spool failed; message not accepted"); len(l) != 0 {
		t.Fatalf("RSET inside BDAT logged as a spool failure: %v", l[0])
	}
	if ids := e.SpoolIDs(); len(ids) != 0 {
		t.Fatalf("%d messages queued", len(ids))
	}
}

// TestLiteralsAndHelo: address literals are an IPv4 address, IPv6: and
// an IPv6 address, or a tag and printable ASCII (RFC 5321 4.1.3);
// anything with control bytes is refused, as is such a HELO name, so
// that none reaches the envelope, the Received header or a terminal.
func TestLiteralsAndHelo(t *testing.T) {
	e := st.NewEnv(t)
	addr := e.LoadPlainServer()

	c := st.Dial(t, addr)
	c.Expect("501 5.5.2 Invalid domain/address argument for HELO", "EHLO x\x1b[2J\x07")
	c.Expect("501 5.5.2 Invalid domain/address argument for HELO", "HELO bad\x7fname")
	c.Expect("250", "EHLO client.test")
	for _, lit := range []string{"[192.0.2.1]", "[IPv6:2001:db8::1]", "[ipv6:::1]", "[x-tag:some.thing]"} {
		c.Expect("250", "MAIL FROM:<a@%s>", lit)
		c.Expect("250", "RSET")
	}
	for _, lit := range []string{"[x\rX-Injected:1]", "[1.2.3.4\x1b<\"x:]", "[::1]", "[IPv6:192.0.2.1]", "[999.1.1.1]",
		"[tag:a]b]", "[-tag:x]", "[IPv6:fe80::1%eth0]", "[]"} {
		c.Expect("501 5.1.7 Bad sender address syntax", "MAIL FROM:<a@%s>", lit)
	}
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	c.Expect("501 5.1.3 Bad recipient address syntax", "RCPT TO:<u@[x\rX-Injected:1]>")
	c.Expect("221", "QUIT")
}

// TestTooManyRefusals: the 20th refused MAIL or RCPT on one connection
// is answered 421 and the connection closed (Postfix's
// smtpd_hard_error_limit), across RSET; accepted commands do not count.
func TestTooManyRefusals(t *testing.T) {
	e := st.NewEnv(t)
	addr := e.LoadPlainServer()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	for i := 1; i < maxRefusals; i++ {
		c.Expect("250", "RCPT TO:<ok%d@example.test>", i)
		c.Expect("554 5.7.1", "RCPT TO:<probe%d@elsewhere.test>", i)
		if i == 10 {
			c.Expect("250", "RSET")
			c.Expect("501 5.1.7", "MAIL FROM:<bad@[x]>") // counts too
			c.Expect("250", "MAIL FROM:<a@remote.test>")
			i++
		}
	}
	c.Expect("421 4.7.0 Too many refused commands, closing connection", "RCPT TO:<last@elsewhere.test>")
	c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if code, msg := c.Read(); code != 0 {
		t.Fatalf("connection open after the 421: %d %s", code, msg)
	}
	// Another connection starts afresh.
	c2 := st.Dial(t, addr)
	c2.Expect("250", "EHLO client.test")
	c2.Expect("250", "MAIL FROM:<a@remote.test>")
	c2.Expect("554 5.7.1", "RCPT TO:<probe@elsewhere.test>")
}
