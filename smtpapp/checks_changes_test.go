package smtpapp

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"go.uber.org/zap"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// changingMilter is a milter written with go-milter's server (the
// library the milter check's client comes from), asking for every kind
// of change at the end of the message, and for a quarantine on demand.
type changingMilter struct {
	gomilter.NoOpMilter
	subject string
}

func (m *changingMilter) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	if strings.EqualFold(name, "Subject") {
		m.subject = value
	}
	return gomilter.RespContinue, nil
}

func (m *changingMilter) EndOfMessage(mod gomilter.Modifier) (*gomilter.Response, error) {
	if strings.Contains(m.subject, "QUARANTINEME") {
		if err := mod.Quarantine("test milter says so"); err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil
	}
	for _, err := range []error{
		mod.AddHeader("X-Scanned", "by the test milter;\n\tfolded"),
		mod.ChangeHeader(1, "Subject", "[scanned] "+strings.TrimSpace(m.subject)),
		mod.ChangeHeader(1, "X-Remove", ""),
		mod.InsertHeader(0, "X-First", "top"),
		mod.AddRecipient("<added@example.test>", ""),
		mod.DeleteRecipient("<gone@example.test>"),
	} {
		if err != nil {
			return nil, err
		}
	}
	if strings.Contains(m.subject, "REPLACEBODY") {
		if err := mod.ReplaceBody(strings.NewReader("the new body\nsecond line\n")); err != nil {
			return nil, err
		}
	}
	return gomilter.RespAccept, nil
}

// startChangingMilter serves changingMilter on a loopback port.
func startChangingMilter(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return &changingMilter{} }),
		gomilter.WithAction(gomilter.OptAddHeader|gomilter.OptChangeHeader|gomilter.OptAddRcpt|
			gomilter.OptRemoveRcpt|gomilter.OptChangeBody|gomilter.OptQuarantine),
	)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// readMaildir waits for n messages in a maildir's new/ and returns
// them, CRLF line ends.
func readMaildir(t *testing.T, dir string, n int) []string {
	t.Helper()
	var msgs []string
	st.WaitFor(t, fmt.Sprintf("%d messages in the maildir", n), func() bool {
		entries, _ := os.ReadDir(filepath.Join(dir, "new"))
		msgs = msgs[:0]
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
			if err == nil {
				// A maildir holds LF line ends; the tests read CRLF.
				msgs = append(msgs, strings.ReplaceAll(string(b), "\n", "\r\n"))
			}
		}
		return len(msgs) >= n
	})
	return msgs
}

// header returns the header section of a message.
func header(msg string) string {
	h, _, _ := strings.Cut(msg, "\r\n\r\n")
	return h + "\r\n"
}

