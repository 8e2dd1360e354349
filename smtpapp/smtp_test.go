package smtpapp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestSmuggling sends every end-of-data look-alike from the 2023 SMTP
// smuggling research inside a message: with bare_newlines reject each is
// refused with 550 5.5.2, with normalize each is stored as CRLF and the
// message stays one message.
func TestSmuggling(t *testing.T) {
	e := st.NewEnv(t)
	rej, rejAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	norm, normAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "bare_newlines": "normalize"})
	e.Load(st.App(map[string]any{"reject": rej, "normalize": norm}), nil)

	variants := map[string]string{
		`\n.\n`:         "\n.\n",
		`\n.\r\n`:       "\n.\r\n",
		`\r.\r`:         "\r.\r",
		`\r\n.\r`:       "\r\n.\rX",
		`\r\n.\n`:       "\r\n.\n",
		`\n.\n+NUL`:     "\n.\x00\n",
		`bare LF`:       "line\nline",
		`bare CR`:       "line\rline",
		`CR at end`:     "line\r",
		`\r\n\x00.\r\n`: "\r\n\x00.\r\n",
	}
	for name, v := range variants {
		smuggled := "Subject: s\r\n\r\nbefore" + v + "MAIL FROM:<evil@evil.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nafter\r\n.\r\n"
		t.Run("reject/"+name, func(t *testing.T) {
			c := st.Dial(t, rejAddr)
			c.Expect("250", "EHLO client.test")
			got := c.Send("a@remote.test", "b@example.test", smuggled)
			if name == `\r\n\x00.\r\n` || name == `\r\n.\r` {
				// No bare line end reaches the spool: a NUL is not a
				// line end, and go-smtp's dot-unstuffing drops the "."
				// and the CR of a line that starts ".\r". Either way
				// it is one message with CRLF line ends only.
				if !strings.HasPrefix(got, "250") {
					t.Fatalf("got %q, want 250", got)
				}
				c.Expect("250", "NOOP")
				assertCRLFOnly(t, e, strings.TrimPrefix(got, "250 2.0.0 OK: queued as "))
				return
			}
			if !strings.HasPrefix(got, "550 5.5.2") {
				t.Fatalf("got %q, want 550 5.5.2", got)
			}
			// The session is usable and in sync afterwards.
			c.Expect("250", "NOOP")
		})
		t.Run("normalize/"+name, func(t *testing.T) {
			c := st.Dial(t, normAddr)
			c.Expect("250", "EHLO client.test")
			got := c.Send("a@remote.test", "b@example.test", smuggled)
			if !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
				t.Fatalf("got %q", got)
			}
			c.Expect("250", "NOOP") // nothing else was executed
			data := assertCRLFOnly(t, e, strings.TrimPrefix(got, "250 2.0.0 OK: queued as "))
			if !strings.Contains(string(data), "Subject: smuggled") {
				t.Fatalf("second part missing from the one message: %q", data)
			}
		})
	}
}

// assertCRLFOnly fails if the stored message has a bare CR or LF.
func assertCRLFOnly(t *testing.T, e *st.Env, id string) []byte {
	t.Helper()
	_, data := e.SpoolRecord(id)
	for i := range data {
		if data[i] == '\n' && (i == 0 || data[i-1] != '\r') || data[i] == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
			t.Fatalf("bare line ending at %d in stored message: %q", i, data)
		}
	}
	return data
}

// TestLimits checks each limit's reply.
func TestLimits(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":              map[string]any{"level": "none"},
		"max_message_size": 1000,
		"max_recipients":   2,
		"max_line_length":  600,
		"relay_networks":   []string{"192.0.2.0/24"},
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)

	t.Run("size-declared", func(t *testing.T) {
		c := st.Dial(t, addr)
		if ehlo := c.Expect("250", "EHLO client.test"); !strings.Contains(ehlo, "SIZE 1000") {
			t.Fatalf("SIZE not advertised: %q", ehlo)
		}
		c.Expect("552 5.3.4", "MAIL FROM:<a@remote.test> SIZE=1001")
	})
	t.Run("size-actual", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		body := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 98)+"\r\n", 20) + ".\r\n"
		if got := c.Send("a@remote.test", "b@example.test", body); !strings.HasPrefix(got, "552 5.3.4") {
			t.Fatalf("got %q", got)
		}
		c.Expect("250", "NOOP")
	})
	t.Run("recipients", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("250", "RCPT TO:<one@example.test>")
		c.Expect("250", "RCPT TO:<two@example.test>")
		c.Expect("452 4.5.3", "RCPT TO:<three@example.test>")
	})
	t.Run("relay-denied", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<someone@elsewhere.test>")
		c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<someone@[127.0.0.1]>")
		c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<someone@example.test.evil.test>")
		c.Expect("250", "RCPT TO:<someone@EXAMPLE.test>")
	})
	t.Run("line-length", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("500 5.4.0", "NOOP %s", strings.Repeat("x", 700))
		if code, _ := c.Read(); code != 0 {
			t.Fatal("connection open after an over-long line")
		}
	})
	t.Run("requiretls-plaintext", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("504", "MAIL FROM:<a@remote.test> REQUIRETLS") // not advertised here
	})
	t.Run("smtputf8", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("553 5.6.7", "MAIL FROM:<jös@remote.test>")
		c.Expect("250", "MAIL FROM:<jös@remote.test> SMTPUTF8")
		c.Expect("250", "RCPT TO:<b@example.test>")
	})
}

