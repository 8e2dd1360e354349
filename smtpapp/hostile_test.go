package smtpapp

// Hostile input (GitHub issue 6, item 3): slow clients, connection
// floods, oversized messages and lines, a header that never ends, and
// invalid or hostile addresses, each with the exact reply the server
// gives. The invariant everywhere: nothing outside accept_domains is
// accepted from a client outside relay_networks.
//
// How "memory bounded" is checked: not with runtime.ReadMemStats (the
// heap of a test process that also runs Caddy is too noisy to say
// anything about one connection). Instead, what a connection can hold
// on to is counted after it ends: the server's open-connection counter
// and per-address table are back to zero, the process's goroutine count
// is back to its baseline (every session holds one goroutine and its
// buffers; a leaked session shows up as a leaked goroutine), and the
// spool holds no draft file (the bytes an oversized or refused message
// streamed are not kept anywhere). Over-long lines are cut off at
// max_line_length: the server stops reading and closes, so a client
// that keeps writing gets a write error after at most the socket
// buffers.
//
// A few inputs show gaps in go-smtp v0.25.1 that no hook lets us close
// from outside it; their cases are written out with what the server
// should answer, and skipped with a message that says what it answers
// instead and why it cannot be fixed here (the gap* constants).

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// Gaps in go-smtp v0.25.1 found by these tests; each skip quotes one.
// Each is decided inside go-smtp where no hook of ours reaches (its
// argument parsers, its DATA reader, its command reader), and each
// message says why.
const (
	gapPostmaster = "go-smtp gap: RCPT TO:<postmaster> gets 501 5.5.2 Was expecting RCPT arg syntax of TO:<address>; " +
		"RFC 5321 4.5.1 says it MUST be accepted. go-smtp's path parser requires a domain and answers itself " +
		"before Session.Rcpt is called, so this cannot be fixed outside go-smtp"
	gapSizeExact = "go-smtp gap: a DATA message of exactly max_message_size bytes (1000 of 1000) gets 552 5.3.4 Maximum message size exceeded, " +
		"also after MAIL FROM ... SIZE=1000 was accepted; want 250 (BDAT of exactly 1000 is accepted, see actual/1000-bdat). " +
		"go-smtp's DATA reader fails the read after the last allowed byte before it looks for the end-of-data line. " +
		"Giving go-smtp a limit one byte higher and enforcing the exact one ourselves would make EHLO advertise SIZE 1001; " +
		"after STARTTLS our connection wrapper sees only TLS records and cannot correct it, so this is not fixed outside go-smtp"
	gapSizeHuge = "go-smtp gap: MAIL FROM:<a@remote.test> SIZE=99999999999 (any SIZE over 4294967295) gets 501 5.5.4 Unable to parse SIZE as an integer; " +
		"RFC 1870 allows up to 20 digits, so want 552 5.3.4 Max message size exceeded. go-smtp parses SIZE as 32 bits and answers itself " +
		"before Session.Mail is called, so this cannot be fixed outside go-smtp (the message is refused either way)"
)

// hostileApp is the running smtp app.
func hostileApp(t testing.TB) *App {
	t.Helper()
	a, err := caddy.ActiveContext().App("smtp")
	if err != nil {
		t.Fatal(err)
	}
	return a.(*App)
}

// hostileDialFrom connects from a loopback source address ("" for the
// default) and reads the first reply; it does not require a 220.
func hostileDialFrom(t testing.TB, addr, local string) (*st.Client, int, string) {
	t.Helper()
	c, code, msg, err := hostileTryDialFrom(t, addr, local)
	if err != nil {
		t.Fatal(err)
	}
	return c, code, msg
}

