package smtpapp

// Engines hostile or broken (issue 14), through the real server: a real
// in-process Caddy with the smtp app, real TCP, and engines that are
// small servers written here (the real clamd, rspamd and clamav-milter
// are in checks_test.go): a milter that never answers, one that closes
// after the negotiation or mid-message, one that answers garbage, an
// rspamd that answers HTTP 500 or a 10 MiB body, an rspamd that is not
// there, a clamd that reads the stream and never answers. Each gets the
// check's on_error outcome (451 4.7.1 or 250) with its "check error"
// line, nothing queued for a 451 and exactly one record for a 250; and
// none leaks a worker (goroutines back to their baseline, every engine
// connection closed), blocks other sessions, or loses an acknowledged
// message.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav"
	_ "github.com/caddy-smtp/caddy-smtp/checks/milter"
	_ "github.com/caddy-smtp/caddy-smtp/checks/rspamd"
)

// enginePeer is a hostile engine: a loopback listener whose connections
// are each served by serve, and counted while open, so that a test sees
// whether the gateway closed them.
type enginePeer struct {
	ln       net.Listener
	accepted atomic.Int64 // connections accepted
	open     atomic.Int64 // connections not yet closed
	idle     atomic.Int64 // HTTP connections waiting for a next request
	// acceptedCh gets a value for each connection accepted (up to its
	// buffer).
	acceptedCh chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startEnginePeer listens on loopback and serves each connection with serve,
// which must return once the gateway closes the connection; the
// connection is closed after it. Everything is closed when the test ends.
func startEnginePeer(t *testing.T, serve func(p *enginePeer, c net.Conn)) *enginePeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &enginePeer{ln: ln, acceptedCh: make(chan struct{}, 64), conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	loop := make(chan struct{})
	go func() {
		defer close(loop)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			p.open.Add(1)
			p.mu.Lock()
			p.conns[c] = struct{}{}
			p.mu.Unlock()
			select {
			case p.acceptedCh <- struct{}{}:
			default:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(p, c)
				c.Close()
				p.mu.Lock()
				delete(p.conns, c)
				p.mu.Unlock()
				p.open.Add(-1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-loop
		p.closeAll()
		wg.Wait()
	})
	return p
}

// addr is the peer's address, host:port.
func (p *enginePeer) addr() string { return p.ln.Addr().String() }

// closeAll closes the peer's open connections from its side.
func (p *enginePeer) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// engineDrain reads until the gateway closes: an engine that never answers.
func engineDrain(_ *enginePeer, c net.Conn) { io.Copy(io.Discard, c) }

// engineMilterPacket is one packet of the milter protocol: its length, its
// code, its data.
func engineMilterPacket(code byte, data ...uint32) []byte {
	b := make([]byte, 5, 5+4*len(data))
	binary.BigEndian.PutUint32(b, uint32(1+4*len(data)))
	b[4] = code
	for _, d := range data {
		b = binary.BigEndian.AppendUint32(b, d)
	}
	return b
}

// engineMilter is a milter that speaks the protocol (version 6, asking for
// no action and no protocol option: it answers continue to every
// command) until a packet with code at arrives; then it hands the
// connection to then, and closes it when then returns ('O' is the
// option negotiation, 'C' the connection, 'L' a header field, 'B' a body
// chunk).
func engineMilter(at byte, then func(w io.Writer, r io.Reader)) func(*enginePeer, net.Conn) {
	return func(_ *enginePeer, c net.Conn) {
		br := bufio.NewReader(c)
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n == 0 || n > 1<<20 {
				return
			}
			pkt := make([]byte, n)
			if _, err := io.ReadFull(br, pkt); err != nil {
				return
			}
			code := pkt[0]
			if code == at {
				then(c, br)
				return
			}
			switch code {
			case 'O':
				c.Write(engineMilterPacket('O', 6, 0, 0))
			case 'D', 'A': // macros, abort: no reply
			case 'Q':
				return
			default:
				c.Write(engineMilterPacket('c'))
			}
		}
	}
}

// engineGarbage is 512 bytes that are no protocol's, the same each run.
var engineGarbage = func() []byte {
	b := make([]byte, 512)
	rand.New(rand.NewSource(14)).Read(b)
	return b
}()

// engineRspamd is an HTTP/1.1 server with keep-alive, as rspamd's normal
// worker is, that reads each request whole and answers with respond.
func engineRspamd(respond func(w io.Writer) error) func(*enginePeer, net.Conn) {
	return func(p *enginePeer, c net.Conn) {
		br := bufio.NewReader(c)
		for first := true; ; first = false {
			if !first {
				p.idle.Add(1)
			}
			req, err := http.ReadRequest(br)
			if !first {
				p.idle.Add(-1)
			}
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if respond(c) != nil {
				return
			}
		}
	}
}

// engineHugeAnswer is the size of the answer of the rspamd that answers
// too much: ten times what the rspamd check reads.
const engineHugeAnswer = 10 << 20

// engineCase is one engine of TestChecksHostileEngines.
type engineCase struct {
	name string
	// serve is the engine (nil: nothing listens); check is the
	// server's check for it (nil: the module's check at the engine's
	// address).
	serve func(*enginePeer, net.Conn)
	check func(p *enginePeer) map[string]any
	// module is the check's name in its log line; wantErr matches the
	// line's error.
	module  string
	wantErr string
}

// engineMessage is the message sent: a header of several fields and a
// body, so that a milter gets header and body packets.
const engineMessage = "From: <a@remote.test>\r\nTo: <b@example.test>\r\nSubject: hostile engines\r\n" +
	"Message-ID: <hostile@remote.test>\r\n\r\nHello,\r\nthis is the body.\r\n.\r\n"

// checksServerLines returns the log entries with msg of the server name.
func checksServerLines(e *st.Env, msg, name string) []map[string]any {
	var out []map[string]any
	for _, l := range e.LogLines(msg) {
		if l["server"] == name {
			out = append(out, l)
		}
	}
	return out
}

// checksSettled waits until the named servers have no open connection,
// no peer has a connection open, the spool holds no draft, and the
// goroutine count is back to within hostileSlack of baseline.
func checksSettled(t *testing.T, e *st.Env, names []string, peers map[string]*enginePeer, baseline int) {
	t.Helper()
	app := hostileApp(t)
	var state string
	if st.Eventually(15*time.Second, func() bool {
		var b strings.Builder
		for _, n := range names {
			if a := app.Server(n).active.Load(); a != 0 {
				fmt.Fprintf(&b, "server %s: %d open connections; ", n, a)
			}
		}
		for n, p := range peers {
			if o := p.open.Load(); o != 0 {
				fmt.Fprintf(&b, "engine %s: %d connections still open; ", n, o)
			}
		}
		if d := hostileDrafts(e); len(d) > 0 {
			fmt.Fprintf(&b, "drafts %v; ", d)
		}
		if g := runtime.NumGoroutine(); g > baseline+hostileSlack {
			fmt.Fprintf(&b, "%d goroutines (baseline %d); ", g, baseline)
		}
		state = b.String()
		return state == ""
	}) {
		return
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Fatalf("not settled after 15s: %s\n%s", state, buf)
}

// TestChecksHostileEngines: each hostile or broken engine, behind a
// check with timeout 1s, under on_error tempfail and accept (a server
// for each), through the real server: the message gets 451 4.7.1 and
// nothing is queued (tempfail), or 250 and exactly its record is queued
// (accept), within the client's read deadline (10s); each message has
// one "check error" line with the check's name, on_error, and the
// engine's failure. When every session ended, the gateway closed every
// engine connection (the keep-alive connections of an rspamd that
// answered are idle, no request in flight), no draft is left, the
// goroutine count is back to its baseline, and every message answered
// 250 is in the spool. The rspamd that answers 10 MiB costs the process
// well under 10 MiB of allocations: the check reads at most 1 MiB.
func TestChecksHostileEngines(t *testing.T) {
	engines := []engineCase{{
		name:   "milter-silent", // accepts, reads, never writes
		serve:  engineDrain,
		module: "milter", wantErr: `no answer within 1s|deadline exceeded|i/o timeout`,
	}, {
		name:   "milter-close-after-negotiation",
		serve:  engineMilter('C', func(io.Writer, io.Reader) {}),
		module: "milter", wantErr: `^milter at tcp/127\.0\.0\.1:\d+: .*(EOF|reset by peer|broken pipe)`,
	}, {
		name:   "milter-close-mid-message", // after the header, at the first body chunk
		serve:  engineMilter('B', func(io.Writer, io.Reader) {}),
		module: "milter", wantErr: `^milter at tcp/127\.0\.0\.1:\d+: .*(EOF|reset by peer|broken pipe)`,
	}, {
		name: "milter-garbage", // garbage for the negotiation's answer
		serve: engineMilter('O', func(w io.Writer, r io.Reader) {
			w.Write(engineGarbage)
			io.Copy(io.Discard, r)
		}),
		module: "milter", wantErr: `^milter at tcp/127\.0\.0\.1:\d+: negotiation: `,
	}, {
		name: "milter-unknown-answer", // a well-framed answer of no known code, mid-header
		serve: engineMilter('L', func(w io.Writer, r io.Reader) {
			w.Write(engineMilterPacket('Z'))
			io.Copy(io.Discard, r)
		}),
		module: "milter", wantErr: `^milter at tcp/127\.0\.0\.1:\d+: .*unexpected code: Z`,
	}, {
		name: "rspamd-500",
		serve: engineRspamd(func(w io.Writer) error {
			_, err := io.WriteString(w, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\noops\n")
			return err
		}),
		module: "rspamd", wantErr: `^rspamd at http://127\.0\.0\.1:\d+/checkv2: HTTP 500: "oops\\n"$`,
	}, {
		name: "rspamd-10MiB", // valid JSON, ten times what is read
		serve: engineRspamd(func(w io.Writer) error {
			head := `{"action":"no action","x":"`
			tail := `"}`
			if _, err := fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", engineHugeAnswer, head); err != nil {
				return err
			}
			chunk := []byte(strings.Repeat("a", 64<<10))
			for left := engineHugeAnswer - len(head) - len(tail); left > 0; left -= len(chunk) {
				if left < len(chunk) {
					chunk = chunk[:left]
				}
				if _, err := w.Write(chunk); err != nil {
					return err
				}
			}
			_, err := io.WriteString(w, tail)
			return err
		}),
		module: "rspamd", wantErr: `^rspamd at http://127\.0\.0\.1:\d+/checkv2: answer over 1048576 bytes$`,
	}, {
		name: "rspamd-stopped", // nothing listening
		check: func(*enginePeer) map[string]any {
			return map[string]any{"check": "rspamd", "url": fmt.Sprintf("http://127.0.0.1:%d", st.FreePort(t))}
		},
		module: "rspamd", wantErr: `connection refused`,
	}, {
		name: "clamd-stalled", // reads INSTREAM, never answers
		serve: func(_ *enginePeer, c net.Conn) {
			cmd := make([]byte, len("zINSTREAM\x00"))
			if _, err := io.ReadFull(c, cmd); err != nil || string(cmd) != "zINSTREAM\x00" {
				return
			}
			io.Copy(io.Discard, c)
		},
		check: func(p *enginePeer) map[string]any {
			return map[string]any{"check": "clamav", "address": "tcp/" + p.addr()}
		},
		module: "clamav", wantErr: `no answer`,
	}}

	type engineServerCase struct {
		engine  engineCase
		onError string
		server  string
		addr    string
	}
	var cases []engineServerCase
	peers := map[string]*enginePeer{}
	servers := map[string]any{}
	var names []string
	for _, eng := range engines {
		var p *enginePeer
		if eng.serve != nil {
			p = startEnginePeer(t, eng.serve)
			peers[eng.name] = p
		}
		for _, onError := range []string{"tempfail", "accept"} {
			var check map[string]any
			if eng.check != nil {
				check = eng.check(p)
			} else {
				check = map[string]any{"check": "milter", "address": "tcp/" + p.addr()}
				if eng.module == "rspamd" {
					check = map[string]any{"check": "rspamd", "url": "http://" + p.addr()}
				}
			}
			check["timeout"] = "1s"
			check["on_error"] = onError
			name := eng.name + "-" + onError
			srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{check}})
			servers[name] = srv
			names = append(names, name)
			cases = append(cases, engineServerCase{eng, onError, name, addr})
		}
	}
	e := st.NewEnv(t)
	e.Load(st.App(servers), nil)
	baseline := hostileGoroutines()

	var acked []string // queue ids answered 250
	for _, tc := range cases {
		t.Run(tc.server, func(t *testing.T) {
			before := hostileRecords(e)
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			c := st.Dial(t, tc.addr)
			c.Expect("250", "EHLO client.test")
			got := c.Send("a@remote.test", "b@example.test", engineMessage)
			runtime.ReadMemStats(&ms1)
			c.Expect("221", "QUIT")
			c.Conn.Close()

			var id string
			if tc.onError == "tempfail" {
				if !strings.HasPrefix(got, "451 4.7.1 ") {
					t.Fatalf("got %q, want 451 4.7.1 (on_error tempfail)", got)
				}
				if n := hostileRecords(e); n != before {
					t.Fatalf("a message answered 451 was queued: %d records, %d before", n, before)
				}
			} else {
				var ok bool
				if id, ok = strings.CutPrefix(got, "250 2.0.0 OK: queued as "); !ok {
					t.Fatalf("got %q, want 250 (on_error accept)", got)
				}
				acked = append(acked, id)
				if n := hostileRecords(e); n != before+1 {
					t.Fatalf("%d records after a 250, %d before: want exactly one more", n, before)
				}
				e.SpoolRecord(id) // fails unless it is there
			}

			var lines []map[string]any
			st.Eventually(5*time.Second, func() bool {
				lines = checksServerLines(e, "check error", tc.server)
				return len(lines) > 0
			})
			if len(lines) != 1 {
				t.Fatalf("%d \"check error\" lines of server %s, want 1: %v", len(lines), tc.server, lines)
			}
			l := lines[0]
			errText, _ := l["error"].(string)
			if l["check"] != tc.engine.module || l["on_error"] != tc.onError ||
				!regexp.MustCompile(tc.engine.wantErr).MatchString(errText) {
				t.Fatalf("check error line: check %v, on_error %v, error %q; want %s, %s, error matching %s",
					l["check"], l["on_error"], errText, tc.engine.module, tc.onError, tc.engine.wantErr)
			}
			if id != "" && l["queue_id"] != id {
				t.Errorf("check error line of queue id %v, want %s", l["queue_id"], id)
			}
			if other := len(checksServerLines(e, "check accept", tc.server)); other != 0 {
				t.Errorf("%d \"check accept\" lines besides the error", other)
			}
			if tc.engine.name == "rspamd-10MiB" {
				// The whole process's allocations while the message was
				// sent and checked: reading the answer whole would be
				// over 10 MiB on its own.
				if alloc := ms1.TotalAlloc - ms0.TotalAlloc; alloc > 6<<20 {
					t.Errorf("%.1f MiB allocated for one message against a 10 MiB answer; the check reads at most 1 MiB",
						float64(alloc)/(1<<20))
				} else {
					t.Logf("%.1f MiB allocated for the message", float64(alloc)/(1<<20))
				}
			}
			t.Logf("%s (%v): %s", got, l["took"], errText)
		})
	}

	// The rspamd that answered 500 did so properly: the check keeps its
	// connections for the next message (HTTP keep-alive), idle. No
	// request is left in flight; then it closes them, as rspamd does
	// after its keep-alive timeout, and the gateway's side ends.
	if p := peers["rspamd-500"]; p != nil {
		if !st.Eventually(5*time.Second, func() bool { return p.open.Load() == p.idle.Load() }) {
			t.Errorf("rspamd-500: %d connections open, only %d idle: a request still in flight", p.open.Load(), p.idle.Load())
		}
		p.closeAll()
	}
	checksSettled(t, e, names, peers, baseline)
	for name, p := range peers {
		if p.accepted.Load() == 0 {
			t.Errorf("engine %s got no connection: its case proved nothing", name)
		}
	}

	// Nothing acknowledged is lost: every 250 is a record, and there is
	// no other.
	ids := e.SpoolIDs()
	have := map[string]bool{}
	for _, id := range ids {
		have[id] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Errorf("message %s was answered 250 and is not in the spool", id)
		}
	}
	if len(ids) != len(acked) {
		t.Errorf("%d records in the spool, %d messages answered 250", len(ids), len(acked))
	}
}