// TestRequireTLS: REQUIRETLS is advertised only inside TLS and refused
// on a plaintext session.
func TestRequireTLS(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"requiretls": true})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))
	c := st.Dial(t, addr)
	if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "REQUIRETLS") {
		t.Fatal("REQUIRETLS advertised in plaintext")
	}
	c.Expect("530 5.7.10", "MAIL FROM:<a@remote.test> REQUIRETLS")
	if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
		t.Fatal(err)
	}
	if ehlo := c.Expect("250", "EHLO client.test"); !strings.Contains(ehlo, "REQUIRETLS") {
		t.Fatal("REQUIRETLS not advertised in TLS")
	}
	c.Expect("250", "MAIL FROM:<a@remote.test> REQUIRETLS")
}

// TestMaxConnections: the connection past the limit gets 421.
func TestMaxConnections(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections": 2})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.Dial(t, addr)
	second := st.Dial(t, addr)
	c, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	third := &st.Client{T: t, Conn: c, Text: st.NewText(c)}
	if code, msg := third.Read(); code != 421 || !strings.Contains(msg, "4.7.0") {
		t.Fatalf("third connection: %d %s, want 421 4.7.0", code, msg)
	}
	// A slot frees up when a session ends.
	second.Expect("221", "QUIT")
	second.Read()
	slot := st.Eventually(5*time.Second, func() bool {
		c, err := st.NetDial(addr)
		if err != nil {
			t.Fatal(err)
		}
		cl := &st.Client{T: t, Conn: c, Text: st.NewText(c)}
		code, _ := cl.Read()
		c.Close()
		return code == 220
	})
	if !slot {
		t.Fatal("no slot after a session ended")
	}
}

// TestMaxConnectionsPerIP: a client address past its own limit gets
// 421 while the server as a whole has room.
func TestMaxConnectionsPerIP(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections_per_ip": 2})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.Dial(t, addr)
	st.Dial(t, addr)
	c, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	third := &st.Client{T: t, Conn: c, Text: st.NewText(c)}
	if code, msg := third.Read(); code != 421 || !strings.Contains(msg, "Too many connections from your address") {
		t.Fatalf("third connection from one address: %d %s", code, msg)
	}
	// Another address (127.0.0.2 is loopback too) is another client.
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	oc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	other := &st.Client{T: t, Conn: oc, Text: st.NewText(oc)}
	if code, msg := other.Read(); code != 220 {
		t.Fatalf("another address: %d %s", code, msg)
	}
}

// TestDataTimeout: a client that trickles data is cut off at the data
// timeout, however steadily it sends, with 421.
func TestDataTimeout(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "data_timeout": "1s", "read_timeout": "10s"})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	c.Expect("250", "RCPT TO:<b@example.test>")
	c.Expect("354", "DATA")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 40; i++ {
			if _, err := c.Conn.Write([]byte("x\r\n")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // a sleep: the slow client under test
		}
	}()
	code, msg := c.Read()
	if code != 421 || !strings.HasPrefix(msg, "4.4.2") {
		t.Fatalf("got %d %s, want 421 4.4.2", code, msg)
	}
	if code, _ := c.Read(); code != 0 {
		t.Fatal("connection open after data timeout")
	}
	<-done
}

// TestSpoolUnavailable: when the spool cannot be written the reply is
// 452 4.3.1 and nothing is acknowledged.
func TestSpoolUnavailable(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	// Root ignores permissions, so take the directory away instead.
	if err := os.RemoveAll(e.SpoolDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.SpoolDir(), []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "452 4.3.1") {
		t.Fatalf("got %q, want 452 4.3.1", got)
	}
	e.WaitLog("spool unavailable")
}

