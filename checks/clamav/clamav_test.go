package clamav_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/checks/clamav"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func message(body string) *checks.Message {
	data := "Received: from client.test ([192.0.2.1])\r\n\tby mx.test (caddy-smtp) with ESMTP id X;\r\n\tTue, 1 Dec 2026 00:00:00 +0000\r\n" + body
	return &checks.Message{QueueID: "X", Size: int64(len(data)),
		Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
}

// attachment is a multipart message with payload as a base64 attachment.
func attachment(payload string) string {
	return "From: a@remote.test\r\nTo: b@example.test\r\nSubject: attached\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
		"--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n" +
		"--b1\r\nContent-Type: application/octet-stream; name=\"file.com\"\r\nContent-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"file.com\"\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte(payload)) + "\r\n--b1--\r\n"
}

func provision(t *testing.T, c *clamav.ClamAV) *clamav.ClamAV {
	t.Helper()
	if err := c.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClamAV: with a real clamd, EICAR in a base64 attachment inside a
// multipart message is refused with its signature's name; a clean
// attachment passes.
func TestClamAV(t *testing.T) {
	addr := st.StartClamd(t)
	c := provision(t, &clamav.ClamAV{Address: "tcp/" + addr})
	v, err := c.Check(context.Background(), message(attachment(st.EICAR)))
	if err != nil || v.Action != checks.Reject || !strings.Contains(v.Reason, "Eicar-Test-Signature") {
		t.Fatalf("EICAR attachment: %+v %v", v, err)
	}
	v, err = c.Check(context.Background(), message(attachment("just a harmless file\n")))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("clean attachment: %+v %v", v, err)
	}
}

// TestClamAVDownOrStalled: clamd down, or one that never answers, is an
// engine failure: on_error tempfail (default) gives tempfail, accept
// gives accept, within the timeout.
func TestClamAVDownOrStalled(t *testing.T) {
	down := fmt.Sprintf("tcp/127.0.0.1:%d", st.FreePort(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c) }() // reads, never answers
		}
	}()
	stalled := "tcp/" + ln.Addr().String()
	for _, tc := range []struct {
		addr, onError string
		want          checks.Action
	}{
		{down, "", checks.Tempfail}, {down, "accept", checks.Accept},
		{stalled, "", checks.Tempfail}, {stalled, "accept", checks.Accept},
	} {
		c := provision(t, &clamav.ClamAV{Address: tc.addr, Options: checks.Options{OnError: tc.onError, Timeout: 300 * 1e6}})
		v, outs := checks.Run(context.Background(), []checks.Check{c}, []string{"clamav"}, message("Subject: x\r\n\r\nbody\r\n"), nil)
		if v.Action != tc.want || outs[0].Err == nil {
			t.Fatalf("%s on_error %q: %+v %+v", tc.addr, tc.onError, v, outs)
		}
	}
}

// TestClamAVMaxSize: a message over max_size skips the check, and says so.
func TestClamAVMaxSize(t *testing.T) {
	c := provision(t, &clamav.ClamAV{Address: "tcp/127.0.0.1:1", Options: checks.Options{MaxSize: 10}})
	v, outs := checks.Run(context.Background(), []checks.Check{c}, []string{"clamav"}, message("Subject: big\r\n\r\n"+strings.Repeat("x", 100)), nil)
	if v.Action != checks.Accept || outs[0].Skipped == "" {
		t.Fatalf("%+v %+v", v, outs)
	}
}

// TestClamAVStreamLimit: a message over clamd's StreamMaxLength (clamd
// answers "INSTREAM size limit exceeded", or cuts the stream) is skipped
// as too large, not taken for clamd being down.
func TestClamAVStreamLimit(t *testing.T) {
	addr := st.StartClamdLimit(t, "1M")
	c := provision(t, &clamav.ClamAV{Address: "tcp/" + addr})
	for _, size := range []int{2 << 20, 24 << 20} {
		v, outs := checks.Run(context.Background(), []checks.Check{c}, []string{"clamav"}, message("Subject: big\r\n\r\n"+strings.Repeat("x", size)), nil)
		if v.Action != checks.Accept || outs[0].Skipped == "" || outs[0].Err != nil {
			t.Fatalf("%d bytes: %+v %+v", size, v, outs)
		}
	}
}
