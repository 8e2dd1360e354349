package rspamd_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/checks/rspamd"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func message(subject, body string) *checks.Message {
	data := "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (caddy-smtp) with ESMTP id X;\r\n\tTue, 1 Dec 2026 00:00:00 +0000\r\n" +
		"From: a@remote.test\r\nTo: b@example.test\r\nSubject: " + subject + "\r\nMessage-ID: <x@remote.test>\r\n" +
		"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\n" + body + "\r\n"
	return &checks.Message{QueueID: "X", ClientIP: netip.MustParseAddr("127.0.0.1"), Helo: "client.test",
		From: "a@remote.test", Rcpts: []string{"b@example.test"}, Size: int64(len(data)),
		Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
}

func provision(t *testing.T, r *rspamd.Rspamd) *rspamd.Rspamd {
	t.Helper()
	if err := r.Provision(st.CaddyContext(t)); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRspamd: against a real rspamd, GTUBE is refused with rspamd's
// SMTP message, a plain message goes on, and rspamd's soft reject and
// greylist actions are tempfails (greylist accept lets the latter on).
func TestRspamd(t *testing.T) {
	url := st.StartRspamd(t)
	r := provision(t, &rspamd.Rspamd{URL: url})
	ctx := context.Background()
	v, err := r.Check(ctx, message("offer", st.GTUBE))
	if err != nil || v.Action != checks.Reject || v.Reply != "Gtube pattern" || !strings.HasPrefix(v.Reason, "reject ") {
		t.Fatalf("GTUBE: %+v %v", v, err)
	}
	v, err = r.Check(ctx, message("lunch", "Lunch tomorrow at noon?"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("plain message: %+v %v", v, err)
	}
	v, err = r.Check(ctx, message("SOFTREJECT", "hello"))
	if err != nil || v.Action != checks.Tempfail || v.Reply != "Test soft reject" {
		t.Fatalf("soft reject: %+v %v", v, err)
	}
	v, err = r.Check(ctx, message("GREYLISTME", "hello"))
	if err != nil || v.Action != checks.Tempfail {
		t.Fatalf("greylist: %+v %v", v, err)
	}
	g := provision(t, &rspamd.Rspamd{URL: url, Greylist: "accept"})
	v, err = g.Check(ctx, message("GREYLISTME", "hello"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("greylist accept: %+v %v", v, err)
	}
	// A bounce (null sender) and odd envelope values are still checked.
	m := message("bounce", st.GTUBE)
	m.From, m.Auth = "", "user\x01name"
	v, err = r.Check(ctx, m)
	if err != nil || v.Action != checks.Reject {
		t.Fatalf("null sender: %+v %v", v, err)
	}
}

// TestRspamdHostile: a down rspamd, one that never answers, an HTTP
// error, garbage, an unknown action and an endless answer are all
// engine errors (so on_error decides), within the timeout and a bounded
// read.
func TestRspamdHostile(t *testing.T) {
	down := provision(t, &rspamd.Rspamd{URL: fmt.Sprintf("http://127.0.0.1:%d", st.FreePort(t))})
	if _, err := down.Check(context.Background(), message("x", "x")); err == nil {
		t.Fatal("rspamd down: no error")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stall/checkv2", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("/500/checkv2", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "oops", 500) })
	mux.HandleFunc("/garbage/checkv2", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>") })
	mux.HandleFunc("/unknown/checkv2", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"action":"explode"}`) })
	mux.HandleFunc("/endless/checkv2", func(w http.ResponseWriter, r *http.Request) {
		// Valid JSON, 4 MiB: refused for its size, not its syntax.
		io.WriteString(w, `{"action":"no action","x":"`)
		chunk := strings.Repeat("a", 64<<10)
		for i := 0; i < 64; i++ {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
		io.WriteString(w, `"}`)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for _, path := range []string{"stall", "500", "garbage", "unknown", "endless"} {
		r := provision(t, &rspamd.Rspamd{URL: "http://" + ln.Addr().String() + "/" + path + "/checkv2"})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		v, err := r.Check(ctx, message("x", "x"))
		cancel()
		if err == nil {
			t.Errorf("%s: no error, verdict %+v", path, v)
		} else if path == "endless" && !strings.Contains(err.Error(), "over") {
			t.Errorf("endless: %v, want an error about the size", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %v", path, d)
		}
	}
}

// TestRspamdQuarantine: rspamd's quarantine action (its DMARC module
// forces it for p=quarantine; rspamd 3.4's set_pre_result cannot be made
// to give it on demand, so an HTTP server answers as rspamd does) is a
// refusal by default and goes on with quarantine accept.
func TestRspamdQuarantine(t *testing.T) {
	url := answering(t, `{"action":"quarantine","score":3,"required_score":15,"symbols":{"DMARC_POLICY_QUARANTINE":{"score":1.5}},"messages":{"smtp_message":"Quarantined by DMARC"}}`)
	v, err := provision(t, &rspamd.Rspamd{URL: url}).Check(context.Background(), message("x", "x"))
	if err != nil || v.Action != checks.Reject || v.Reply != "Quarantined by DMARC" ||
		v.Reason != "quarantine 3.00/15.00 DMARC_POLICY_QUARANTINE(1.50)" {
		t.Fatalf("quarantine: %+v %v", v, err)
	}
	v, err = provision(t, &rspamd.Rspamd{URL: url, Quarantine: "accept"}).Check(context.Background(), message("x", "x"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("quarantine accept: %+v %v", v, err)
	}
	v, err = provision(t, &rspamd.Rspamd{URL: url, Quarantine: "quarantine"}).Check(context.Background(), message("x", "x"))
	if err != nil || v.Action != checks.Quarantine || v.Reply != "" || !strings.Contains(v.Reason, "DMARC_POLICY_QUARANTINE") {
		t.Fatalf("quarantine quarantine: %+v %v", v, err)
	}
}

// answering serves one fixed rspamd answer.
func answering(t *testing.T, answer string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestRspamdMilterBlockLenient: shapes of the milter block we do not
// know are skipped, as rspamd's proxy skips them, and never turn
// rspamd's verdict into an engine error (a reject stays a reject).
func TestRspamdMilterBlockLenient(t *testing.T) {
	for _, answer := range []string{
		`{"action":"reject","milter":{"add_headers":{"X-A":42,"X-B":["b1",{"value":"b2","index":0}]},"remove_headers":{"X-C":"all"}}}`,
	} {
		v, err := provision(t, &rspamd.Rspamd{URL: answering(t, answer)}).Check(context.Background(), message("x", "x"))
		if err != nil || v.Action != checks.Reject {
			t.Fatalf("%s: %+v %v", answer, v, err)
		}
	}
	v, err := provision(t, &rspamd.Rspamd{URL: answering(t,
		`{"action":"no action","milter":{"add_headers":{"X-A":42,"X-B":["b1",{"value":"b2","index":0}]},"remove_headers":{"X-C":"all"}}}`)}).
		Check(context.Background(), message("x", "x"))
	var got []string
	for _, e := range v.Edits {
		got = append(got, fmt.Sprintf("%d %s=%s@%d", e.Op, e.Name, e.Value, e.Index))
	}
	if err != nil || strings.Join(got, "|") != "2 X-Spam=@0|2 X-Spam-Score=@0|0 X-B=b1@0|1 X-B=b2@0" {
		t.Fatalf("%q %v", got, err)
	}
}

// TestRspamdMilterBlock: rspamd's milter block (add_headers in its
// three forms, remove_headers) becomes header edits, after the removal
// of a sender's X-Spam fields; ours are not added twice when rspamd
// sets the same field; a block that would inject text is an engine
// error, not a message change.
func TestRspamdMilterBlock(t *testing.T) {
	url := answering(t, `{"action":"add header","score":7,"required_score":15,"milter":{
		"add_headers":{"X-One":"1","X-Two":{"value":"2","order":0},"X-Three":[{"value":"3a"},{"value":"3b","order":-1}],"X-Spam":"yes, by rspamd"},
		"remove_headers":{"X-Old":0,"X-Last":-1}}}`)
	v, err := provision(t, &rspamd.Rspamd{URL: url}).Check(context.Background(), message("x", "x"))
	if err != nil || v.Action != checks.Accept {
		t.Fatalf("%+v %v", v, err)
	}
	var got []string
	for _, e := range v.Edits {
		got = append(got, fmt.Sprintf("%d %s=%s@%d", e.Op, e.Name, e.Value, e.Index))
	}
	want := []string{"2 X-Spam=@0", "2 X-Spam-Score=@0", "2 X-Last=@-1", "2 X-Old=@0",
		"0 X-One=1@0", "0 X-Spam=yes, by rspamd@0", "0 X-Three=3a@0", "0 X-Three=3b@0", "1 X-Two=2@0",
		"0 X-Spam-Score=7.00 / 15.00@0"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("edits\n got %q\nwant %q", got, want)
	}
	for _, bad := range []string{
		`{"action":"no action","milter":{"add_headers":{"X-A":"v\r\n\r\ninjected"}}}`,
		`{"action":"no action","milter":{"add_headers":{"Bad Name":"v"}}}`,
	} {
		c := provision(t, &rspamd.Rspamd{URL: answering(t, bad)})
		v, outs := checks.Run(context.Background(), []checks.Check{c}, []string{"rspamd"}, message("x", "x"),
			func(*checks.Changes) error { t.Errorf("%s: changes applied", bad); return nil })
		if v.Action != checks.Tempfail || outs[0].Err == nil {
			t.Errorf("%s: %+v %+v", bad, v, outs)
		}
	}
}

// TestRspamdConfig: bad URLs and choices are config errors.
func TestRspamdConfig(t *testing.T) {
	for _, r := range []*rspamd.Rspamd{
		{URL: "127.0.0.1:11333"},
		{URL: "ftp://127.0.0.1/"},
		{Greylist: "maybe"},
		{Password: "a\r\nb"},
		{SettingsID: "a\x01b"},
		{Quarantine: "hold"},
		{Options: checks.Options{OnError: "sometimes"}},
	} {
		if err := r.Provision(st.CaddyContext(t)); err == nil {
			t.Errorf("%+v: no error", r)
		}
	}
}
