package smtpapp

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/queue"

	"github.com/emersion/go-smtp"
)

// TestBounces: a permanent failure bounces at once with an RFC 3464
// report to the sender, through the same routes; the null sender and
// NOTIFY=NEVER get none; a message past max_age bounces with 5.4.7; a
// looping message bounces with 5.4.6.
func TestBounces(t *testing.T) {
	e := st.NewEnv(t)
	// Mail for reject.test is refused by its upstream; everything else
	// (the sender's domain, where bounces go) reaches the sink.
	sink := st.NewUpstream(t, st.UpstreamOpts{})
	rejecter := st.NewUpstream(t, st.UpstreamOpts{RcptErr: &smtp.SMTPError{
		Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}})
	deferrer := st.NewUpstream(t, st.UpstreamOpts{RcptErr: &smtp.SMTPError{
		Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted"}})
	route := func(domain, addr string) map[string]any {
		return map[string]any{"domains": []string{domain}, "deliver": map[string]any{
			"via": "relay", "addresses": []string{addr}, "tls": map[string]any{"level": "none"}}}
	}
	s, addr := st.ServerConfig(t, map[string]any{
		"hostname":       "gw.example.test",
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes": []any{
			route("reject.test", rejecter.Addr),
			route("slow.test", deferrer.Addr),
			route("*", sink.Addr),
		},
	})
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, map[string]any{
		"max_age": "2s", "min_retry_interval": "300ms", "max_retry_interval": "500ms"}), nil)

	t.Run("permanent", func(t *testing.T) {
		id := st.Submit(t, addr, "sender@example.test", "nobody@reject.test",
			"Subject: doomed\r\nMessage-ID: <doomed@example.test>\r\n\r\nsecret body text\r\n.\r\n")
		if l := e.DeliveryLine(t, id); l["status"] != "bounced" {
			t.Fatalf("delivery: %v", l)
		}
		dsn := sink.WaitBounce(t, "sender@example.test", "<doomed@example.test>")
		report := parseReport(t, dsn)
		if !strings.Contains(report.status, "Final-Recipient: rfc822; nobody@reject.test") ||
			!strings.Contains(report.status, "Action: failed") ||
			!strings.Contains(report.status, "Status: 5.1.1") ||
			!strings.Contains(report.status, "Diagnostic-Code: smtp; 550 5.1.1 no such user here") ||
			!strings.Contains(report.status, "Reporting-MTA: dns; gw.example.test") {
			t.Errorf("delivery-status part:\n%s", report.status)
		}
		if !strings.Contains(report.original, "Subject: doomed") || strings.Contains(report.original, "secret body text") {
			t.Errorf("original headers part (headers only by default):\n%s", report.original)
		}
		if report.from != "MAILER-DAEMON@gw.example.test" {
			t.Errorf("bounce From: %s", report.from)
		}
	})

	t.Run("null-sender-gets-no-bounce", func(t *testing.T) {
		id := st.Submit(t, addr, "", "nobody@reject.test", "Subject: bounce-of-bounce\r\n\r\nbody\r\n.\r\n")
		if l := e.DeliveryLine(t, id); l["status"] != "bounced" {
			t.Fatalf("delivery: %v", l)
		}
		waitLogWith(t, e, "no bounce sent", "queue_id", id)
	})

	t.Run("notify-never", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<sender@example.test>")
		c.Expect("250", "RCPT TO:<nobody@reject.test> NOTIFY=NEVER")
		c.Expect("354", "DATA")
		c.Conn.Write([]byte("Subject: never\r\n\r\nbody\r\n.\r\n"))
		code, msg := c.Read()
		if code != 250 {
			t.Fatal(msg)
		}
		id := strings.TrimPrefix(msg, "2.0.0 OK: queued as ")
		e.DeliveryLine(t, id)
		waitLogWith(t, e, "no bounce sent", "queue_id", id)
	})

	t.Run("expired", func(t *testing.T) {
		st.Submit(t, addr, "sender@example.test", "someone@slow.test",
			"Subject: slow\r\nMessage-ID: <slow@example.test>\r\n\r\nbody\r\n.\r\n")
		dsn := sink.WaitBounce(t, "sender@example.test", "<slow@example.test>")
		report := parseReport(t, dsn)
		if !strings.Contains(report.status, "Status: 5.4.7") || !strings.Contains(report.human, "greylisted") {
			t.Errorf("expiry report:\n%s\n%s", report.human, report.status)
		}
	})

	t.Run("loop", func(t *testing.T) {
		var hdr strings.Builder
		for i := 0; i < queue.MaxReceivedHeaders; i++ {
			hdr.WriteString("Received: from hop.test by hop.test; Fri, 27 Nov 2026 10:00:00 +0000\r\n")
		}
		// Ours makes it one more than the limit.
		id := st.Submit(t, addr, "sender@example.test", "user@elsewhere.test",
			hdr.String()+"Subject: loop\r\nMessage-ID: <loop@example.test>\r\n\r\nbody\r\n.\r\n")
		if l := e.DeliveryLine(t, id); l["status"] != "bounced" || l["dsn"] != "5.4.6" {
			t.Fatalf("delivery: %v", l)
		}
		report := parseReport(t, sink.WaitBounce(t, "sender@example.test", "<loop@example.test>"))
		if !strings.Contains(report.status, "Status: 5.4.6") {
			t.Errorf("loop report:\n%s", report.status)
		}
	})
}

func waitLogWith(t *testing.T, e *st.Env, msg, key, val string) {
	t.Helper()
	found := st.Eventually(10*time.Second, func() bool {
		for _, l := range e.LogLines(msg) {
			if l[key] == val {
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("no %q log line with %s=%s", msg, key, val)
	}
}

type report struct {
	from, human, status, original string
}

// parseReport parses a multipart/report DSN with the standard library.
func parseReport(t *testing.T, m st.UpstreamMessage) report {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if a, err := mail.ParseAddress(msg.Header.Get("From")); err == nil {
		r.from = a.Address
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("bounce Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var parts []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p)
		parts = append(parts, textproto.MIMEHeader(p.Header).Get("Content-Type"))
		switch p.Header.Get("Content-Type") {
		case "message/delivery-status":
			r.status = string(body)
		case "text/rfc822-headers", "message/rfc822":
			r.original = string(body)
		default:
			r.human = string(body)
		}
	}
	if len(parts) != 3 || r.status == "" {
		t.Fatalf("bounce parts: %v", parts)
	}
	return r
}