// TestChecksHostileNoBlocking: while a message waits on a milter that
// never answers (timeout 5s, max_concurrent 1), the app goes on: a
// server without checks takes a whole transaction (250, queued) before
// the stuck message is answered, twice (before and after a second
// message joins the wait); the stuck check's own server answers EHLO,
// MAIL, RCPT and DATA of another session; that second message, which
// must wait for the check's one slot, gets on_error's 451 4.7.1 as the
// first does, rather than hanging. Nothing answered 451 is queued, the
// 250s are; every engine connection is closed, the goroutine count is
// back to its baseline. (Which failure the second message's line shows
// is logged: the slot frees at the first message's timeout, just before
// the second's, so it is normally "no answer within 5s" after the few
// milliseconds left to it, rather than checks.ErrBusy.)
func TestChecksHostileNoBlocking(t *testing.T) {
	silent := startEnginePeer(t, engineDrain)
	stuck, stuckAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{
		map[string]any{"check": "milter", "address": "tcp/" + silent.addr(), "timeout": "5s", "max_concurrent": 1},
	}})
	plain, plainAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"stuck": stuck, "plain": plain}), nil)
	baseline := hostileGoroutines()

	// sendAsync starts a message to the stuck server and returns its
	// final reply's channel (the client's read deadline, 10s, bounds it).
	sendAsync := func(c *st.Client) <-chan string {
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("250", "RCPT TO:<b@example.test>")
		c.Expect("354", "DATA")
		if _, err := c.Conn.Write([]byte(engineMessage)); err != nil {
			t.Fatal(err)
		}
		done := make(chan string, 1)
		go func() {
			code, msg := c.Read()
			done <- fmt.Sprintf("%d %s", code, msg)
		}()
		return done
	}
	notYet := func(done <-chan string, what string) {
		t.Helper()
		select {
		case r := <-done:
			t.Fatalf("the stuck message was answered (%s) before %s: the check did not hold it, or %s waited for it", r, what, what)
		default:
		}
	}
	var acked []string
	plainSend := func() {
		t.Helper()
		c := st.Dial(t, plainAddr)
		c.Expect("250", "EHLO client.test")
		got := c.Send("a@remote.test", "b@example.test", engineMessage)
		id, ok := strings.CutPrefix(got, "250 2.0.0 OK: queued as ")
		if !ok {
			t.Fatalf("server without checks: %q", got)
		}
		acked = append(acked, id)
		c.Expect("221", "QUIT")
		c.Conn.Close()
	}

	a := st.Dial(t, stuckAddr)
	a.Expect("250", "EHLO client.test")
	aDone := sendAsync(a)
	select {
	case <-silent.acceptedCh: // the first message's check is at the milter
	case r := <-aDone:
		t.Fatalf("first message answered %q before its check reached the milter", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the check never connected to the milter")
	}

	plainSend()
	notYet(aDone, "the server without checks took a message")

	b := st.Dial(t, stuckAddr)
	b.Expect("250", "EHLO client.test")
	bDone := sendAsync(b)
	notYet(aDone, "the stuck server answered another session's EHLO, MAIL, RCPT and DATA")

	plainSend()
	notYet(aDone, "the server without checks took a second message")

	for i, done := range []<-chan string{aDone, bDone} {
		var got string
		select {
		case got = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("message %d to the stuck server: no reply within 20s", i+1)
		}
		if !strings.HasPrefix(got, "451 4.7.1 ") {
			t.Fatalf("message %d to the stuck server: %q, want on_error tempfail's 451 4.7.1", i+1, got)
		}
	}
	for _, c := range []*st.Client{a, b} {
		c.Expect("221", "QUIT")
		c.Conn.Close()
	}

	lines := checksServerLines(e, "check error", "stuck")
	if len(lines) != 2 {
		t.Fatalf("%d \"check error\" lines of the stuck server, want 2: %v", len(lines), lines)
	}
	for i, l := range lines {
		if l["check"] != "milter" || l["on_error"] != "tempfail" || l["error"] == "" {
			t.Errorf("check error line %d: %v", i+1, l)
		}
		t.Logf("stuck message %d: %v, after %v", i+1, l["error"], l["took"])
	}
	t.Logf("the milter got %d connections for the 2 stuck messages", silent.accepted.Load())
	if n := len(checksServerLines(e, "check error", "plain")) + len(checksServerLines(e, "check accept", "plain")); n != 0 {
		t.Errorf("%d check lines of the server without checks", n)
	}

	checksSettled(t, e, []string{"stuck", "plain"}, map[string]*enginePeer{"milter-silent": silent}, baseline)
	ids := e.SpoolIDs()
	if len(ids) != len(acked) {
		t.Errorf("%d records in the spool, %d messages answered 250 (%v)", len(ids), len(acked), acked)
	}
	for _, id := range acked {
		e.SpoolRecord(id)
	}
}