// TestChecksMilterChanges: a milter's header changes (add, insert,
// change, delete), recipient changes and a new body are in the message
// as delivered, and in the record as spooled; its quarantine action
// quarantines the message (250, not delivered).
func TestChecksMilterChanges(t *testing.T) {
	milter := startChangingMilter(t)
	md := filepath.Join(t.TempDir(), "maildir")
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"checks": []any{map[string]any{"check": "milter", "address": "tcp/" + milter, "timeout": "10s"}},
		"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{"via": "maildir", "path": md}}},
	})
	e := st.NewEnv(t)
	app := st.App(map[string]any{"mx": srv})
	app["queue"] = map[string]any{"path": e.SpoolDir()} // delivering
	e.Load(app, nil)

	send := func(subject string, rcpts ...string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		for _, r := range rcpts {
			c.Expect("250", "RCPT TO:<%s>", r)
		}
		c.Expect("354", "DATA")
		_, text := c.Cmd("From: a@remote.test\r\nSubject: %s\r\nX-Remove: secret\r\nX-Keep: kept\r\n\r\nhello\r\n.", subject)
		c.Cmd("QUIT")
		return text
	}
	if got := send("greetings", "b@example.test", "gone@example.test"); !strings.HasPrefix(got, "2.0.0 OK: queued as") {
		t.Fatalf("changed message: %s", got)
	}
	msgs := readMaildir(t, md, 2) // b@ and added@; gone@ was taken away
	for _, m := range msgs {
		h := header(m)
		// Return-Path and Delivered-To are the maildir delivery's.
		if !strings.Contains(h, "\r\nDelivered-To: ") || !strings.Contains(h, "\r\nX-First: top\r\nReceived: from client.test") {
			t.Errorf("inserted header not first, before our Received:\n%s", h)
		}
		for _, want := range []string{"\r\nSubject: [scanned] greetings\r\n", "\r\nX-Keep: kept\r\n",
			"\r\nX-Scanned: by the test milter;\r\n\tfolded\r\n"} {
			if !strings.Contains(h, want) {
				t.Errorf("delivered header lacks %q:\n%s", want, h)
			}
		}
		if strings.Contains(h, "X-Remove") || strings.Contains(h, "Subject: greetings") {
			t.Errorf("deleted or changed field still there:\n%s", h)
		}
		if !strings.HasSuffix(m, "\r\n\r\nhello\r\n") {
			t.Errorf("body changed: %q", m)
		}
	}
	var to []string
	for _, l := range e.LogLines("delivery sent") {
		to = append(to, fmt.Sprint(l["to"]))
	}
	if len(to) != 2 || !strings.Contains(strings.Join(to, " "), "added@example.test") || strings.Contains(strings.Join(to, " "), "gone@") {
		t.Errorf("delivered to %v, want b@ and added@", to)
	}
	if l := e.LogLines("check accept"); len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["changes"]), "4 header, 2 recipient") {
		t.Errorf("check line: %v", l)
	}

	os.RemoveAll(filepath.Join(md, "new"))
	os.Mkdir(filepath.Join(md, "new"), 0o700)
	if got := send("REPLACEBODY", "b@example.test"); !strings.HasPrefix(got, "2.0.0 OK") {
		t.Fatalf("new body: %s", got)
	}
	for _, m := range readMaildir(t, md, 2) {
		if !strings.HasSuffix(m, "\r\n\r\nthe new body\r\nsecond line\r\n") {
			t.Errorf("body not replaced (CRLF line ends): %q", m)
		}
	}

	// The milter's quarantine: 250 to the sender, nothing delivered,
	// the record in the quarantine with the milter's reason.
	got := send("QUARANTINEME", "b@example.test")
	if !strings.HasPrefix(got, "2.0.0 OK: queued as ") {
		t.Fatalf("quarantined: %s", got)
	}
	id := strings.TrimPrefix(got, "2.0.0 OK: queued as ")
	env, msg, err := spool.Peek(filepath.Join(e.SpoolDir(), quarantineDir), id)
	if err != nil {
		t.Fatalf("quarantined record %s: %v", id, err)
	}
	if env.Quarantine == nil || env.Quarantine.Check != "milter" || !strings.Contains(env.Quarantine.Reason, "test milter says so") {
		t.Errorf("quarantine: %+v", env.Quarantine)
	}
	if !strings.Contains(string(msg), "Subject: QUARANTINEME") {
		t.Errorf("quarantined message: %q", msg)
	}
	if _, _, err := spool.Peek(e.SpoolDir(), id); err == nil {
		t.Error("the quarantined message is also in the queue")
	}
	if l := e.LogLines("message quarantined"); len(l) != 1 || l[0]["check"] != "milter" {
		t.Errorf("quarantine log: %v", l)
	}
}

// TestChecksRspamdHeaders: with a real rspamd (its milter_headers
// module on), a clean message arrives with rspamd's headers; one
// scored for "add header" arrives with X-Spam: Yes and X-Spam-Score,
// and a sender's own X-Spam is gone from both; "rewrite subject" gets
// rspamd's subject.
func TestChecksRspamdHeaders(t *testing.T) {
	rspamd := st.StartRspamd(t)
	md := filepath.Join(t.TempDir(), "maildir")
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"checks": []any{map[string]any{"check": "rspamd", "url": rspamd, "greylist": "accept"}},
		"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{"via": "maildir", "path": md}}},
	})
	e := st.NewEnv(t)
	app := st.App(map[string]any{"mx": srv})
	app["queue"] = map[string]any{"path": e.SpoolDir()} // delivering
	e.Load(app, nil)
	send := func(subject string) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		got := c.Send("a@remote.test", "b@example.test", "From: a@remote.test\r\nTo: b@example.test\r\nSubject: "+subject+
			"\r\nX-Spam: No\r\nX-Spam-Score: -100\r\nMessage-ID: <"+subject+"@remote.test>\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\nHello there.\r\n.\r\n")
		if !strings.HasPrefix(got, "250 ") {
			t.Fatalf("%s: %s", subject, got)
		}
	}
	bySubject := map[string]string{}
	for i, s := range []string{"lunch", "ADDHEADER", "REWRITESUBJECT"} {
		send(s)
		for _, m := range readMaildir(t, md, i+1) {
			h := header(m)
			for _, k := range []string{"lunch", "ADDHEADER", "REWRITESUBJECT"} {
				if strings.Contains(h, "<"+k+"@remote.test>") {
					bySubject[k] = h
				}
			}
		}
	}
	clean, spam, rewritten := bySubject["lunch"], bySubject["ADDHEADER"], bySubject["REWRITESUBJECT"]
	if !strings.Contains(clean, "\r\nX-Spamd-Result: ") || !strings.Contains(clean, "\r\nX-Rspamd-Queue-Id: ") {
		t.Errorf("clean message without rspamd's headers:\n%s", clean)
	}
	if strings.Contains(clean, "X-Spam: ") || strings.Contains(clean, "X-Spam-Score") {
		t.Errorf("clean message with an X-Spam field:\n%s", clean)
	}
	if !strings.Contains(spam, "\r\nX-Spam: Yes\r\n") || !strings.Contains(spam, "\r\nX-Spam-Score: ") ||
		strings.Contains(spam, "X-Spam: No") || strings.Contains(spam, "-100") {
		t.Errorf("add header message:\n%s", spam)
	}
	if strings.Contains(rewritten, "\r\nSubject: REWRITESUBJECT\r\n") || !strings.Contains(rewritten, "REWRITESUBJECT") {
		t.Errorf("subject not rewritten:\n%s", rewritten)
	}
}