// hostileTryDialFrom is hostileDialFrom for other goroutines than the
// test's: it returns the dial error.
func hostileTryDialFrom(t testing.TB, addr, local string) (*st.Client, int, string, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, 0, "", fmt.Errorf("dial %s from %s: %w", addr, local, err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &st.Client{T: t, Conn: nc, Text: st.NewText(nc)}
	code, msg := c.Read()
	return c, code, msg, nil
}

// hostileReply sends one raw line (no format verbs: addresses hold %)
// and returns the reply as "code text".
func hostileReply(c *st.Client, line string) string {
	if _, err := c.Conn.Write([]byte(line + "\r\n")); err != nil {
		return "0 " + err.Error()
	}
	code, msg := c.Read()
	return fmt.Sprintf("%d %s", code, msg)
}

// hostileRead reads one reply as "code text".
func hostileRead(c *st.Client) string {
	code, msg := c.Read()
	return fmt.Sprintf("%d %s", code, msg)
}

// hostileClosed reads until the server closes; it fails if a reply
// comes instead, or nothing happens within d.
func hostileClosed(t testing.TB, c *st.Client, d time.Duration) {
	t.Helper()
	if n := c.Text.R.Buffered(); n > 0 {
		b, _ := c.Text.R.Peek(n)
		t.Fatalf("server sent %q, want the connection closed", b)
	}
	c.Conn.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c.Conn)
	if len(b) > 0 {
		t.Fatalf("server sent %q, want the connection closed", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", d)
	}
}

// hostileGoroutines samples the goroutine count until it is stable
// and returns it: the baseline a test compares with after its
// connections ended.
func hostileGoroutines() int {
	n := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		// A sleep between samples: "stable" is the same count 25 ms apart.
		time.Sleep(25 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// hostileSlack is how many goroutines above the baseline are not
// counted as a leak (Caddy's own background work comes and goes); each
// test that uses it opened many more connections than that.
const hostileSlack = 5

// hostileSettled waits until the server has no open connection, its
// per-address table is empty, the goroutine count is back to the
// baseline, and the spool holds no draft.
func hostileSettled(t testing.TB, e *st.Env, srv *Server, baseline int) {
	t.Helper()
	var (
		active   int64
		perIP, g int
		drafts   []string
	)
	settled := st.Eventually(15*time.Second, func() bool {
		perIP, _ = srv.slots.Clients()
		active = srv.active.Load()
		g = runtime.NumGoroutine()
		drafts = hostileDrafts(e)
		return active == 0 && perIP == 0 && g <= baseline+hostileSlack && len(drafts) == 0
	})
	if !settled {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("not settled after 15s: %d open connections, %d client addresses, %d goroutines (baseline %d), drafts %v\n%s",
			active, perIP, g, baseline, drafts, buf)
	}
}

// hostileDrafts lists draft files (not yet committed messages) in the
// spool.
func hostileDrafts(e *st.Env) []string {
	ents, _ := os.ReadDir(e.SpoolDir())
	var out []string
	for _, en := range ents {
		if strings.HasPrefix(en.Name(), ".tmp-") { // spool's draft prefix
			out = append(out, en.Name())
		}
	}
	return out
}

// hostileRecords counts committed envelopes in the spool.
func hostileRecords(e *st.Env) int {
	return len(e.SpoolIDs())
}

// TestHostileAddresses: each hostile or invalid address, as sender or
// recipient, from a client outside relay_networks, and the exact reply.
func TestHostileAddresses(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":            map[string]any{"level": "none"},
		"accept_domains": []string{"example.test", "*.wild.test"},
		"relay_networks": []string{"127.0.0.2/32"}, // the client is 127.0.0.1
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)

	const (
		relayDenied = "554 5.7.1 Relay access denied"
		badRcpt     = "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"
		badMail     = "501 5.5.2 Was expecting MAIL arg syntax of FROM:<address>"
		needsUTF8   = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
	)
	ok := func(a string) string { return "250 2.0.0 I'll make sure <" + a + "> gets this" }
	from := func(a string) string { return "250 2.0.0 Roger, accepting mail from <" + a + ">" }

	cases := []struct {
		name  string
		mail  string // MAIL FROM argument
		rcpt  string // RCPT TO argument; "" tests MAIL only
		want  string // the exact reply to the last command; for a go-smtp gap, the start of the right one
		local bool   // the recipient's real domain is an accepted one
		gap   string // why the case is skipped (a gap* constant), or ""
	}{
		// Source routes (RFC 5321 4.1.1.3, appendix C): the route is
		// dropped, the mailbox decides.
		{"source-route/remote", "<a@remote.test>", "<@a.test,@b.test:u@evil.test>", relayDenied, false, ""},
		{"source-route/local", "<a@remote.test>", "<@a.test,@b.test:u@example.test>", ok("u@example.test"), true, ""},
		{"source-route/via-local", "<a@remote.test>", "<@example.test:u@evil.test>", relayDenied, false, ""},
		{"source-route/malformed", "<a@remote.test>", "<@example.test u@evil.test>", badRcpt, false, ""},
		// The % hack and bang paths: the local part is opaque (RFC 5321
		// 2.3.11); only the domain counts.
		{"percent/local", "<a@remote.test>", "<u%evil.test@example.test>", relayDenied, false, ""}, // sender-specified routing: refused from untrusted clients
		{"percent/remote", "<a@remote.test>", "<u%example.test@evil.test>", relayDenied, false, ""},
		{"bang/local", "<a@remote.test>", "<evil.test!u@example.test>", relayDenied, false, ""},
		{"bang/remote", "<a@remote.test>", "<example.test!u@evil.test>", relayDenied, false, ""},
		{"bang/no-domain", "<a@remote.test>", "<example.test!u>", badRcpt, false, ""},
		// Quoted local parts. go-smtp hands the mailbox over without the
		// quotes and its client sends it on so: a local part that needs
		// them is refused (address.go), one that does not is accepted
		// unquoted (TestHostileAddressesOnTheWire).
		{"quoted/at-remote", "<a@remote.test>", `<"u@example.test"@evil.test>`, "501 5.1.3 Bad recipient address syntax", false, ""},
		{"quoted/plain", "<a@remote.test>", `<"john.smith"@example.test>`, ok("john.smith@example.test"), true, ""},
		{"quoted/unterminated", "<a@remote.test>", `<"u@example.test>`, badRcpt, false, ""},
		{"quoted/at-local", "<a@remote.test>", `<"u@evil.test"@example.test>`, "501 5.1.3 Bad recipient address syntax", false, ""},
		{"quoted/space-comma", "<a@remote.test>", `<"a b,c"@example.test>`, "501 5.1.3 Bad recipient address syntax", false, ""},
		{"quoted/injection", "<a@remote.test>", `<"u@evil.test> NOTIFY=SUCCESS ORCPT=rfc822;x"@example.test>`,
			"501 5.1.3 Bad recipient address syntax", false, ""},
		// Two @ (an unquoted @ in the local part is not RFC 5321
		// syntax, and a next hop could route by the first one).
		{"double-at/remote-last", "<a@remote.test>", "<u@example.test@evil.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"double-at/local-last", "<a@remote.test>", "<u@evil.test@example.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		// IP literals are never accepted domains.
		{"ip-literal/v4-loopback", "<a@remote.test>", "<u@[127.0.0.1]>", relayDenied, false, ""},
		{"ip-literal/v4", "<a@remote.test>", "<u@[192.0.2.1]>", relayDenied, false, ""},
		{"ip-literal/v6", "<a@remote.test>", "<u@[IPv6:::1]>", relayDenied, false, ""},
		// Not an address literal (RFC 5321 4.1.3: IPv4, IPv6: or tag:).
		{"ip-literal/bracketed-name", "<a@remote.test>", "<u@[example.test]>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"ip-literal/control-byte", "<a@remote.test>", "<u@[192.0.2.1\x1b]>", "501 5.1.3 Bad recipient address syntax", false, ""},
		// Trailing dots: one is the absolute form of the name.
		{"trailing-dot/local", "<a@remote.test>", "<u@example.test.>", ok("u@example.test."), true, ""},
		{"trailing-dot/remote", "<a@remote.test>", "<u@evil.test.>", relayDenied, false, ""},
		{"trailing-dot/three", "<a@remote.test>", "<u@example.test...>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"trailing-dot/two", "<a@remote.test>", "<u@example.test..>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"leading-dot", "<a@remote.test>", "<u@.example.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		// Look-alike domains.
		{"lookalike/suffix", "<a@remote.test>", "<u@example.test.evil.test>", relayDenied, false, ""},
		{"lookalike/prefix", "<a@remote.test>", "<u@notexample.test>", relayDenied, false, ""},
		{"lookalike/subdomain", "<a@remote.test>", "<u@sub.example.test>", relayDenied, false, ""},
		{"case", "<a@remote.test>", "<u@EXAMPLE.TEST>", ok("u@EXAMPLE.TEST"), true, ""},
		{"wildcard/sub", "<a@remote.test>", "<u@a.b.wild.test>", ok("u@a.b.wild.test"), true, ""},
		{"wildcard/apex", "<a@remote.test>", "<u@wild.test>", relayDenied, false, ""},
		{"wildcard/glued", "<a@remote.test>", "<u@evilwild.test>", relayDenied, false, ""},
		{"wildcard/slash", "<a@remote.test>", "<u@evil.test/.wild.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"vertical-tab", "<a@remote.test>", "<u@example.test\v>", "501 5.1.3 Bad recipient address syntax", false, ""},
		// 8-bit without SMTPUTF8, and with it.
		{"8bit/local-part", "<a@remote.test>", "<jös@example.test>", needsUTF8, true, ""},
		{"8bit/domain", "<a@remote.test>", "<u@exämple.test>", needsUTF8, false, ""},
		{"8bit/not-utf8", "<a@remote.test>", "<u\xff@example.test>", "553 5.6.7 Address is not valid UTF-8", true, ""},
		{"8bit/smtputf8-local", "<a@remote.test> SMTPUTF8", "<jös@example.test>", ok("jös@example.test"), true, ""},
		{"8bit/smtputf8-remote", "<a@remote.test> SMTPUTF8", "<u@exämple.test>", relayDenied, false, ""},
		{"8bit/smtputf8-not-utf8", "<a@remote.test> SMTPUTF8", "<u\xff@example.test>", "553 5.6.7 Address is not valid UTF-8", true, ""},
		// NUL bytes.
		{"nul/domain-end", "<a@remote.test>", "<u@example.test\x00>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"nul/domain-middle", "<a@remote.test>", "<u@evil.test\x00example.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"nul/local-part", "<a@remote.test>", "<u\x00@example.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		{"nul/wildcard", "<a@remote.test>", "<u@evil.test\x00.wild.test>", "501 5.1.3 Bad recipient address syntax", false, ""},
		// Plain syntax errors.
		{"empty", "<a@remote.test>", "<>", badRcpt, false, ""},
		{"no-domain", "<a@remote.test>", "<u@>", badRcpt, false, ""},
		{"no-local-part", "<a@remote.test>", "<@example.test>", badRcpt, false, ""},
		{"space-before", "<a@remote.test>", "< u@example.test>", badRcpt, false, ""},
		{"space-after", "<a@remote.test>", "<u@example.test >", badRcpt, false, ""},
		{"no-close", "<a@remote.test>", "<u@example.test", badRcpt, false, ""},
		{"no-brackets", "<a@remote.test>", "u@example.test", ok("u@example.test"), true, ""},
		{"unknown-parameter", "<a@remote.test>", "<u@example.test> FOO=bar", "500 5.5.4 Unknown RCPT TO argument", true, ""},
		{"postmaster", "<a@remote.test>", "<postmaster>", "250", true, gapPostmaster},
		// Senders are not relay-controlled; their syntax is.
		{"mail/source-route", "<@a.test,@b.test:u@c.test>", "", from("u@c.test"), false, ""},
		{"mail/null", "<>", "", from(""), false, ""},
		{"mail/no-domain", "<u>", "", badMail, false, ""},
		{"mail/8bit", "<jös@remote.test>", "", needsUTF8, false, ""},
		{"mail/8bit-smtputf8", "<jös@remote.test> SMTPUTF8", "", from("jös@remote.test"), false, ""},
		{"mail/quoted", `<"a b"@remote.test>`, "", "501 5.1.7 Bad sender address syntax", false, ""},
		{"mail/nul", "<u\x00@remote.test>", "", "501 5.1.7 Bad sender address syntax", false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.gap != "" {
				t.Skip(tc.gap)
			}
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			got := hostileReply(c, "MAIL FROM:"+tc.mail)
			if tc.rcpt != "" {
				if !strings.HasPrefix(got, "250 ") {
					t.Fatalf("MAIL FROM:%s: %q", tc.mail, got)
				}
				got = hostileReply(c, "RCPT TO:"+tc.rcpt)
				// The invariant, by the case's own account of where the
				// address really goes.
				if strings.HasPrefix(got, "2") && !tc.local {
					t.Errorf("RELAY: RCPT TO:%q from outside relay_networks accepted: %q", tc.rcpt, got)
				}
			}
			if got != tc.want && (tc.gap == "" || !strings.HasPrefix(got, tc.want)) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			// The session is in sync afterwards.
			c.Expect("250", "NOOP")
		})
	}
}

// wireSink is a next hop that records the command lines it receives,
// byte for byte, by transaction.
type wireSink struct {
	addr string
	mu   sync.Mutex
	txns map[string][]string // MAIL FROM line -> RCPT lines
}

func newWireSink(t *testing.T) *wireSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	w := &wireSink{addr: ln.Addr().String(), txns: make(map[string][]string)}
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go w.serve(nc)
		}
	}()
	return w
}

func (w *wireSink) serve(nc net.Conn) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(nc)
	io.WriteString(nc, "220 sink.test ESMTP\r\n")
	var mail string
	var rcpts []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\r\n")
		verb := strings.ToUpper(line[:min(4, len(line))])
		switch verb {
		case "EHLO", "HELO":
			io.WriteString(nc, "250 sink.test\r\n")
		case "MAIL":
			mail, rcpts = line, nil
			io.WriteString(nc, "250 2.1.0 ok\r\n")
		case "RCPT":
			rcpts = append(rcpts, line)
			io.WriteString(nc, "250 2.1.5 ok\r\n")
		case "DATA":
			io.WriteString(nc, "354 go ahead\r\n")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			w.mu.Lock()
			w.txns[mail] = rcpts
			w.mu.Unlock()
			io.WriteString(nc, "250 2.0.0 ok\r\n")
		case "QUIT":
			io.WriteString(nc, "221 2.0.0 bye\r\n")
			return
		default:
			io.WriteString(nc, "250 2.0.0 ok\r\n")
		}
	}
}

func (w *wireSink) wait(t *testing.T, mail string) []string {
	t.Helper()
	var r []string
	got := st.Eventually(15*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		var ok bool
		r, ok = w.txns[mail]
		return ok
	})
	if !got {
		t.Fatalf("next hop got no transaction %q", mail)
	}
	return r
}

