package milter_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/checks/milter"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func message(subject, body string) *checks.Message {
	data := "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (caddy-smtp) with ESMTP id X;\r\n\tTue, 1 Dec 2026 00:00:00 +0000\r\n" +
		"From: a@remote.test\r\nTo: b@example.test\r\nSubject: " + subject + "\r\nMessage-ID: <" + subject + "@remote.test>\r\n" +
		"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(body)) + "\r\n--b--\r\n"
	return &checks.Message{QueueID: "X", Hostname: "mx.test", ClientIP: netip.MustParseAddr("127.0.0.1"), ClientPort: 40000,
		Helo: "client.test", From: "a@remote.test", Rcpts: []string{"b@example.test", "c@example.test"}, Size: int64(len(data)),
		Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
}

func provision(t *testing.T, m *milter.Milter) *milter.Milter {
	t.Helper()
	if err := m.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestClamavMilter: through a real clamav-milter and clamd, EICAR in an
// attachment is refused with clamav-milter's reply, a clean message is
// accepted; with clamd down clamav-milter defers (OnFail Defer), which
// is a tempfail.
func TestClamavMilter(t *testing.T) {
	clamd := st.StartClamd(t)
	addr := st.StartClamavMilter(t, clamd)
	m := provision(t, &milter.Milter{Address: "tcp/" + addr})
	ctx := context.Background()
	v, err := m.Check(ctx, message("virus", st.EICAR))
	if err != nil || v.Action != checks.Reject || !strings.Contains(v.Reply, "Eicar-Test-Signature") {
		t.Fatalf("EICAR: %+v %v", v, err)
	}
	v, err = m.Check(ctx, message("clean", "a harmless file"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("clean: %+v %v", v, err)
	}
	// A header line that is no header field (a sender's choice) ends the
	// header; the rest still reaches the milter and is scanned.
	bad := message("virus", st.EICAR)
	data := strings.Replace(mustRead(t, bad), "MIME-Version: 1.0\r\n", "MIME-Version: 1.0\r\nthis is no header field\r\n", 1)
	bad.Size, bad.Open = int64(len(data)), func() (io.Reader, error) { return strings.NewReader(data), nil }
	v, err = m.Check(ctx, bad)
	if err != nil || v.Action != checks.Reject {
		t.Fatalf("EICAR after a malformed header line: %+v %v", v, err)
	}
	down := st.StartClamavMilter(t, fmt.Sprintf("127.0.0.1:%d", st.FreePort(t)))
	v, err = provision(t, &milter.Milter{Address: "tcp/" + down}).Check(ctx, message("clean", "a harmless file"))
	if err != nil || v.Action != checks.Tempfail {
		t.Fatalf("clamd down behind clamav-milter: %+v %v", v, err)
	}
}

// TestRspamdMilter: rspamd's proxy worker in milter mode refuses GTUBE
// with its reply and lets a plain message on (the headers it asks to
// add are counted, not applied).
func TestRspamdMilter(t *testing.T) {
	_, addr := st.StartRspamdMilter(t)
	m := provision(t, &milter.Milter{Address: "tcp/" + addr})
	ctx := context.Background()
	gtube := message("offer", "x")
	data := strings.Replace(mustRead(t, gtube), "hello", st.GTUBE, 1)
	gtube.Size, gtube.Open = int64(len(data)), func() (io.Reader, error) { return strings.NewReader(data), nil }
	v, err := m.Check(ctx, gtube)
	if err != nil || v.Action != checks.Reject || !strings.Contains(v.Reply, "Gtube pattern") {
		t.Fatalf("GTUBE: %+v %v", v, err)
	}
	v, err = m.Check(ctx, message("lunch", "Lunch tomorrow at noon?"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("plain: %+v %v", v, err)
	}
}

func mustRead(t *testing.T, m *checks.Message) string {
	r, _ := m.Open()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestMilterHostile: a milter that is down, one that never answers, one
// that answers garbage and one that closes mid-session are engine
// errors, within the timeout.
func TestMilterHostile(t *testing.T) {
	down := provision(t, &milter.Milter{Address: fmt.Sprintf("tcp/127.0.0.1:%d", st.FreePort(t))})
	if _, err := down.Check(context.Background(), message("x", "x")); err == nil {
		t.Fatal("down: no error")
	}
	for name, serve := range map[string]func(net.Conn){
		"silent":  func(c net.Conn) { io.Copy(io.Discard, c) },
		"garbage": func(c net.Conn) { c.Read(make([]byte, 1024)); c.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\n")) },
		"close":   func(c net.Conn) { c.Read(make([]byte, 1024)) },
		"empty": func(c net.Conn) {
			c.Read(make([]byte, 1024))
			c.Write([]byte{0, 0, 0, 0}) // go-milter would index data[0] and panic
			time.Sleep(3 * time.Second)
		},
		"huge": func(c net.Conn) {
			c.Read(make([]byte, 1024))
			c.Write([]byte{0x10, 0, 0, 0, 'O'}) // a 256 MiB packet announced (go-milter allows 512)
			c.Write(make([]byte, 4<<20))
			time.Sleep(3 * time.Second)
		},
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); serve(c) }()
			}
		}()
		m := provision(t, &milter.Milter{Address: "tcp/" + ln.Addr().String()})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		v, err := m.Check(ctx, message("x", "x"))
		runtime.ReadMemStats(&after)
		cancel()
		ln.Close()
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
			t.Errorf("%s: %d MiB allocated for one check", name, alloc>>20)
		}
		if err == nil {
			t.Errorf("%s: no error, verdict %+v", name, v)
		} else if name == "huge" && !strings.Contains(err.Error(), "read budget") {
			t.Errorf("huge: %v, want the read budget's error", err)
		} else if name == "empty" && !strings.Contains(err.Error(), "empty packet") {
			t.Errorf("empty: %v, want the empty packet's error", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v", name, d)
		}
	}
}
