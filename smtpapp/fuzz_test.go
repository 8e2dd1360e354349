package smtpapp

// FuzzSession: random command streams against an in-process server.
//
// One Caddy is loaded per process, before f.Fuzz (the fuzz engine runs
// the function in each worker process, so each worker has its own), with
// two servers on ephemeral loopback ports, both with small limits:
//
//	may      tls level may
//	encrypt  tls level encrypt (the STARTTLS gate in conn.go)
//
// Both accept mail for example.com only and relay for 10.0.0.0/8, which
// excludes the 127.0.0.1 the fuzzer connects from, and route * to a
// maildir with the queue on hold.
//
// For each input the fuzzer connects, reads the greeting, sends the
// input (as raw bytes, or split into CRLF lines), half-closes, and reads
// every reply until the server closes. See checkSession for what it
// asserts.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/caddy-smtp/caddy-smtp/address"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

const (
	// fuzzMaxInput is the largest input tried; larger ones are skipped.
	fuzzMaxInput = 8 << 10
	// fuzzSessionBound is how long a connection may take from the end
	// of the input to the server's close. The client half-closes, so no
	// server timeout (read 2s, data 3s) should ever be waited out; the
	// bound is read_timeout + data_timeout + slack for a loaded machine.
	fuzzSessionBound = 8 * time.Second
)

// fuzzReplyBound is the most reply bytes an input may draw: the
// greeting and closing lines, and 40 bytes per input byte. The largest
// legitimate amplification is EHLO: "EHLO x\n" (7 bytes) draws a
// 10-line reply of about 170 bytes. An input of up to 1.5 KiB may draw
// at most 64 KiB.
func fuzzReplyBound(inputLen int) int { return 4096 + 40*inputLen }

// fuzzEnv is the Caddy of one fuzzing process.
type fuzzEnv struct {
	app                  *App
	mayAddr, encryptAddr string
	logPath              string
	log                  *os.File // Caddy's log, read as it grows
	logRest              []byte   // an incomplete last log line
	runs                 int
	prev                 []byte // the bytes sent for the input before
	prevEncrypt          bool
}

// fuzzDirPrefix names the temp dirs of startFuzzEnv, followed by the
// process id. A fuzzing run that is interrupted, or a worker that is
// killed, leaves its dir behind (its cleanups never run); the next run
// removes it.
const fuzzDirPrefix = "caddy-smtp-fuzz-"

// removeStaleFuzzDirs removes the temp dirs of processes that are gone.
func removeStaleFuzzDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fuzzDirPrefix+"*"))
	for _, d := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), fuzzDirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil && errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
			os.RemoveAll(d)
		}
	}
}

// fuzzServerConfig is one server on an ephemeral port: no port is
// picked in advance, so that parallel fuzz workers (one process each)
// cannot pick the same one and share it through SO_REUSEPORT.
func fuzzServerConfig(listen, level, maildir string) map[string]any {
	return map[string]any{
		"listen":           []string{listen},
		"hostname":         "localhost",
		"tls":              map[string]any{"level": level},
		"accept_domains":   []string{"example.com"},
		"relay_networks":   []string{"10.0.0.0/8"},
		"max_message_size": 4096,
		"max_recipients":   3,
		"max_line_length":  1000,
		"read_timeout":     "2s",
		"data_timeout":     "3s",
		"routes": []any{map[string]any{
			"domains": []string{"*"},
			"deliver": map[string]any{"via": "maildir", "path": maildir},
		}},
	}
}