// TestHostileAddressesOnTheWire: what an accepted hostile address
// becomes at the next hop. Relay control judged the address the client
// sent; the next hop must be asked for the same mailbox, or the gateway
// relays where it refused to (a next hop that trusts the gateway, as an
// internal server trusts its edge, does what it is asked). An address
// that could not be sent on as it was judged is refused at RCPT; the
// transaction then goes on with a plain recipient, and the next hop is
// asked for that one only.
func TestHostileAddressesOnTheWire(t *testing.T) {
	e := st.NewEnv(t)
	sink := newWireSink(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":    map[string]any{"level": "none"},
		"routes": st.RelayRoute(sink.addr, map[string]any{"level": "none"}),
	})
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, nil), nil)
	const badSyntax = "501 5.1.3 Bad recipient address syntax"

	cases := []struct {
		name, rcpt string
		refused    string // the exact reply to the RCPT; "" when it is accepted
		wire       string // the mailbox the next hop is asked for, when accepted
	}{
		{"plain", "<u@example.test>", "", "u@example.test"},
		{"source-route", "<@a.test,@b.test:u@example.test>", "", "u@example.test"},

		{"case", "<u@EXAMPLE.TEST>", "", "u@EXAMPLE.TEST"},
		{"quoted/needless", `<"john.smith"@example.test>`, "", "john.smith@example.test"},
		// go-smtp would hand these over unquoted, and its client send
		// them on so: "john smith"@example.test as john smith@..., the
		// others as a recipient at evil.test.
		{"quoted/space", `<"john smith"@example.test>`, badSyntax, ""},
		{"quoted/at", `<"u@evil.test"@example.test>`, badSyntax, ""},
		{"quoted/injection", `<"u@evil.test> NOTIFY=SUCCESS ORCPT=rfc822;x"@example.test>`, badSyntax, ""},
		{"double-at", "<u@evil.test@example.test>", badSyntax, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sender := fmt.Sprintf("case%02d@remote.test", i)
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			c.Expect("250", "MAIL FROM:<%s>", sender)
			got := hostileReply(c, "RCPT TO:"+tc.rcpt)
			want := []string{"RCPT TO:<" + tc.wire + ">"}
			if tc.refused == "" {
				if !strings.HasPrefix(got, "250 ") {
					t.Fatalf("RCPT TO:%s: %q", tc.rcpt, got)
				}
			} else {
				if got != tc.refused {
					t.Fatalf("RCPT TO:%s: %q, want %q", tc.rcpt, got, tc.refused)
				}
				c.Expect("250", "RCPT TO:<plain@example.test>")
				want = []string{"RCPT TO:<plain@example.test>"}
			}
			c.Expect("354", "DATA")
			c.Conn.Write([]byte(st.Message))
			if code, msg := c.Read(); code != 250 {
				t.Fatalf("DATA: %d %s", code, msg)
			}
			rcpts := sink.wait(t, "MAIL FROM:<"+sender+">")
			if fmt.Sprint(rcpts) != fmt.Sprint(want) {
				t.Fatalf("next hop got %q, want %q", rcpts, want)
			}
		})
	}
}

