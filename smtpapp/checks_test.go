package smtpapp

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav"
	_ "github.com/caddy-smtp/caddy-smtp/checks/milter"
	_ "github.com/caddy-smtp/caddy-smtp/checks/rspamd"
)

// TestChecksClamAV: a server with a clamav check (a real clamd) refuses
// a message with EICAR in an attachment at the end of data, 550 5.7.1
// with the signature, and queues nothing; a clean one is queued; clamd
// down is 451 4.7.1 under on_error tempfail and 250 under accept; a
// message over max_size skips the check; relay_networks clients skip it
// with skip_relay_networks. Each check leaves a log line.
func TestChecksClamAV(t *testing.T) {
	clamd := st.StartClamd(t)
	down := fmt.Sprintf("tcp/127.0.0.1:%d", st.FreePort(t))
	server := func(check map[string]any, extra map[string]any) (map[string]any, string) {
		fields := map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{check}}
		for k, v := range extra {
			fields[k] = v
		}
		return st.ServerConfig(t, fields)
	}
	scan, scanAddr := server(map[string]any{"check": "clamav", "address": "tcp/" + clamd}, nil)
	tf, tfAddr := server(map[string]any{"check": "clamav", "address": down, "timeout": "1s"}, nil)
	acc, accAddr := server(map[string]any{"check": "clamav", "address": down, "on_error": "accept"}, nil)
	small, smallAddr := server(map[string]any{"check": "clamav", "address": "tcp/" + clamd, "max_size": 100}, nil)
	skip, skipAddr := server(map[string]any{"check": "clamav", "address": down},
		map[string]any{"relay_networks": []string{"127.0.0.1"}, "skip_relay_networks": true})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"scan": scan, "tf": tf, "acc": acc, "small": small, "skip": skip}), nil)

	mail := func(payload string) string {
		return "From: a@remote.test\r\nSubject: scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
			"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(payload)) + "\r\n--b--\r\n.\r\n"
	}
	send := func(addr, body string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		return c.Send("a@remote.test", "b@example.test", body)
	}
	before := len(e.SpoolIDs())
	if got := send(scanAddr, mail(st.EICAR)); !strings.HasPrefix(got, "550 5.7.1 Virus found: Eicar-Test-Signature") {
		t.Fatalf("EICAR: %s", got)
	}
	if n := len(e.SpoolIDs()); n != before {
		t.Fatalf("a refused message was queued (%d records, %d before)", n, before)
	}
	if got := send(scanAddr, mail("harmless")); !strings.HasPrefix(got, "250 2.0.0 OK: queued as") {
		t.Fatalf("clean: %s", got)
	}
	if got := send(tfAddr, mail("harmless")); !strings.HasPrefix(got, "451 4.7.1") {
		t.Fatalf("clamd down, on_error tempfail: %s", got)
	}
	if got := send(accAddr, mail("harmless")); !strings.HasPrefix(got, "250") {
		t.Fatalf("clamd down, on_error accept: %s", got)
	}
	if got := send(smallAddr, mail(st.EICAR)); !strings.HasPrefix(got, "250") {
		t.Fatalf("over max_size: %s", got)
	}
	if got := send(skipAddr, mail("harmless")); !strings.HasPrefix(got, "250") {
		t.Fatalf("skip_relay_networks: %s", got)
	}
	for msg, want := range map[string]int{"check reject": 1, "check accept": 1, "check error": 2, "check skipped": 1} {
		if n := len(e.LogLines(msg)); n != want {
			t.Errorf("%d %q lines, want %d", n, msg, want)
		}
	}
}

// TestChecksRspamd: a server with a clamav check then an rspamd check
// (both real) refuses GTUBE with rspamd's message, 550 5.7.1 Gtube
// pattern, and queues nothing; rspamd's soft reject is 451 4.7.1 with
// its text; a plain message passes both checks and is queued; the log
// line of the refusal has rspamd's action and score.
func TestChecksRspamd(t *testing.T) {
	clamd, rspamd := st.StartClamd(t), st.StartRspamd(t)
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{
		map[string]any{"check": "clamav", "address": "tcp/" + clamd},
		map[string]any{"check": "rspamd", "url": rspamd},
	}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"mx": srv}), nil)
	send := func(subject, body string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		return c.Send("a@remote.test", "b@example.test", "From: a@remote.test\r\nTo: b@example.test\r\nSubject: "+subject+
			"\r\nMessage-ID: <"+subject+"@remote.test>\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\n"+body+"\r\n.\r\n")
	}
	before := len(e.SpoolIDs())
	if got := send("offer", st.GTUBE); !strings.HasPrefix(got, "550 5.7.1 Gtube pattern") {
		t.Fatalf("GTUBE: %s", got)
	}
	if got := send("SOFTREJECT", "hello"); !strings.HasPrefix(got, "451 4.7.1 Test soft reject") {
		t.Fatalf("soft reject: %s", got)
	}
	if n := len(e.SpoolIDs()); n != before {
		t.Fatalf("a refused message was queued (%d records, %d before)", n, before)
	}
	if got := send("lunch", "Lunch tomorrow at noon?"); !strings.HasPrefix(got, "250 2.0.0 OK: queued as") {
		t.Fatalf("plain: %s", got)
	}
	rej := e.LogLines("check reject")
	if len(rej) != 1 || rej[0]["check"] != "rspamd" || !strings.HasPrefix(fmt.Sprint(rej[0]["reason"]), "reject 15.00/15.00") {
		t.Fatalf("check reject lines: %q", rej)
	}
}

// TestChecksMilter: a server with a milter check, a real clamav-milter
// in front of a real clamd, refuses EICAR with clamav-milter's reply
// (550 5.7.1) and queues nothing; a clean message is queued.
func TestChecksMilter(t *testing.T) {
	milter := st.StartClamavMilter(t, st.StartClamd(t))
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{
		map[string]any{"check": "milter", "address": "tcp/" + milter},
	}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"mx": srv}), nil)
	send := func(payload string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		return c.Send("a@remote.test", "b@example.test", "From: a@remote.test\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"+
			"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"+
			"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
			base64.StdEncoding.EncodeToString([]byte(payload))+"\r\n--b--\r\n.\r\n")
	}
	before := len(e.SpoolIDs())
	if got := send(st.EICAR); !strings.HasPrefix(got, "550 5.7.1 Virus found: Eicar-Test-Signature") {
		t.Fatalf("EICAR: %s", got)
	}
	if n := len(e.SpoolIDs()); n != before {
		t.Fatalf("a refused message was queued (%d records, %d before)", n, before)
	}
	if got := send("harmless"); !strings.HasPrefix(got, "250 2.0.0 OK: queued as") {
		t.Fatalf("clean: %s", got)
	}
}