// startFuzzEnv loads one Caddy with the two servers, in the same shape
// as smtptest.Env.Config (which needs a *testing.T): storage, spool and
// log in a temp dir, the local CA kept out of the system trust store.
// The admin endpoint is off, so that parallel fuzz workers share no port.
func startFuzzEnv(f *testing.F) *fuzzEnv {
	f.Helper()
	removeStaleFuzzDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", fuzzDirPrefix, os.Getpid()))
	if err != nil {
		f.Fatal(err)
	}
	logFile := filepath.Join(dir, "caddy.log")
	maildir := filepath.Join(dir, "maildir")
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, "storage")},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level": "DEBUG", // everything go-smtp's ErrorLog says
			// Rolled at 1 MB, one old file kept: panicLogged follows the roll.
			"writer":  map[string]any{"output": "file", "filename": logFile, "roll_size_mb": 1, "roll_keep": 1, "roll_gzip": false},
			"encoder": map[string]any{"format": "json"},
		}}},
		"apps": map[string]any{
			"smtp": map[string]any{
				"queue": map[string]any{"path": filepath.Join(dir, "queue"), "hold": true},
				"servers": map[string]any{
					// Two spellings of 127.0.0.1:0, as the app refuses one
					// listen address for two servers (port 0 included).
					"may":     fuzzServerConfig("127.0.0.1:0", "may", maildir),
					"encrypt": fuzzServerConfig("tcp4/127.0.0.1:0", "encrypt", maildir),
				},
			},
			"pki": map[string]any{"certificate_authorities": map[string]any{
				"local": map[string]any{"install_trust": false},
			}},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		f.Fatal(err)
	}
	if err := caddy.Load(b, true); err != nil {
		os.RemoveAll(dir)
		f.Fatalf("loading config: %v", err)
	}
	e := &fuzzEnv{logPath: logFile}
	f.Cleanup(func() {
		if e.log != nil {
			e.log.Close()
		}
		if err := caddy.Stop(); err != nil {
			f.Logf("stopping caddy: %v", err)
		}
		// Certificate issuance may still write to storage for a moment.
		st.Eventually(5*time.Second, func() bool { return os.RemoveAll(dir) == nil })
	})
	appAny, err := caddy.ActiveContext().App("smtp")
	if err != nil {
		f.Fatal(err)
	}
	app := appAny.(*App)
	e.app = app
	addr := func(name string) string {
		s := app.Servers[name]
		if s == nil || len(s.listeners) != 1 {
			f.Fatalf("server %s: no listener", name)
		}
		return s.listeners[0].Addr().String()
	}
	e.mayAddr, e.encryptAddr = addr("may"), addr("encrypt")
	if e.log, err = os.Open(logFile); err != nil {
		f.Fatal(err)
	}
	e.panicLogged() // skip the start-up lines
	return e
}

// panicLogged reads what Caddy logged since the last call and returns
// the first "smtp engine panic" entry in it, or "": go-smtp recovers a
// panic in a command handler, answers 421 and logs it through its
// ErrorLog, which the server logs as "smtp engine panic" at error level
// with the trace in "detail" (except go-smtp's known BDAT race after a
// hang-up, logged at debug; see isBDATCloseRace and TestBDATHangUp).
func (e *fuzzEnv) panicLogged() string {
	data, _ := io.ReadAll(e.log)
	if now, err := os.Stat(e.logPath); err == nil {
		if cur, err := e.log.Stat(); err == nil && !os.SameFile(now, cur) {
			// Rolled: the old file got its last line before it was
			// renamed; read that, then go on with the new file.
			if nf, err := os.Open(e.logPath); err == nil {
				rest, _ := io.ReadAll(e.log)
				more, _ := io.ReadAll(nf)
				data = append(append(data, rest...), more...)
				e.log.Close()
				e.log = nf
			}
		}
	}
	data = append(e.logRest, data...)
	found := ""
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		line := data[:i]
		data = data[i+1:]
		if found != "" || !bytes.Contains(line, []byte("panic serving")) {
			continue
		}
		var entry struct{ Msg, Detail string }
		if json.Unmarshal(line, &entry) == nil && entry.Msg == "smtp engine panic" {
			found = entry.Detail
		}
	}
	e.logRest = bytes.Clone(data)
	return found
}

// emptySpool removes the messages accepted so far (the queue is on
// hold), so that a long fuzzing run does not fill the disk.
func (e *fuzzEnv) emptySpool(t *testing.T) {
	ids, err := e.app.spool.IDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := e.app.spool.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
}