// TestHostileQuotedLocalPartRelay: end to end with a go-smtp next hop,
// which would read a quoted local part sent on unquoted as another
// recipient. Such an address is refused at RCPT, the transaction goes
// on with its other recipient, and the next hop is asked for nothing
// outside accept_domains.
func TestHostileQuotedLocalPartRelay(t *testing.T) {
	e := st.NewEnv(t)
	up := st.NewUpstream(t, st.UpstreamOpts{})
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":    map[string]any{"level": "none"},
		"routes": st.RelayRoute(up.Addr, map[string]any{"level": "none"}),
	})
	e.Load(e.DeliveringApp(map[string]any{"gw": s}, nil), nil)
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<u@evil.test>")
	for _, rcpt := range []string{
		`<"u@evil.test> NOTIFY=SUCCESS ORCPT=rfc822;x"@example.test>`,
		`<"u@evil.test"@example.test>`,
	} {
		if got := hostileReply(c, "RCPT TO:"+rcpt); got != "501 5.1.3 Bad recipient address syntax" {
			t.Fatalf("RCPT TO:%s: %q, want 501 5.1.3 Bad recipient address syntax", rcpt, got)
		}
	}
	c.Expect("250", "RCPT TO:<u@example.test>")
	c.Expect("354", "DATA")
	c.Conn.Write([]byte(st.Message))
	if code, msg := c.Read(); code != 250 {
		t.Fatalf("DATA: %d %s", code, msg)
	}
	msgs := up.WaitMessages(t, 1, 15*time.Second)
	if len(msgs) != 1 || fmt.Sprint(msgs[0].To) != "[u@example.test]" {
		for _, m := range msgs {
			t.Errorf("the next hop was asked for %q", m.To)
		}
		t.Fatalf("want one message, to [u@example.test]")
	}
}

