package smtpapp

// TLS edge cases (GitHub issue 6, item 6): STARTTLS twice, commands
// and a ClientHello pipelined with STARTTLS, handshakes aborted halfway,
// and clients that offer only TLS 1.0 or 1.1.
//
// The minimum protocol version for receiving is TLS 1.2 at every level
// (Caddy's default for a connection policy; `protocols` can raise it to
// 1.3 and cannot lower it). A client that offers only TLS 1.0 or 1.1
// fails the STARTTLS handshake and the server closes the connection (it
// never goes on in plaintext on that connection). Under `may` that
// client can still deliver: it reconnects and sends without STARTTLS,
// as opportunistic TLS allows (Postfix's smtp client does exactly that
// after a failed handshake at level may). Under `encrypt` it cannot.

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// tlsEdgeHello is a real ClientHello, as the bytes a crypto/tls client
// writes first.
func tlsEdgeHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	cc := &tlsEdgeCapture{}
	tls.Client(cc, cfg).Handshake()
	if len(cc.out) < 100 || cc.out[0] != 22 {
		t.Fatalf("no ClientHello captured: %q", cc.out)
	}
	return cc.out
}

// tlsEdgeCapture is a net.Conn that keeps what is written to it and
// fails the write, so that a handshake stops after its first flight.
type tlsEdgeCapture struct {
	net.Conn
	out []byte
}

func (c *tlsEdgeCapture) Write(p []byte) (int, error) {
	c.out = append(c.out, p...)
	return 0, errors.New("captured")
}

// tlsEdgeCloseAfterRead is a net.Conn that closes itself after the
// first read that returns data: a client that hangs up once it has the
// ServerHello.
type tlsEdgeCloseAfterRead struct {
	net.Conn
	got int
}

func (c *tlsEdgeCloseAfterRead) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got += n
	if n > 0 {
		c.Conn.Close()
		return 0, errors.New("hung up after the server's first flight")
	}
	return n, err
}

// tlsEdgeRecordsOnly fails unless b is a sequence of TLS records
// (content types 20 to 24, version 3.x), the last one possibly cut
// short.
func tlsEdgeRecordsOnly(t *testing.T, b []byte) {
	t.Helper()
	for i := 0; i < len(b); {
		if len(b)-i < 5 {
			return
		}
		if b[i] < 20 || b[i] > 24 || b[i+1] != 3 {
			t.Fatalf("not a TLS record at byte %d: %q", i, b[i:min(len(b), i+40)])
		}
		i += 5 + int(b[i+3])<<8 + int(b[i+4])
	}
}

// tlsEdgeStartTLS dials, says EHLO and STARTTLS, and returns the client
// ready for the handshake.
func tlsEdgeStartTLS(t *testing.T, addr string) *st.Client {
	t.Helper()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("220 2.0.0 Ready to start TLS", "STARTTLS")
	return c
}

// tlsEdgeLogCount counts log lines with msg.
func tlsEdgeLogCount(e *st.Env, msg string) int { return len(e.LogLines(msg)) }

// tlsEdgeWaitLog waits until more than n lines with msg were logged.
func tlsEdgeWaitLog(t *testing.T, e *st.Env, msg string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for tlsEdgeLogCount(e, msg) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("no new %q log line", msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tlsEdgeSend does a whole transaction over STARTTLS: the server still
// serves.
func tlsEdgeSend(t *testing.T, addr string) {
	t.Helper()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
		t.Fatalf("a normal STARTTLS client after the aborted one: %v", err)
	}
	c.Expect("250", "EHLO client.test")
	if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
		t.Fatalf("DATA: %q", got)
	}
	c.Cmd("QUIT")
}