// TestQuarantineExpiry: messages quarantined longer ago than
// quarantine_max_age go; younger ones stay.
func TestQuarantineExpiry(t *testing.T) {
	dir := t.TempDir()
	q, err := spool.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		d, _ := q.Create()
		d.WriteString("Subject: x\r\n\r\nx\r\n")
		env := &spool.Envelope{From: "a@b.test", Recipients: []*spool.Recipient{{Address: "c@d.test", Status: spool.StatusQueued}},
			Quarantine: &spool.Quarantine{Check: "clamav", At: time.Now()}}
		if err := d.Commit(env); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
		time.Sleep(5 * time.Millisecond) // ids carry their millisecond
	}
	// Ids begin with their millisecond: with now ten seconds after the
	// younger one and a max age between the two ages, only the older
	// goes.
	at := func(id string) time.Time {
		ms, err := strconv.ParseInt(id[:11], 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		return time.UnixMilli(ms)
	}
	t0, t1 := at(ids[0]), at(ids[1])
	now := t1.Add(10 * time.Second)
	expireQuarantine(q, 10*time.Second+t1.Sub(t0)/2, now, zap.NewNop())
	left, _ := q.IDs()
	if len(left) != 1 || left[0] != ids[1] {
		t.Fatalf("left %v of %v", left, ids)
	}
}

// TestChecksInSeries: checks after a check that changed the message see
// all of it: a changing milter, then rspamd (which always edits), then
// clamd, still refuse EICAR; a clean message arrives with every
// check's changes. (A rewrite once left its last bytes unflushed, and
// the checks after it read an empty message.)
func TestChecksInSeries(t *testing.T) {
	milter, rspamd, clamd := startChangingMilter(t), st.StartRspamd(t), st.StartClamd(t)
	md := filepath.Join(t.TempDir(), "maildir")
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"checks": []any{
			map[string]any{"check": "milter", "address": "tcp/" + milter, "timeout": "10s"},
			map[string]any{"check": "rspamd", "url": rspamd, "greylist": "accept"},
			map[string]any{"check": "clamav", "address": "tcp/" + clamd},
		},
		"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{"via": "maildir", "path": md}}},
	})
	e := st.NewEnv(t)
	app := st.App(map[string]any{"mx": srv})
	app["queue"] = map[string]any{"path": e.SpoolDir()}
	e.Load(app, nil)
	send := func(body string) string {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		return c.Send("a@remote.test", "b@example.test", "From: a@remote.test\r\nSubject: series\r\nMessage-ID: <s@remote.test>\r\n"+
			"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\n"+body+"\r\n.\r\n")
	}
	if got := send(st.EICAR); !strings.HasPrefix(got, "550 5.7.1 Virus found: Eicar-Test-Signature") {
		t.Fatalf("EICAR after two changing checks: %s", got)
	}
	if got := send("harmless"); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("clean: %s", got)
	}
	msgs := readMaildir(t, md, 2) // b@ and the milter's added@
	h := header(msgs[0])
	for _, want := range []string{"\r\nX-Scanned: by the test milter;", "\r\nSubject: [scanned] series\r\n", "\r\nX-Spamd-Result: "} {
		if !strings.Contains(h, want) {
			t.Errorf("delivered header lacks %q:\n%s", want, h)
		}
	}
	if !strings.HasSuffix(msgs[0], "\r\n\r\nharmless\r\n") {
		t.Errorf("body: %q", msgs[0])
	}
}