// TestHostileLineLength: command lines up to max_line_length bytes
// (CRLF included) are read, longer ones end the connection, and a line
// that never ends is not buffered past the limit.
func TestHostileLineLength(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_line_length": 600})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	srv := hostileApp(t).Server("mx")
	baseline := hostileGoroutines()
	const tooLong = "500 5.4.0 Too long line, closing connection"

	// After the first line (go-smtp lets the very first line of a
	// connection have one byte more).
	t.Run("command/600", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		if got := hostileReply(c, "NOOP "+strings.Repeat("x", 600-7)); got != "250 2.0.0 I have successfully done nothing" {
			t.Fatalf("600-byte line: %q", got)
		}
	})
	t.Run("command/601", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		if got := hostileReply(c, "NOOP "+strings.Repeat("x", 601-7)); got != tooLong {
			t.Fatalf("601-byte line: %q, want %q", got, tooLong)
		}
		hostileClosed(t, c, 5*time.Second)
	})
	t.Run("rcpt/too-long", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		if got := hostileReply(c, "RCPT TO:<"+strings.Repeat("u", 700)+"@example.test>"); got != tooLong {
			t.Fatalf("got %q, want %q", got, tooLong)
		}
		hostileClosed(t, c, 5*time.Second)
	})
	// 64 MiB without a line end: the server answers once it has read
	// max_line_length bytes and closes; the client cannot push the rest.
	t.Run("endless", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		chunk := []byte(strings.Repeat("x", 64<<10))
		var sent int
		var werr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			for sent < 64<<20 {
				n, err := c.Conn.Write(chunk)
				sent += n
				if err != nil {
					werr = err
					return
				}
			}
		}()
		code, msg := c.Read()
		if got := fmt.Sprintf("%d %s", code, msg); got != tooLong {
			t.Fatalf("got %q, want %q", got, tooLong)
		}
		<-done
		if werr == nil {
			t.Fatalf("all of %d bytes written: the server kept reading", sent)
		}
		t.Logf("the client got %q after %d bytes (socket buffers)", werr, sent)
	})
	// In DATA as well: the message is not taken, and the connection
	// ends (a 4xx would make the sender retry the same message).
	t.Run("data-line", func(t *testing.T) {
		records := hostileRecords(e)
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		got := c.Send("a@remote.test", "b@example.test", "Subject: x\r\n\r\n"+strings.Repeat("y", 700)+"\r\n.\r\n")
		if got != tooLong {
			t.Fatalf("got %q, want %q", got, tooLong)
		}
		hostileClosed(t, c, 5*time.Second)
		if n := hostileRecords(e); n != records {
			t.Fatalf("spool records %d -> %d after a refused message", records, n)
		}
	})
	hostileSettled(t, e, srv, baseline)
}