// fuzzLines turns an input into CRLF lines: split at LF, any CRs that
// end a piece dropped, each piece ended with CRLF.
func fuzzLines(input []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(input, []byte("\n")) {
		b.Write(bytes.TrimRight(l, "\r"))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// fuzzSessionSeeds are the f.Add seeds (testdata/fuzz/FuzzSession has
// more): a whole transaction, relay attempts, and the encrypt gate.
var fuzzSessionSeeds = []struct {
	encrypt, raw bool
	input        string
}{
	{false, false, "EHLO client.test\nMAIL FROM:<a@remote.test>\nRCPT TO:<u@example.com>\nDATA\nSubject: t\n\nHello.\n.\nQUIT"},
	{false, false, "HELO client.test\nMAIL FROM:<>\nRCPT TO:<u@evil.test>\nRCPT TO:<@example.com:u@evil.test>\nRCPT TO:<u@EXAMPLE.COM.>\nRSET\nNOOP"},
	{true, false, "EHLO client.test\nMAIL FROM:<a@remote.test>\nRCPT TO:<u@example.com>\nDATA\nAUTH PLAIN AGFAYg==\nBDAT 4 LAST\nabcd\nQUIT"},
	{false, true, "EHLO client.test\r\nMAIL FROM:<a@remote.test> BODY=8BITMIME\r\nRCPT TO:<u@example.com> NOTIFY=FAILURE ORCPT=rfc822;u@example.com\r\nBDAT 5\r\nabc\r\nBDAT 0 LAST\r\n"},
	{false, true, "EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<a@remote.test>\r\n"},
}

// FuzzSession sends random command streams to the two servers (see the
// top of this file). checkSession asserts what each connection must do;
// after it, Caddy's log must hold no "smtp engine panic" entry: go-smtp
// recovers a panic in a command handler or in its BDAT goroutine, and
// only logs it. The BDAT goroutine may log after the connection closed,
// so when a chunk was taken ("250 2.0.0 Continue") the check waits up to
// 20 ms; any later entry is reported with the next input, naming the
// one before it too.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSessionSeeds {
		f.Add(s.encrypt, s.raw, []byte(s.input))
	}
	e := startFuzzEnv(f)
	f.Fuzz(func(t *testing.T, encrypt, raw bool, input []byte) {
		if len(input) > fuzzMaxInput {
			t.Skip("input too large")
		}
		addr := e.mayAddr
		if encrypt {
			addr = e.encryptAddr
		}
		send := input
		if !raw {
			send = fuzzLines(input)
		}
		replies := checkSession(t, addr, send, !raw)
		p := e.panicLogged()
		if p == "" && hasReply(replies, "250 2.0.0 Continue") {
			// A BDAT chunk went to go-smtp's goroutine that feeds
			// Session.Data, which may still run after the close.
			// A poll, tighter and shorter than st.Eventually's: a
			// panic is rare, and each fuzz input pays for the wait.
			for i := 0; i < 10 && p == ""; i++ {
				time.Sleep(2 * time.Millisecond)
				p = e.panicLogged()
			}
		}
		if p != "" {
			t.Fatalf("the server logged a panic:\n%s\n(seen after this input; if it does not reproduce alone, "+
				"it may be from the input before it: encrypt=%v, bytes sent %q)", p, e.prevEncrypt, e.prev)
		}
		e.prev, e.prevEncrypt = append(e.prev[:0], send...), encrypt
		if e.runs++; e.runs%256 == 0 {
			e.emptySpool(t)
		}
	})
}

// fuzzReply is one complete reply: its code and text lines.
type fuzzReply struct {
	code  string
	lines []string
}

// closingReplies are the replies after which the server hangs up by
// itself, before the client's input has all been read.
var closingReplies = []string{
	"500 5.5.1 Too many errors. Quiting now",
	"421 4.7.0 Too many commands refused before STARTTLS, closing connection",
	"500 5.4.0 Too long line, closing connection",
	"421 4.4.2 Timeout waiting for message data, closing connection",
	"221 2.0.0 Bye",
}

