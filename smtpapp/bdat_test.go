package smtpapp

import (
	"fmt"
	"strings"
	"testing"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestBDATHangUp drives go-smtp's BDAT race (see isBDATCloseRace): the
// client hangs up right after the first chunk of a message was
// answered, in plaintext and inside STARTTLS. The gateway must log no
// engine panic as an error, store nothing, and go on serving: a message
// sent in chunks afterwards is queued whole.
func TestBDATHangUp(t *testing.T) {
	e := st.NewEnv(t)
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "may"}})
	e.Load(st.App(map[string]any{"s": srv}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))

	for i := 0; i < 200; i++ {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		if i%2 == 1 {
			if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
				t.Fatal(err)
			}
			c.Expect("250", "EHLO client.test")
		}
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("250", "RCPT TO:<u@example.test>")
		if i%4 < 2 {
			c.Expect("250 2.0.0 Continue", "BDAT 0")
		} else {
			// A chunk size whose bytes never come.
			c.Text.PrintfLine("BDAT 5")
		}
		c.Conn.Close()
	}

	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	c.Expect("250", "RCPT TO:<u@example.test>")
	for _, step := range []struct{ send, want string }{
		{"BDAT 24\r\nSubject: chunks\r\n\r\nhello", "250 2.0.0 Continue"},
		{"BDAT 0\r\n", "250 2.0.0 Continue"},
		{"BDAT 8 LAST\r\n world\r\n", "250 2.0.0 OK: queued as "},
	} {
		c.Conn.Write([]byte(step.send))
		if code, msg := c.Read(); !strings.HasPrefix(fmt.Sprintf("%d %s", code, msg), step.want) {
			t.Fatalf("after %q: %d %s, want %q", step.send, code, msg, step.want)
		}
	}
	c.Expect("221", "QUIT")

	if p := e.LogLines("smtp engine panic"); len(p) > 0 {
		t.Fatalf("%d engine panics logged as errors; first:\n%v", len(p), p[0]["detail"])
	}
	ids := e.SpoolIDs()
	if len(ids) != 1 {
		t.Fatalf("spool holds %d messages, want the 1 sent whole", len(ids))
	}
	_, data := e.SpoolRecord(ids[0])
	if !strings.HasSuffix(string(data), "Subject: chunks\r\n\r\nhello world\r\n") {
		t.Fatalf("queued message ends %q", data[max(0, len(data)-60):])
	}
	t.Logf("races seen and recognised: %d", len(e.LogLines("smtp engine: BDAT goroutine ran after the connection closed")))
}

// TestIsBDATCloseRace checks the recogniser on go-smtp's real trace and
// on a panic from our own code under the same goroutine, which must
// stay an error.
func TestIsBDATCloseRace(t *testing.T) {
	const race = "panic serving 127.0.0.1:58606: runtime error: invalid memory address or nil pointer dereference\n" +
		"goroutine 5 [running]:\nruntime/debug.Stack()\n\t/usr/local/go/src/runtime/debug/stack.go:26 +0x5e\n" +
		"github.com/emersion/go-smtp.(*Conn).handlePanic(0x8012f8351e0, {0x1f19c80, 0x3c8c010}, 0x8012f66ddcf?)\n" +
		"\t/root/go/pkg/mod/github.com/emersion/go-smtp@v0.25.1/conn.go:1142 +0x85\n" +
		"github.com/emersion/go-smtp.(*Conn).handleBdat.func1.1()\n\t/root/go/pkg/mod/github.com/emersion/go-smtp@v0.25.1/conn.go:1050 +0x45\n" +
		"panic({0x1f19c80?, 0x3c8c010?})\n\t/usr/local/go/src/runtime/panic.go:860 +0x13a\n" +
		"github.com/emersion/go-smtp.(*Conn).handleBdat.func1()\n\t/root/go/pkg/mod/github.com/emersion/go-smtp@v0.25.1/conn.go:1059 +0x9a\n" +
		"created by github.com/emersion/go-smtp.(*Conn).handleBdat in goroutine 51\n"
	ours := strings.Replace(race,
		"panic({0x1f19c80?, 0x3c8c010?})\n\t/usr/local/go/src/runtime/panic.go:860 +0x13a\n",
		"panic({0x1f19c80?, 0x3c8c010?})\n\t/usr/local/go/src/runtime/panic.go:860 +0x13a\n"+
			"github.com/caddy-smtp/caddy-smtp/smtpapp.(*session).Data(0xc0, {0x1, 0x2})\n\t/work/smtpapp/session.go:170 +0x10\n", 1)
	other := strings.Replace(race, "nil pointer dereference", "index out of range [3] with length 3", 1)
	for _, c := range []struct {
		name, detail string
		want         bool
	}{{"go-smtp race", race, true}, {"panic in session.Data", ours, false}, {"other panic", other, false}} {
		if got := isBDATCloseRace(c.detail); got != c.want {
			t.Errorf("%s: isBDATCloseRace = %v, want %v", c.name, got, c.want)
		}
	}
}