// TestHostileMessageSize: SIZE declarations and actual sizes around
// max_message_size, and that nothing of a refused message stays.
func TestHostileMessageSize(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_message_size": 1000})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	srv := hostileApp(t).Server("mx")
	baseline := hostileGoroutines()
	const (
		tooBigDeclared = "552 5.3.4 Max message size exceeded"
		tooBig         = "552 5.3.4 Maximum message size exceeded"
	)
	// body makes DATA of exactly n bytes (before the end-of-data line),
	// in lines of 100 bytes.
	body := func(n int) string {
		lines, rest := n/100, n%100
		if rest == 1 {
			lines, rest = lines-1, 101
		}
		s := strings.Repeat(strings.Repeat("x", 98)+"\r\n", lines)
		if rest > 0 {
			s += strings.Repeat("y", rest-2) + "\r\n"
		}
		if len(s) != n {
			t.Fatalf("body(%d) has %d bytes", n, len(s))
		}
		return s
	}

	t.Run("declared", func(t *testing.T) {
		for _, tc := range []struct{ arg, want, gap string }{
			{"SIZE=1000", "250 2.0.0 Roger, accepting mail from <a@remote.test>", ""},
			{"SIZE=1001", tooBigDeclared, ""},
			{"SIZE=4294967295", tooBigDeclared, ""},
			{"SIZE=abc", "501 5.5.4 Unable to parse SIZE as an integer", ""},
			{"SIZE=-1", "501 5.5.4 Unable to parse SIZE as an integer", ""},
			{"SIZE=99999999999", tooBigDeclared, gapSizeHuge},
		} {
			t.Run(tc.arg, func(t *testing.T) {
				if tc.gap != "" {
					t.Skip(tc.gap)
				}
				c := st.Dial(t, addr)
				c.Expect("250", "EHLO client.test")
				if got := hostileReply(c, "MAIL FROM:<a@remote.test> "+tc.arg); got != tc.want {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
			})
		}
	})
	t.Run("actual/999", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		if got := c.Send("a@remote.test", "b@example.test", body(999)+".\r\n"); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("actual/1000", func(t *testing.T) {
		t.Skip(gapSizeExact)
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test> SIZE=1000")
		c.Expect("250", "RCPT TO:<b@example.test>")
		c.Expect("354", "DATA")
		c.Conn.Write([]byte(body(1000) + ".\r\n"))
		if code, msg := c.Read(); code != 250 {
			t.Fatalf("got %d %s, want 250", code, msg)
		}
	})
	// With BDAT, go-smtp counts the chunk sizes and takes exactly the
	// limit; one byte more is refused before the chunk is read.
	t.Run("actual/1000-bdat", func(t *testing.T) {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test> SIZE=1000")
		c.Expect("250", "RCPT TO:<b@example.test>")
		c.Conn.Write([]byte("BDAT 1000 LAST\r\n" + body(1000)))
		if got := hostileRead(c); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("actual/1001-bdat", func(t *testing.T) {
		records := hostileRecords(e)
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("250", "RCPT TO:<b@example.test>")
		c.Conn.Write([]byte("BDAT 1001 LAST\r\n" + body(1001)))
		if got := hostileRead(c); got != tooBigDeclared {
			t.Fatalf("got %q, want %q", got, tooBigDeclared)
		}
		c.Expect("250", "NOOP")
		if n := hostileRecords(e); n != records {
			t.Fatalf("spool records %d -> %d after a refused message", records, n)
		}
	})
	// Over the limit, with and without a SIZE that lied, and far over
	// it: 552 after the end of data, the session goes on, nothing is
	// kept.
	for _, tc := range []struct {
		name string
		mail string
		n    int
	}{
		{"actual/1001", "MAIL FROM:<a@remote.test>", 1001},
		{"actual/lying-size", "MAIL FROM:<a@remote.test> SIZE=500", 1001},
		{"actual/8MiB", "MAIL FROM:<a@remote.test>", 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			records := hostileRecords(e)
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			if got := hostileReply(c, tc.mail); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("%s: %q", tc.mail, got)
			}
			c.Expect("250", "RCPT TO:<b@example.test>")
			c.Expect("354", "DATA")
			go c.Conn.Write([]byte(body(tc.n) + ".\r\n"))
			code, msg := c.Read()
			if got := fmt.Sprintf("%d %s", code, msg); got != tooBig {
				t.Fatalf("got %q, want %q", got, tooBig)
			}
			c.Expect("250", "NOOP")
			if n := hostileRecords(e); n != records {
				t.Fatalf("spool records %d -> %d after a refused message", records, n)
			}
			if d := hostileDrafts(e); len(d) != 0 {
				t.Fatalf("drafts left in the spool: %v", d)
			}
		})
	}
	hostileSettled(t, e, srv, baseline)
}

// TestHostileRecipients: past max_recipients every RCPT gets 452 and the
// message goes to the recipients accepted before; refused recipients
// do not count.
func TestHostileRecipients(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_recipients": 2})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<a@remote.test>")
	for i := 0; i < 5; i++ {
		c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<r%d@elsewhere.test>", i)
	}
	c.Expect("250", "RCPT TO:<one@example.test>")
	c.Expect("250", "RCPT TO:<two@example.test>")
	for i := 0; i < 50; i++ {
		if got := hostileReply(c, fmt.Sprintf("RCPT TO:<more%d@example.test>", i)); got != "452 4.5.3 Maximum limit of 2 recipients reached" {
			t.Fatalf("recipient %d past the limit: %q", i+3, got)
		}
	}
	c.Expect("354", "DATA")
	c.Conn.Write([]byte(st.Message))
	code, msg := c.Read()
	var id string
	if _, err := fmt.Sscanf(fmt.Sprintf("%d %s", code, msg), "250 2.0.0 OK: queued as %s", &id); err != nil {
		t.Fatalf("DATA: %d %s", code, msg)
	}
	env, err := hostileApp(t).Spool().Load(id)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range env.Recipients {
		got = append(got, r.Address)
	}
	if strings.Join(got, ",") != "one@example.test,two@example.test" {
		t.Fatalf("queued for %v", got)
	}
}

// TestHostileEndlessHeader: DATA whose header never ends (no blank
// line, no end of data) is bounded by max_message_size or by the data
// timeout.
func TestHostileEndlessHeader(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":              map[string]any{"level": "none"},
		"max_message_size": 1000,
		"read_timeout":     "1s",
		"data_timeout":     "2s",
		"relay_networks":   []string{"127.0.0.1/32"},
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	srv := hostileApp(t).Server("mx")
	baseline := hostileGoroutines()
	records := hostileRecords(e)
	start := func(t *testing.T) *st.Client {
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		c.Expect("250", "MAIL FROM:<a@remote.test>")
		c.Expect("250", "RCPT TO:<b@example.test>")
		c.Expect("354", "DATA")
		return c
	}

	// Under the size limit, a header line every 100 ms: cut off at the
	// data timeout.
	t.Run("trickle", func(t *testing.T) {
		c := start(t)
		begin := time.Now()
		go func() {
			for i := 0; i < 100; i++ {
				if _, err := fmt.Fprintf(c.Conn, "X-%d: v\r\n", i); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond) // a sleep: the slow client under test
			}
		}()
		code, msg := c.Read()
		took := time.Since(begin)
		if got := fmt.Sprintf("%d %s", code, msg); got != "421 4.4.2 Timeout waiting for message data, closing connection" {
			t.Fatalf("got %q", got)
		}
		if took < 1500*time.Millisecond || took > 8*time.Second {
			t.Fatalf("cut off after %s, want about data_timeout (2s)", took)
		}
		hostileClosed(t, c, 5*time.Second)
	})
	// Over the size limit, then silence: 552 once the server has waited
	// a read timeout for the end, then the idle timeout.
	t.Run("over-limit-then-silence", func(t *testing.T) {
		c := start(t)
		c.Conn.Write([]byte(strings.Repeat("X-H: v\r\n", 300)))
		// The message is refused (552 is owed only at its end), and
		// the rest never comes: the drain of the refused message times
		// out and the server hangs up, since what would follow could
		// not be told from commands (SMTP smuggling).
		if got := hostileRead(c); !strings.HasPrefix(got, "0 ") && got != "552 5.3.4 Maximum message size exceeded" {
			t.Fatalf("got %q", got)
		}
		hostileClosed(t, c, 5*time.Second)
	})
	// Over the size limit and still sending: the rest of the message
	// must never be read as commands. The refused message's tail comes
	// for longer than read_timeout (after the limit was crossed) but
	// ends within data_timeout: it is drained to its end of data (the
	// smuggled transaction inside it included), then 552; the stray "."
	// after it is a bad command, and the client, silent then, times out.
	smuggled := "RSET\r\nMAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\n" +
		"Subject: smuggled\r\n\r\nhi\r\n.\r\n.\r\n"
	t.Run("over-limit-still-sending", func(t *testing.T) {
		c := start(t)
		go func() {
			c.Conn.Write([]byte("Subject: big\r\n\r\n" + strings.Repeat("x\r\n", 400)))
			for i := 0; i < 13; i++ { // 1.3 s: past read_timeout, within data_timeout
				c.Conn.Write([]byte("NOOP\r\n"))
				time.Sleep(100 * time.Millisecond) // a sleep: the slow client under test
			}
			c.Conn.Write([]byte(smuggled))
		}()
		var replies []string
		for {
			code, msg := c.Read()
			if code == 0 {
				break
			}
			replies = append(replies, fmt.Sprintf("%d %s", code, msg))
		}
		want := []string{
			"552 5.3.4 Maximum message size exceeded",
			"501 5.5.2 Bad command",
			"421 4.4.2 Idle timeout, bye bye",
		}
		if fmt.Sprintf("%q", replies) != fmt.Sprintf("%q", want) {
			t.Fatalf("replies %q, want %q", replies, want)
		}
	})
	// Over the size limit and still sending past data_timeout: the drain
	// gives up at the data deadline and the server hangs up without a
	// reply, since what follows could not be told from commands.
	t.Run("over-limit-past-data-timeout", func(t *testing.T) {
		c := start(t)
		begin := time.Now()
		go func() {
			c.Conn.Write([]byte("Subject: big\r\n\r\n" + strings.Repeat("x\r\n", 400)))
			for i := 0; i < 40; i++ { // 4 s: past data_timeout
				if _, err := c.Conn.Write([]byte("NOOP\r\n")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond) // a sleep: the slow client under test
			}
			c.Conn.Write([]byte(smuggled))
		}()
		got := hostileRead(c)
		took := time.Since(begin)
		if !strings.HasPrefix(got, "0 ") {
			t.Fatalf("got %q, want the connection closed without a reply", got)
		}
		if took < 1500*time.Millisecond || took > 3500*time.Millisecond {
			t.Fatalf("closed after %s, want at data_timeout (2s)", took)
		}
	})
	if n := hostileRecords(e); n != records {
		t.Errorf("spool records %d -> %d", records, n)
	}
	hostileSettled(t, e, srv, baseline)
}