// checkSession runs one connection and asserts:
//
//   - the server greets with "220 localhost ESMTP Service Ready";
//   - the server ends the connection (EOF, or a reset when it hung up on
//     unread input) within fuzzSessionBound of the end of the input;
//   - the reply stream stays under fuzzReplyBound(len(send)) bytes;
//   - up to "220 2.0.0 Ready to start TLS" (after which the bytes are
//     the TLS handshake's), every line of the stream is an SMTP reply
//     line: three digits, the first 2 to 5, then space or dash; the
//     lines of a multi-line reply share their code; no line holds a
//     bare LF; and when the connection ended cleanly, the stream ends
//     with CRLF;
//   - no reply is go-smtp's "421 4.0.0 Internal server error", which it
//     sends after recovering from a panic in a command handler;
//   - relay control: every accepted RCPT ("250 2.0.0 I'll make sure <X>
//     gets this", go-smtp's reply, which echoes the address it parsed
//     and handed to Session.Rcpt) is for a recipient whose address.Domain is
//     exactly example.com: the client, 127.0.0.1, is outside
//     relay_networks and cannot authenticate;
//   - one reply per command line, for inputs in lines mode made only of
//     commands that take no data: when no line is longer than 900
//     bytes, and none starts (case-insensitively) with DATA, BDAT, QUIT
//     or STARTTLS, and the connection ended cleanly, then either the
//     number of replies after the greeting equals the number of lines,
//     or the last reply is one after which the server hangs up (too
//     many errors, too many refused commands before STARTTLS) and the
//     replies before it are at most the number of lines. (Lines after
//     DATA or BDAT are message data, STARTTLS ends the plaintext
//     stream, and a hang-up on unread input resets the connection, which
//     may lose replies in flight: those inputs get the other checks.)
func checkSession(t *testing.T, addr string, send []byte, lines bool) []fuzzReply {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(fuzzSessionBound))
	br := bufio.NewReader(conn)
	greeting, err := br.ReadString('\n')
	if err != nil || greeting != "220 localhost ESMTP Service Ready\r\n" {
		t.Fatalf("greeting: %q, %v", greeting, err)
	}

	// Read while writing: a server that answers a long pipelined input
	// must not block on a client that is not reading.
	bound := fuzzReplyBound(len(send))
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := io.ReadAll(io.LimitReader(br, int64(bound)+1))
		done <- result{data, err}
	}()
	conn.Write(send) // the server may hang up before it has read it all
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(fuzzSessionBound))
	res := <-done

	var netErr net.Error
	switch {
	case len(res.data) > bound:
		t.Fatalf("more than %d reply bytes for %d input bytes", bound, len(send))
	case errors.As(res.err, &netErr) && netErr.Timeout():
		t.Fatalf("connection not closed by the server within %v of the end of the input (%d reply bytes)", fuzzSessionBound, len(res.data))
	case res.err != nil && !errors.Is(res.err, syscall.ECONNRESET):
		t.Fatalf("reading replies: %v", res.err)
	}
	clean := res.err == nil // EOF: every reply sent has arrived

	replies := parseReplies(t, res.data, clean)
	for _, r := range replies {
		last := r.lines[len(r.lines)-1]
		if last == "421 4.0.0 Internal server error" {
			t.Fatalf("the server recovered from a panic (421 4.0.0 Internal server error)")
		}
		if rcpt, ok := strings.CutPrefix(last, "250 2.0.0 I'll make sure <"); ok {
			rcpt, ok = strings.CutSuffix(rcpt, "> gets this")
			if !ok {
				t.Fatalf("malformed RCPT reply %q", last)
			}
			if d := address.Domain(rcpt); d != "example.com" {
				t.Fatalf("relay control: RCPT for %q (domain %q) accepted from 127.0.0.1, outside relay_networks, unauthenticated", rcpt, d)
			}
		}
	}

	if !lines || !clean {
		return replies
	}
	cmds := bytes.Split(bytes.TrimSuffix(send, []byte("\r\n")), []byte("\r\n"))
	for _, c := range cmds {
		if len(c) > 900 {
			return replies
		}
		u := strings.ToUpper(string(c))
		for _, p := range []string{"DATA", "BDAT", "QUIT", "STARTTLS"} {
			if strings.HasPrefix(u, p) {
				return replies
			}
		}
	}
	n := len(replies)
	if n == len(cmds) {
		return replies
	}
	if n > 0 {
		last := replies[n-1].lines[len(replies[n-1].lines)-1]
		for _, c := range closingReplies {
			if last == c && n-1 <= len(cmds) {
				return replies
			}
		}
	}
	t.Fatalf("%d command lines drew %d replies (the last not one that closes the connection):\n%s",
		len(cmds), n, fmtReplies(replies))
	return nil
}

// hasReply reports whether one of the replies ends with the line.
func hasReply(replies []fuzzReply, line string) bool {
	for _, r := range replies {
		if r.lines[len(r.lines)-1] == line {
			return true
		}
	}
	return false
}

// parseReplies splits the reply stream after the greeting into replies,
// checking each line's form; it stops at the 220 that starts TLS.
func parseReplies(t *testing.T, data []byte, clean bool) []fuzzReply {
	var (
		replies []fuzzReply
		cur     *fuzzReply
	)
	for len(data) > 0 {
		i := bytes.Index(data, []byte("\r\n"))
		if i < 0 {
			if clean {
				t.Fatalf("reply stream ends without CRLF: %q", data)
			}
			break // cut short by a reset
		}
		line := string(data[:i])
		data = data[i+2:]
		if len(line) < 4 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) ||
			(line[3] != ' ' && line[3] != '-') {
			t.Fatalf("not an SMTP reply line: %q", line)
		}
		if strings.ContainsRune(line, '\n') {
			t.Fatalf("reply line with a bare LF: %q", line)
		}
		if cur != nil && cur.code != line[:3] {
			t.Fatalf("multi-line reply %s continued by %q", cur.code, line)
		}
		if cur == nil {
			replies = append(replies, fuzzReply{code: line[:3]})
			cur = &replies[len(replies)-1]
		}
		cur.lines = append(cur.lines, line)
		if line[3] == ' ' {
			cur = nil
			if line == "220 2.0.0 Ready to start TLS" {
				return replies // the rest is TLS records
			}
		}
	}
	if cur != nil && clean {
		t.Fatalf("reply stream ends inside a multi-line reply: %q", cur.lines)
	}
	if cur != nil {
		replies = replies[:len(replies)-1]
	}
	return replies
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func fmtReplies(rs []fuzzReply) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%q\n", r.lines)
	}
	return b.String()
}