func TestTLSEdge(t *testing.T) {
	e := st.NewEnv(t)
	may, mayAddr := st.ServerConfig(t, map[string]any{"read_timeout": "1s"})
	enc, encAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt"}, "read_timeout": "1s"})
	imp, impAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt", "implicit": true}})
	e.Load(st.App(map[string]any{"may": may, "encrypt": enc, "implicit": imp}), nil)
	st.WaitTLS(t, mayAddr, st.TLSConfig(nil, ""))
	st.WaitTLS(t, encAddr, st.TLSConfig(nil, ""))
	app := hostileApp(t)
	baseline := hostileGoroutines()
	hello := tlsEdgeHello(t, st.TLSConfig(nil, "localhost"))

	// STARTTLS inside TLS: 502, and the session goes on. After the
	// handshake the session starts over (RFC 3207 4.2): EHLO again.
	for _, tc := range []struct{ name, addr string }{{"may", mayAddr}, {"encrypt", encAddr}} {
		t.Run("twice/"+tc.name, func(t *testing.T) {
			c := st.Dial(t, tc.addr)
			c.Expect("250", "EHLO client.test")
			if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
				t.Fatal(err)
			}
			c.Expect("502 5.5.1 Already running in TLS", "STARTTLS")
			c.Expect("502 5.5.1 Please introduce yourself first.", "MAIL FROM:<a@remote.test>")
			if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
				t.Fatalf("STARTTLS offered inside TLS: %q", ehlo)
			}
			c.Expect("502 5.5.1 Already running in TLS", "STARTTLS")
			c.Expect("250", "NOOP")
			if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
				t.Fatalf("DATA after a second STARTTLS: %q", got)
			}
		})
	}
	t.Run("twice/implicit", func(t *testing.T) {
		var conn *tls.Conn
		var err error
		for i := 0; i < 100; i++ {
			if conn, err = tls.Dial("tcp", impAddr, st.TLSConfig(nil, "")); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
		if code, msg := c.Read(); code != 220 {
			t.Fatalf("greeting: %d %s", code, msg)
		}
		c.Expect("250", "EHLO client.test")
		c.Expect("502 5.5.1 Already running in TLS", "STARTTLS")
		c.Expect("250", "NOOP")
	})

	// Commands pipelined after STARTTLS in the same packet are dropped
	// (TestStartTLSPipelining has MAIL and RCPT): QUIT too.
	for _, level := range []struct{ name, addr string }{{"may", mayAddr}, {"encrypt", encAddr}} {
		t.Run("pipelined/quit/"+level.name, func(t *testing.T) {
			c := st.Dial(t, level.addr)
			c.Expect("250", "EHLO client.test")
			c.Conn.Write([]byte("STARTTLS\r\nQUIT\r\n"))
			if code, msg := c.Read(); code != 220 {
				t.Fatalf("STARTTLS: %d %s", code, msg)
			}
			tc := tls.Client(c.Conn, st.TLSConfig(nil, ""))
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			c.Conn, c.Text = tc, st.NewText(tc)
			c.Expect("250 2.0.0 I have successfully done nothing", "NOOP")
		})
		// The ClientHello in the same packet as STARTTLS is dropped with the
		// plaintext buffer: the handshake never starts and the server gives
		// up at the read timeout, without a plaintext reply.
		t.Run("pipelined/client-hello/"+level.name, func(t *testing.T) {
			failed := tlsEdgeLogCount(e, "tls handshake failed")
			c := st.Dial(t, level.addr)
			c.Expect("250", "EHLO client.test")
			c.Conn.Write(append([]byte("STARTTLS\r\n"), hello...))
			if code, msg := c.Read(); code != 220 {
				t.Fatalf("STARTTLS: %d %s", code, msg)
			}
			begin := time.Now()
			// The reply was read through a buffer; the server's next bytes
			// (if any) would be a ServerHello.
			c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c.Conn)
			if len(b) != 0 || err != nil {
				t.Fatalf("server answered the pipelined ClientHello: %q %v", b, err)
			}
			if took := time.Since(begin); took < 500*time.Millisecond || took > 6*time.Second {
				t.Fatalf("closed after %s, want about read_timeout (1s)", took)
			}
			tlsEdgeWaitLog(t, e, "tls handshake failed", failed)
		})
		// Plaintext after the 220: not a TLS record, the handshake fails,
		// the connection is closed with no plaintext reply.
		t.Run("plaintext-after-220/"+level.name, func(t *testing.T) {
			c := tlsEdgeStartTLS(t, level.addr)
			c.Conn.Write([]byte("QUIT\r\n"))
			hostileClosed(t, c, 5*time.Second)
		})
	}

	// Handshakes aborted halfway: the server logs the failure, closes,
	// frees the connection, and serves the next client.
	aborts := []struct {
		name  string
		abort func(t *testing.T, c *st.Client)
	}{
		{"half-client-hello-then-close", func(t *testing.T, c *st.Client) {
			c.Conn.Write(hello[:len(hello)/2])
			c.Conn.Close()
		}},
		{"half-client-hello-then-silence", func(t *testing.T, c *st.Client) {
			c.Conn.Write(hello[:len(hello)/2])
			begin := time.Now()
			hostileClosed(t, c, 10*time.Second)
			if took := time.Since(begin); took < 500*time.Millisecond || took > 6*time.Second {
				t.Fatalf("closed after %s, want about read_timeout (1s)", took)
			}
		}},
		{"close-after-server-hello", func(t *testing.T, c *st.Client) {
			cc := &tlsEdgeCloseAfterRead{Conn: c.Conn}
			tc := tls.Client(cc, st.TLSConfig(nil, "localhost"))
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err == nil {
				t.Fatal("handshake completed")
			}
			if cc.got == 0 {
				t.Fatal("no ServerHello read")
			}
		}},
		{"garbage-after-server-hello", func(t *testing.T, c *st.Client) {
			c.Conn.Write(hello)
			c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1)
			if _, err := io.ReadFull(c.Conn, buf); err != nil || buf[0] != 22 {
				t.Fatalf("no ServerHello: %v %q", err, buf)
			}
			c.Conn.Write([]byte("MAIL FROM:<a@remote.test>\r\n"))
			// The rest of the server's flight, maybe an alert, then the
			// close: TLS records only, no plaintext reply.
			c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			rest, err := io.ReadAll(c.Conn)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open after garbage in the handshake")
			}
			tlsEdgeRecordsOnly(t, append(buf, rest...))
		}},
	}
	for _, level := range []struct{ name, addr string }{{"may", mayAddr}, {"encrypt", encAddr}} {
		for _, ab := range aborts {
			t.Run("abort/"+level.name+"/"+ab.name, func(t *testing.T) {
				failed := tlsEdgeLogCount(e, "tls handshake failed")
				closed := tlsEdgeLogCount(e, "connection closed")
				c := tlsEdgeStartTLS(t, level.addr)
				ab.abort(t, c)
				tlsEdgeWaitLog(t, e, "tls handshake failed", failed)
				tlsEdgeWaitLog(t, e, "connection closed", closed)
				tlsEdgeSend(t, level.addr)
			})
		}
	}

	// Old protocol versions: the handshake fails with a protocol version
	// alert and the server closes the connection. Under may the client
	// can deliver in plaintext on a new connection; under encrypt not.
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		for _, level := range []struct{ name, addr string }{{"may", mayAddr}, {"encrypt", encAddr}} {
			t.Run("only-"+strings.ReplaceAll(tls.VersionName(v), " ", "")+"/"+level.name, func(t *testing.T) {
				failed := tlsEdgeLogCount(e, "tls handshake failed")
				c := tlsEdgeStartTLS(t, level.addr)
				tc := tls.Client(c.Conn, &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v})
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				err := tc.Handshake()
				if err == nil || !strings.Contains(err.Error(), "protocol version not supported") {
					t.Fatalf("handshake: %v, want a protocol version alert", err)
				}
				hostileClosed(t, c, 5*time.Second)
				tlsEdgeWaitLog(t, e, "tls handshake failed", failed)

				// The same client on a new connection, without STARTTLS.
				p := st.Dial(t, level.addr)
				p.Expect("250", "EHLO client.test")
				if level.name == "encrypt" {
					p.Expect("530 5.7.0 Must issue a STARTTLS command first", "MAIL FROM:<a@remote.test>")
					return
				}
				if got := p.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
					t.Fatalf("plaintext on a new connection: %q", got)
				}
			})
		}
	}
	// TLS 1.2 is the minimum, not a maximum: a 1.2-only client gets 1.2,
	// any other client 1.3.
	t.Run("minimum-is-tls1.2", func(t *testing.T) {
		for _, tc := range []struct {
			max, want uint16
		}{{tls.VersionTLS12, tls.VersionTLS12}, {0, tls.VersionTLS13}} {
			c := tlsEdgeStartTLS(t, mayAddr)
			cfg := st.TLSConfig(nil, "")
			cfg.MaxVersion = tc.max
			tlc := tls.Client(c.Conn, cfg)
			tlc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tlc.Handshake(); err != nil {
				t.Fatalf("max %x: %v", tc.max, err)
			}
			if got := tlc.ConnectionState().Version; got != tc.want {
				t.Fatalf("negotiated %s, want %s", tls.VersionName(got), tls.VersionName(tc.want))
			}
			tlc.Close()
		}
	})

	for _, name := range []string{"may", "encrypt", "implicit"} {
		hostileSettled(t, e, app.Server(name), baseline)
	}
}