// TestConfigErrors: invalid JSON configs are refused with the field named.
func TestConfigErrors(t *testing.T) {
	e := st.NewEnv(t)
	cases := []struct {
		server map[string]any
		want   string
	}{
		{map[string]any{"tls": map[string]any{"level": "secure"}}, `servers.mx.tls.level: "secure" is not one of none, may, encrypt`},
		{map[string]any{"tls": map[string]any{"level": "may", "client_auth": "require"}}, "servers.mx.tls.client_auth: require is only valid with level encrypt"},
		{map[string]any{"tls": map[string]any{"client_auth": "sometimes"}}, "servers.mx.tls.client_auth"},
		{map[string]any{"tls": map[string]any{"level": "none", "implicit": true}}, "servers.mx.tls.implicit"},
		{map[string]any{"tls": map[string]any{"protocols": []string{"tls1.0"}}}, "servers.mx.tls.protocols"},
		{map[string]any{"tls": map[string]any{"ciphers": []string{"NOPE"}}}, "servers.mx.tls.ciphers"},
		{map[string]any{"relay_networks": []string{"10.0.0.0/33"}}, "servers.mx.relay_networks"},
		{map[string]any{"accept_domains": []string{"*"}}, "servers.mx.accept_domains"},
		{map[string]any{"bare_newlines": "sometimes"}, "servers.mx.bare_newlines"},
		{map[string]any{"max_line_length": 100}, "servers.mx.max_line_length"},
		{map[string]any{"listen": []string{"udp/127.0.0.1:2525"}}, "servers.mx.listen"},
	}
	for _, tc := range cases {
		s, _ := st.ServerConfig(t, tc.server)
		err := e.LoadErr(st.App(map[string]any{"mx": s}))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got error %v, want %q", tc.server, err, tc.want)
		}
	}
	// Two servers on one address would silently share it (SO_REUSEPORT).
	a, _ := st.ServerConfig(t, nil)
	b, _ := st.ServerConfig(t, nil)
	b["listen"] = a["listen"]
	if err := e.LoadErr(st.App(map[string]any{"a": a, "b": b})); err == nil || !strings.Contains(err.Error(), "servers.b.listen") {
		t.Errorf("two servers on one address: %v", err)
	}
	// A spool that cannot be created is a clear error at load.
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o600)
	s, _ := st.ServerConfig(t, nil)
	err := e.LoadErr(map[string]any{"queue": map[string]any{"path": filepath.Join(blocker, "queue")},
		"servers": map[string]any{"mx": s}})
	if err == nil || !strings.Contains(err.Error(), "queue.path") {
		t.Errorf("unwritable spool: %v", err)
	}
}

// TestReload replaces the config through the admin API twice while a
// session is open and clients keep connecting: the session finishes with
// 250, no connection is refused, and new sessions see the new config.
func TestReload(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_recipients": 5})
	cfg := func(rcpts int) map[string]any {
		s2 := make(map[string]any)
		for k, v := range s {
			s2[k] = v
		}
		s2["max_recipients"] = rcpts
		return st.App(map[string]any{"mx": s2})
	}
	e.Load(cfg(5), nil)

	open := st.Dial(t, addr)
	open.Expect("250", "EHLO client.test")
	open.Expect("250", "MAIL FROM:<a@remote.test>")
	open.Expect("250", "RCPT TO:<b@example.test>")

	var stop atomic.Bool
	var dials, refused, resetAtConnect atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && !stop.Load(); i++ {
				c, err := st.NetDial(addr)
				dials.Add(1)
				var dialErr *net.OpError
				switch {
				case err != nil && errors.As(err, &dialErr) && dialErr.Op == "dial" && errors.Is(err, syscall.ECONNRESET):
					// The SYN met the old socket in the instant it closed:
					// a race of SO_REUSEPORT that tcp_migrate_req does not
					// cover (see TestReloadUnderLoad). A client retries.
					resetAtConnect.Add(1)
					t.Logf("dial: %v", err)
					continue
				case err != nil:
					refused.Add(1)
					t.Logf("dial: %v", err)
					continue
				}
				cl := &st.Client{T: t, Conn: c, Text: st.NewText(c)}
				if code, msg := cl.Read(); code != 220 {
					refused.Add(1)
					t.Logf("greeting: %d %s", code, msg)
				}
				c.Close()
			}
		}()
	}
	// Sleeps: the clients keep connecting for a while before, between
	// and after the reloads; the pace of the test, not a wait for a state.
	time.Sleep(100 * time.Millisecond)
	e.PostLoad(cfg(6), nil)
	time.Sleep(100 * time.Millisecond)
	e.PostLoad(cfg(7), nil)
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	open.Expect("250", "RCPT TO:<c@example.test>")
	open.Expect("354", "DATA")
	open.Conn.Write([]byte(st.Message))
	if code, msg := open.Read(); code != 250 {
		t.Fatalf("session across reloads: %d %s", code, msg)
	}
	// Linux drops the connections queued on a closing SO_REUSEPORT
	// socket unless net.ipv4.tcp_migrate_req hands them to a sibling
	// (Linux 5.14+); .ci/run and the README set it.
	if n := refused.Load(); n != 0 {
		if migrateReqEnabled() {
			t.Errorf("%d of %d connections refused during reloads", n, dials.Load())
		} else {
			t.Logf("net.ipv4.tcp_migrate_req is off: %d of %d connections refused during reloads", n, dials.Load())
		}
	}
	if n := resetAtConnect.Load(); n > 2 {
		t.Errorf("%d connections reset at connect during two reloads (up to 2 are the kernel's race)", n)
	}
	t.Logf("%d connections during two reloads, %d refused, %d reset at connect", dials.Load(), refused.Load(), resetAtConnect.Load())
	fresh := st.Dial(t, addr)
	if ehlo := fresh.Expect("250", "EHLO client.test"); !strings.Contains(ehlo, fmt.Sprintf("RCPTMAX=%d", 7)) {
		t.Fatalf("new session does not see the new config: %q", ehlo)
	}
}

func migrateReqEnabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