// TestHostileSlowClients: clients that send nothing, or a byte every
// few seconds, are disconnected at the read or data timeout, many at
// once, and leave nothing behind.
func TestHostileSlowClients(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":          map[string]any{"level": "none"},
		"read_timeout": "1s",
		"data_timeout": "2s",
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	srv := hostileApp(t).Server("mx")
	baseline := hostileGoroutines()

	// replies reads every reply until the server closes, with the time
	// each came.
	type timed struct {
		reply string
		at    time.Duration
	}
	show := func(ts []timed) string {
		var parts []string
		for _, x := range ts {
			parts = append(parts, fmt.Sprintf("%q at %.2fs", x.reply, x.at.Seconds()))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	replies := func(c *st.Client, begin time.Time) []timed {
		var out []timed
		for {
			code, msg := c.Read()
			if code == 0 {
				return out
			}
			out = append(out, timed{fmt.Sprintf("%d %s", code, msg), time.Since(begin)})
		}
	}
	// trickle writes one byte of s every gap until the connection fails.
	trickle := func(c *st.Client, s string, gap time.Duration) {
		for i := 0; ; i++ {
			if _, err := c.Conn.Write([]byte{s[i%len(s)]}); err != nil {
				return
			}
			time.Sleep(gap) // a sleep: the slow client under test
		}
	}

	t.Run("silent", func(t *testing.T) {
		c := st.Dial(t, addr)
		begin := time.Now()
		got := replies(c, begin)
		if len(got) != 1 || got[0].reply != "421 4.4.2 Idle timeout, bye bye" {
			t.Fatalf("got %s", show(got))
		}
		if got[0].at < 800*time.Millisecond || got[0].at > 6*time.Second {
			t.Fatalf("after %s, want about read_timeout (1s)", got[0].at)
		}
	})
	// A command line must arrive whole within the read timeout: a byte
	// every 3 s or every 300 ms gets one 421 at the read timeout and a
	// close (go-smtp alone ran the fragment that had come as a command
	// at each timeout, and held the slot until its error limit).
	for _, gap := range []time.Duration{3 * time.Second, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("command/byte-every-%s", gap), func(t *testing.T) {
			c := st.Dial(t, addr)
			begin := time.Now()
			go trickle(c, "EHLO slow.test\r\n", gap)
			got := replies(c, begin)
			if len(got) != 1 || got[0].reply != "421 4.4.2 localhost Error: timeout exceeded" {
				t.Fatalf("got %s, want one 421 4.4.2 localhost Error: timeout exceeded", show(got))
			}
			if at := got[0].at; at < 800*time.Millisecond || at > 4*time.Second {
				t.Fatalf("disconnected after %s, want about read_timeout (1s)", at)
			}
		})
	}
	// Inside DATA: a byte every 3 s hits the read timeout, a byte every
	// 300 ms the data timeout; both end with 421 4.4.2 and a close.
	for _, tc := range []struct {
		name string
		gap  time.Duration
	}{{"data/byte-every-3s", 3 * time.Second}, {"data/byte-every-300ms", 300 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			c.Expect("250", "MAIL FROM:<a@remote.test>")
			c.Expect("250", "RCPT TO:<b@example.test>")
			c.Expect("354", "DATA")
			begin := time.Now()
			go trickle(c, "Subject: slow\r\n", tc.gap)
			got := replies(c, begin)
			if len(got) != 1 || got[0].reply != "421 4.4.2 Timeout waiting for message data, closing connection" {
				t.Fatalf("got %s", show(got))
			}
			if got[0].at < 800*time.Millisecond || got[0].at > 2*time.Second+4*time.Second {
				t.Fatalf("after %s, want within data_timeout (2s)", got[0].at)
			}
		})
	}
	// Many at once: 40 silent clients and 40 that trickle in DATA, all
	// cut off at their timeout, and nothing left afterwards.
	t.Run("many", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan string, 80)
		for i := 0; i < 80; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				// From four addresses, under the default 50 per address.
				d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%4))}}
				nc, err := d.Dial("tcp", addr)
				if err != nil {
					errs <- err.Error()
					return
				}
				defer nc.Close()
				c := &st.Client{T: t, Conn: nc, Text: st.NewText(nc)}
				nc.SetReadDeadline(time.Now().Add(15 * time.Second))
				if code, msg, _ := c.Text.ReadResponse(220); code != 220 {
					errs <- fmt.Sprintf("greeting %d %s", code, msg)
					return
				}
				want := "421 4.4.2 Idle timeout, bye bye"
				if i%8 >= 4 {
					for _, cmd := range []string{"EHLO client.test", "MAIL FROM:<a@remote.test>", "RCPT TO:<b@example.test>", "DATA"} {
						c.Text.PrintfLine("%s", cmd)
						if code, msg, err := c.Text.ReadResponse(0); err != nil && code != 354 {
							errs <- fmt.Sprintf("%s: %d %s %v", cmd, code, msg, err)
							return
						}
					}
					go trickle(c, "x", 500*time.Millisecond)
					want = "421 4.4.2 Timeout waiting for message data, closing connection"
				}
				code, msg, _ := c.Text.ReadResponse(0)
				if got := fmt.Sprintf("%d %s", code, msg); got != want {
					errs <- fmt.Sprintf("client %d: %q, want %q", i, got, want)
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})
	hostileSettled(t, e, srv, baseline)
}

