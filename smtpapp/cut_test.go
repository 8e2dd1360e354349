package smtpapp

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// Regression tests from a review of the command-line cut and the junk
// count (each failed before its fix).

// TestImplicitTLSStalledHandshake: a client on an implicit-TLS listener
// that starts a handshake and stalls is closed after read_timeout, and
// its slot is given back. The 421 of the cut was written through the
// TLS session whose handshake ran on the same goroutine: a deadlock
// that kept the socket and the slot for good.
func TestImplicitTLSStalledHandshake(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":          map[string]any{"level": "encrypt", "implicit": true},
		"read_timeout": "1s", "max_connections_per_ip": 1,
	})
	e.Load(st.App(map[string]any{"submissions": s}), nil)
	insecure := &tls.Config{InsecureSkipVerify: true}
	if !st.Eventually(30*time.Second, func() bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, insecure)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("no TLS")
	}
	srv := hostileApp(t).Server("submissions")
	if !st.Eventually(5*time.Second, func() bool { n, _ := srv.slots.Clients(); return n == 0 }) {
		t.Fatal("the probe's slot was not given back")
	}
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, then nothing
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	if _, err := raw.Read(buf); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("a stalled implicit-TLS handshake was not closed (read_timeout 1s)")
		}
	}
	if !st.Eventually(5*time.Second, func() bool { n, _ := srv.slots.Clients(); return n == 0 }) {
		t.Fatal("the stalled connection's slot was not given back")
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, insecure)
	if err != nil {
		t.Fatalf("a connection after the stalled one: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "220") {
		t.Fatalf("a connection after the stalled one: %q", buf[:n])
	}
}

// TestPipelinedSmallBDATChunks: a message sent as many small BDAT
// chunks, pipelined (CHUNKING and PIPELINING are both offered), is mail,
// not junk: the chunks go beyond max_junk_commands and the message is
// accepted.
func TestPipelinedSmallBDATChunks(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	body := "Subject: test\r\n\r\n" + strings.Repeat("Hello, this is line of text.\r\n", 40)
	var sb strings.Builder
	sb.WriteString("MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test>\r\n")
	chunks := 0
	for i := 0; i < len(body); i += 8 {
		j := min(i+8, len(body))
		fmt.Fprintf(&sb, "BDAT %d\r\n%s", j-i, body[i:j])
		chunks++
	}
	sb.WriteString("BDAT 0 LAST\r\n")
	if chunks <= DefaultMaxJunkCommands {
		t.Fatalf("only %d chunks", chunks)
	}
	if _, err := c.Conn.Write([]byte(sb.String())); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < chunks+3; i++ {
		if code, msg := c.Read(); code != 250 {
			t.Fatalf("reply %d of %d (%d chunks): %d %s", i+1, chunks+3, chunks, code, msg)
		}
	}
}

// TestCutBDATFragment: a client cut for a command line it did not finish
// (here "BDAT 0 LAST" without its CRLF, first or after a chunk) never got
// a 250, so nothing is queued: go-smtp still runs the fragment it had
// read, and that must not commit a message the client will send again.
func TestCutBDATFragment(t *testing.T) {
	for _, first := range []bool{true, false} {
		t.Run(fmt.Sprintf("first-%v", first), func(t *testing.T) {
			e := st.NewEnv(t)
			s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "read_timeout": "1s"})
			e.Load(st.App(map[string]any{"mx": s}), nil)
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			c.Expect("250", "MAIL FROM:<a@remote.test>")
			c.Expect("250", "RCPT TO:<b@example.test>")
			if !first {
				body := "Subject: test\r\n\r\nHello.\r\n"
				fmt.Fprintf(c.Conn, "BDAT %d\r\n%s", len(body), body)
				if code, msg := c.Read(); code != 250 {
					t.Fatalf("chunk: %d %s", code, msg)
				}
			}
			c.Conn.Write([]byte("BDAT 0 LAST"))
			code, msg := c.Read()
			if code != 421 {
				t.Fatalf("after the stall: %d %s, want 421", code, msg)
			}
			e.WaitLog("connection closed")
			if lines := e.LogLines("message accepted"); len(lines) > 0 {
				t.Fatalf("message %v queued although the client got %d %s", lines[0]["queue_id"], code, msg)
			}
		})
	}
}