// TestChecksHostileRspamdUnload: the keep-alive connection an rspamd
// check keeps to rspamd (an rspamd that answered 500, properly, and
// keeps the connection open for the next request) is closed when the
// config that has the check is replaced (the check's Cleanup).
func TestChecksHostileRspamdUnload(t *testing.T) {
	p := startEnginePeer(t, engineRspamd(func(w io.Writer) error {
		_, err := io.WriteString(w, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n")
		return err
	}))
	srv, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "checks": []any{
		map[string]any{"check": "rspamd", "url": "http://" + p.addr(), "timeout": "1s", "on_error": "accept"},
	}})
	e := st.NewEnv(t)
	e.Load(st.App(map[string]any{"mx": srv}), nil)
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if got := c.Send("a@remote.test", "b@example.test", engineMessage); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
		t.Fatalf("rspamd answering 500, on_error accept: %q", got)
	}
	c.Expect("221", "QUIT")
	c.Conn.Close()
	if !st.Eventually(5*time.Second, func() bool { return p.open.Load() == 1 && p.idle.Load() == 1 }) {
		t.Fatalf("%d connections to rspamd, %d idle: want the one, kept idle", p.open.Load(), p.idle.Load())
	}

	plain, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	e.Load(st.App(map[string]any{"plain": plain}), nil) // the check's config is gone
	if !st.Eventually(3*time.Second, func() bool { return p.open.Load() == 0 }) {
		t.Fatalf("%d connection to rspamd still open 3s after the reload", p.open.Load())
	}
}