// TestHostileConnectionFlood: many concurrent connections against
// max_connections and max_connections_per_ip: exactly the limit gets
// 220, every other one the 421 for its limit, and all the slots come
// back.
func TestHostileConnectionFlood(t *testing.T) {
	e := st.NewEnv(t)
	total, totalAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections": 5})
	perIP, perIPAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections_per_ip": 3})
	both, bothAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"},
		"max_connections": 4, "max_connections_per_ip": 3})
	e.Load(st.App(map[string]any{"total": total, "perip": perIP, "both": both}), nil)
	app := hostileApp(t)
	baseline := hostileGoroutines()
	const (
		full     = "421 4.7.0 localhost Too many connections, try again later"
		fullAddr = "421 4.7.0 localhost Too many connections from your address, try again later"
		greeting = "220 localhost ESMTP Service Ready"
	)

	// flood opens n connections from each source address at once and
	// returns the first reply of each, by source; the connections stay
	// open until close is called.
	type result struct {
		from  string
		reply string
		c     *st.Client
	}
	flood := func(t *testing.T, addr string, n int, froms ...string) (map[string]map[string]int, func()) {
		var wg sync.WaitGroup
		res := make(chan result, n*len(froms))
		for _, from := range froms {
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, code, msg, err := hostileTryDialFrom(t, addr, from)
					if err != nil {
						res <- result{from, err.Error(), nil}
						return
					}
					res <- result{from, fmt.Sprintf("%d %s", code, msg), c}
				}()
			}
		}
		wg.Wait()
		close(res)
		counts := make(map[string]map[string]int)
		var conns []*st.Client
		for r := range res {
			if counts[r.from] == nil {
				counts[r.from] = make(map[string]int)
			}
			counts[r.from][r.reply]++
			switch {
			case r.c == nil:
			case r.reply == greeting:
				conns = append(conns, r.c)
			default:
				// A refused connection is closed by the server.
				hostileClosed(t, r.c, 5*time.Second)
			}
		}
		return counts, func() {
			for _, c := range conns {
				c.Conn.Close()
			}
		}
	}
	check := func(t *testing.T, got map[string]map[string]int, want map[string]map[string]int) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("replies by source address:\n got %v\nwant %v", got, want)
		}
	}

	t.Run("max_connections", func(t *testing.T) {
		got, closeAll := flood(t, totalAddr, 15, "127.0.0.1", "127.0.0.2")
		if n := got["127.0.0.1"][greeting] + got["127.0.0.2"][greeting]; n != 5 {
			t.Fatalf("%d connections got 220, want 5: %v", n, got)
		}
		if n := got["127.0.0.1"][full] + got["127.0.0.2"][full]; n != 25 {
			t.Fatalf("%d connections got %q, want 25: %v", n, full, got)
		}
		closeAll()
		hostileSettled(t, e, app.Server("total"), baseline)
		// All five slots are free again.
		got, closeAll = flood(t, totalAddr, 5, "127.0.0.3")
		check(t, got, map[string]map[string]int{"127.0.0.3": {greeting: 5}})
		closeAll()
	})
	t.Run("max_connections_per_ip", func(t *testing.T) {
		got, closeAll := flood(t, perIPAddr, 10, "127.0.0.1", "127.0.0.2", "127.0.0.3")
		check(t, got, map[string]map[string]int{
			"127.0.0.1": {greeting: 3, fullAddr: 7},
			"127.0.0.2": {greeting: 3, fullAddr: 7},
			"127.0.0.3": {greeting: 3, fullAddr: 7},
		})
		closeAll()
		hostileSettled(t, e, app.Server("perip"), baseline)
		got, closeAll = flood(t, perIPAddr, 3, "127.0.0.1")
		check(t, got, map[string]map[string]int{"127.0.0.1": {greeting: 3}})
		closeAll()
	})
	// Both limits: three from one address fill its share, the fourth
	// connection anywhere fills the server. (A fourth from the same
	// address waits for a slot of its client, and holds a place in the
	// server while it waits: the fifth finds the server full.)
	t.Run("both", func(t *testing.T) {
		got, closeFirst := flood(t, bothAddr, 5, "127.0.0.1")
		check(t, got, map[string]map[string]int{"127.0.0.1": {greeting: 3, fullAddr: 1, full: 1}})
		got, closeSecond := flood(t, bothAddr, 3, "127.0.0.2")
		check(t, got, map[string]map[string]int{"127.0.0.2": {greeting: 1, full: 2}})
		closeFirst()
		closeSecond()
		hostileSettled(t, e, app.Server("both"), baseline)
	})
	for _, name := range []string{"total", "perip", "both"} {
		hostileSettled(t, e, app.Server(name), baseline)
	}
}
