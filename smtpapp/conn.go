package smtpapp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// conn wraps every accepted connection beneath go-smtp. go-smtp is the
// protocol engine, but a few duties of a gateway have no hook there, so
// this is where they are done (docs/design.md, "What go-smtp leaves to
// us"):
//
//   - After a failed STARTTLS handshake go-smtp answers 550 in plaintext
//     and goes on; Postfix disconnects, and so do we: once the "220 Ready
//     to start TLS" line has gone out, any write that is not a TLS record
//     can only be that 550, and closes the connection instead.
//   - An encrypt-level server must answer MAIL, RCPT, DATA, BDAT and AUTH
//     with 530 before TLS. go-smtp answers DATA with 502 and AUTH with
//     523 before it ever asks the session, so while such a session is in
//     plaintext, reads go through a gate that hands go-smtp one command
//     line at a time and answers the refused commands itself.
//   - go-smtp's read timeout is per command; the whole DATA transfer is
//     bounded here by a deadline that each read respects.
//   - It tells whether the client said EHLO or HELO (for RFC 3848) and
//     records the per-connection facts logged when it closes, the TLS
//     session's among them: the connection is the one holder of those
//     (tlsFacts), and the session reads them from here.
type conn struct {
	net.Conn
	srv    *Server
	remote netip.AddrPort
	start  time.Time
	slot   netip.Addr // the client's max_connections_per_ip slot, if counted

	// gate is non-nil while commands are read through the encrypt-level
	// gate; it owns the buffered plaintext.
	gate        *bufio.Reader
	gatePending []byte // rest of a line go-smtp's buffer had no room for
	gateErrors  int
	// ehloLines collects the lines of an EHLO reply while the gate is
	// on, so that the reply can be cut to what starts TLS (preTLSEHLO).
	ehloLines [][]byte

	tlsStarted atomic.Bool // the 220 for STARTTLS was written
	esmtp      atomic.Bool // the client greeted with EHLO
	// peerGone is set once a read found the connection ended by the
	// client (EOF or reset, not a timeout): a message whose end was read
	// after that was never acknowledged, and may be cut off.
	peerGone atomic.Bool
	// refusals counts refused MAIL and RCPT commands (maxRefusals).
	refusals atomic.Int32

	// Command lines, seen from beneath go-smtp and TLS: go-smtp sets
	// the read deadline once before it reads each command line, so a
	// SetReadDeadline call starts one (see SetReadDeadline).
	lineBytes    int         // bytes read since the current line began
	lines        int         // command lines begun
	lineProgress atomic.Bool // the current line did something for mail
	inCommand    atomic.Bool // reading a command line: not DATA, not a drain
	cut          atomic.Bool // we closed the connection; reads fail
	// smtpConn is go-smtp's connection, known from the first HELO on,
	// and tlsConn the implicit-TLS session we made: with them a reply
	// of ours goes inside TLS (replyWriter).
	smtpConn atomic.Pointer[smtp.Conn]
	tlsConn  *tls.Conn
	// tls holds the TLS facts once the handshake is done (handshakeDone);
	// nil in plaintext. tlsFailed: the STARTTLS handshake failed after
	// they were recorded (tlsSession).
	tls       atomic.Pointer[tlsFacts]
	tlsFailed atomic.Bool

	mu           sync.Mutex
	dataDeadline time.Time
	draining     bool // go-smtp is discarding the rest of a refused message
	closeOnWrite bool
	sni          string
	messages     int
	junk         int // lines that did nothing for mail since the last message
	closed       bool

	// done is closed when the connection is; ServeConn waits on it.
	done chan struct{}

	// wbuf holds what was written since the last read: go-smtp writes
	// (and flushes) each reply line on its own, and TLS each of those
	// as a record, so a multi-line reply was one syscall per line. It
	// goes out in one write before the next read (the client cannot
	// answer what it has not seen, and pipelined commands are answered
	// when go-smtp has to read again, as RFC 2920 allows), when it
	// grows past wbufMax, and before the connection is closed.
	wmu  sync.Mutex
	wbuf []byte
}

// wbufMax bounds what a connection buffers between reads.
const wbufMax = 16 << 10

// closeFlushTimeout bounds the last write before a close.
const closeFlushTimeout = 2 * time.Second

// buffered appends p to what goes out before the next read.
func (c *conn) buffered(p []byte) (int, error) {
	c.wmu.Lock()
	c.wbuf = append(c.wbuf, p...)
	full := len(c.wbuf) >= wbufMax
	c.wmu.Unlock()
	if full {
		if err := c.flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// closeRaw closes the connection beneath us after what was buffered (a
// reply, a TLS alert) has gone out, within closeFlushTimeout.
func (c *conn) closeRaw() error {
	c.wmu.Lock()
	pending := len(c.wbuf) > 0
	c.wmu.Unlock()
	if pending {
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		c.flush()
	}
	return c.Conn.Close()
}

// flush writes out what was buffered, in one write.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	if cap(c.wbuf) > 2*wbufMax {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
}

func newConn(c net.Conn, srv *Server, remote netip.AddrPort) *conn {
	cn := &conn{Conn: c, srv: srv, remote: remote, start: time.Now()}
	if srv.level == LevelEncrypt && !srv.implicitTLS() {
		cn.gate = bufio.NewReaderSize(c, 4096)
	}
	return cn
}

// isTLSRecord reports whether b starts like a TLS record: content types
// 20 to 24 (RFC 8446 section 5.1). An SMTP reply starts with a digit.
func isTLSRecord(b []byte) bool {
	return len(b) > 0 && b[0] >= 20 && b[0] <= 24
}

var (
	startTLSReady = []byte("220 2.0.0 Ready to start TLS")
	ehloReply     = []byte("250-Hello ")
	errTLSFailed  = errors.New("smtp: STARTTLS handshake failed; connection closed")
)

func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	closeNow := c.closeOnWrite
	if c.draining {
		// go-smtp writes the reply once the drain is complete.
		c.draining, c.dataDeadline = false, time.Time{}
	}
	c.mu.Unlock()
	if c.tlsStarted.Load() && !isTLSRecord(p) {
		// go-smtp's plaintext 550 after a failed handshake: hang up.
		c.tlsFailed.Store(true)
		c.srv.app.metrics.Handshakes.WithLabelValues(c.srv.name, "in", "", "failed").Inc()
		c.srv.maillog.Refused("tls handshake failed", c.remote.Addr(),
			zap.String("server_name", c.serverName()))
		c.closeRaw() // the handshake's alert first
		return 0, errTLSFailed
	}
	if !c.tlsStarted.Load() {
		switch {
		case bytes.HasPrefix(p, startTLSReady):
			c.tlsStarted.Store(true)
			// RFC 3207 section 5 and CVE-2011-0411: commands the client
			// pipelined after STARTTLS must not be executed. go-smtp drops
			// its own read buffer; drop the gate's as well.
			c.gate = nil
			c.gatePending = nil
		case bytes.HasPrefix(p, ehloReply) || c.ehloLines != nil:
			c.esmtp.Store(true)
			if c.gate != nil {
				full, ok := c.collectEHLO(p)
				if !ok {
					return len(p), nil // more lines to come
				}
				if _, err := c.buffered(full); err != nil {
					return 0, err
				}
				return len(p), nil
			}
		}
	}
	if closeNow {
		n, err := c.buffered(p)
		if cerr := c.closeRaw(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		return n, err
	}
	return c.buffered(p)
}

func (c *conn) Read(p []byte) (int, error) {
	if c.cut.Load() {
		return 0, net.ErrClosed
	}
	if err := c.flush(); err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.peerGone.Store(true) // the client is gone: nothing it sends after counts
		}
		return 0, err
	}
	if c.gate != nil {
		return c.gateRead(p)
	}
	c.mu.Lock()
	dl, draining := c.dataDeadline, c.draining
	c.mu.Unlock()
	if !dl.IsZero() {
		// Inside DATA: each read waits at most the read timeout, and all
		// of them together no longer than the data deadline.
		d := time.Now().Add(c.srv.readTimeout)
		if d.After(dl) {
			d = dl
		}
		if err := c.Conn.SetReadDeadline(d); err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	inCommand := c.inCommand.Load()
	if n > 0 {
		if inCommand {
			c.lineBytes += n
		}
		if !dl.IsZero() {
			c.lineProgress.Store(true) // message data
		}
	}
	if err != nil {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.peerGone.Store(true)
		} else if inCommand && c.lineBytes > 0 {
			// A command line begun but not finished within read_timeout
			// (between BDAT chunks: within data_timeout): go-smtp would
			// take the part that came for a command and wait again, over
			// and over (one byte a second held a slot for some 20
			// minutes). Postfix hangs up; so do we. The bytes of this read
			// are dropped; what go-smtp holds already may still run as a
			// command, on a closed connection, and no message is accepted
			// after this (hangUp marks the peer gone).
			c.hangUp("421 4.4.2 "+c.srv.Hostname+" Error: timeout exceeded",
				zap.String("reason", "command line not complete within read_timeout"))
			return 0, err
		}
	}
	if err != nil && draining {
		// The rest of a refused message did not arrive in time: what
		// follows cannot be told from commands. Hang up.
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.Conn.Close()
		}
	}
	return n, err
}

// collectEHLO gathers the lines of go-smtp's EHLO reply (it writes one
// line per call) until the last one, and then returns the reply as the
// gate sends it: cut by preTLSEHLO, in one write.
func (c *conn) collectEHLO(p []byte) (reply []byte, done bool) {
	for len(p) > 0 {
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line = p[:i+1]
		}
		p = p[len(line):]
		c.ehloLines = append(c.ehloLines, append([]byte(nil), line...))
		if len(line) >= 4 && line[3] == ' ' {
			done = true
		}
	}
	if !done {
		return nil, false
	}
	reply = preTLSEHLO(c.ehloLines)
	c.ehloLines = nil
	return reply, true
}

// preTLSEHLO cuts an EHLO reply before TLS on an encrypt-level server to
// the greeting line, ENHANCEDSTATUSCODES (so that the 530 5.7.0 that a
// premature command gets is understood) and STARTTLS. Nothing that
// moves a message is offered before TLS: not CHUNKING (Exim sent MAIL,
// RCPT and a whole BDAT body pipelined before it read the 530, so the
// body crossed the wire in cleartext), not PIPELINING (without it a
// client waits for the 530 to MAIL before it sends more), and not SIZE,
// 8BITMIME, SMTPUTF8 or DSN, which only matter to a transaction. RFC
// 3207 4.2 has the client forget all of it at STARTTLS anyway, and the
// EHLO after TLS offers everything.
func preTLSEHLO(lines [][]byte) []byte {
	var kept [][]byte
	for i, l := range lines {
		text := bytes.TrimRight(l, "\r\n")
		if len(text) < 4 {
			continue
		}
		kw, _, _ := bytes.Cut(text[4:], []byte(" "))
		if i == 0 || bytes.EqualFold(kw, []byte("STARTTLS")) || bytes.EqualFold(kw, []byte("ENHANCEDSTATUSCODES")) {
			kept = append(kept, text)
		}
	}
	var out []byte
	for i, text := range kept {
		sep := byte('-')
		if i == len(kept)-1 {
			sep = ' '
		}
		out = append(out, text[:3]...)
		out = append(out, sep)
		out = append(out, text[4:]...)
		out = append(out, '\r', '\n')
	}
	return out
}

// SetReadDeadline is called by go-smtp (through TLS, if any) before it
// reads each command line, and only then: that is how the connection
// tells one command line from the next without seeing them (they are
// encrypted down here). A line that did nothing for a mail transaction
// (NOOP, VRFY, HELP, RSET with no transaction, an unknown command) is
// junk; past max_junk_commands of them the client is told 421 and
// closed, as Postfix's smtpd_junk_command_limit does.
func (c *conn) SetReadDeadline(t time.Time) error {
	if c.cut.Load() {
		return net.ErrClosed
	}
	c.mu.Lock()
	inData := !c.dataDeadline.IsZero()
	c.mu.Unlock()
	// A line inside a BDAT transaction is a chunk of the message, even
	// when go-smtp had it buffered and no read was needed for it.
	if c.lines > 0 && !c.lineProgress.Swap(false) && !inData {
		c.mu.Lock()
		c.junk++
		junk := c.junk
		c.mu.Unlock()
		if junk > c.srv.maxJunkCommands {
			c.hangUp("421 4.7.0 "+c.srv.Hostname+" Error: too many commands without mail, closing connection",
				zap.String("reason", "max_junk_commands"), zap.Int("max_junk_commands", c.srv.maxJunkCommands))
			return net.ErrClosed
		}
	}
	c.lines++
	c.lineBytes = 0
	c.inCommand.Store(true)
	return c.Conn.SetReadDeadline(t)
}

// progress records that the current command did something for mail.
func (c *conn) progress() { c.lineProgress.Store(true) }

// hangUp sends reply, inside TLS when the session is in TLS, and closes
// the connection; go-smtp's further reads and writes fail.
func (c *conn) hangUp(reply string, why ...zap.Field) {
	c.cut.Store(true)
	// Whatever go-smtp still makes of what it had read is not answered:
	// no message may be accepted from here on.
	c.peerGone.Store(true)
	c.srv.reject("protocol")
	c.srv.maillog.Refused("connection cut", c.remote.Addr(), append([]zap.Field{zap.String("reply", reply)}, why...)...)
	if w := c.replyWriter(); w != nil {
		w.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if w == c.Conn {
			c.flush() // what was buffered goes first
		}
		io.WriteString(w, reply+"\r\n")
	}
	c.closeRaw()
}

// replyWriter is where a reply of ours must be written for the client to
// read it. In plaintext, and under a TLS session another app terminated
// (what we write goes through it), that is the connection itself. Under
// a TLS session above us it is that session's *tls.Conn (a write down
// here would put plaintext among its records): ours on an implicit-TLS
// listener, go-smtp's after STARTTLS, known from its connection once the
// client said HELO. It is nil while a STARTTLS handshake is under way, or
// when a client started TLS before HELO: no reply can be sent then.
func (c *conn) replyWriter() net.Conn {
	if !c.tlsStarted.Load() && c.tlsConn == nil {
		return c.Conn
	}
	sc := c.smtpConn.Load()
	if sc != nil {
		if tc, ok := sc.Conn().(*tls.Conn); ok {
			return tc
		}
	}
	if c.tlsConn != nil && sc != nil {
		// Only once go-smtp has a session (HELO came): before that the
		// implicit-TLS handshake may still be running on this very
		// goroutine, and a write would wait for it forever.
		return c.tlsConn
	}
	return nil
}

// startDrain keeps the data deadline for go-smtp's discarding of the
// rest of a message we refused before its end.
func (c *conn) startDrain() {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
}

// maxGateErrors is how many refused commands a plaintext client of an
// encrypt-level server may send before it is disconnected.
const maxGateErrors = 10

// gateRead hands go-smtp exactly one command line per call, so that
// go-smtp has answered the previous one before the gate reads the next,
// and the gate's own replies come out in order.
func (c *conn) gateRead(p []byte) (int, error) {
	if len(c.gatePending) > 0 {
		n := copy(p, c.gatePending)
		c.gatePending = c.gatePending[n:]
		return n, nil
	}
	for {
		line, err := c.readGateLine()
		if err != nil {
			return 0, err
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
		if !requiresTLSFirst(LevelEncrypt, false, verb) {
			n := copy(p, line)
			c.gatePending = line[n:]
			return n, nil
		}
		if strings.EqualFold(verb, "BDAT") {
			// RFC 3030: the chunk follows the command even when the
			// command is refused; discard it unread.
			fields := strings.Fields(arg)
			if len(fields) == 0 {
				c.writeGateReply("501 5.5.4 Missing chunk size argument")
				continue
			}
			size, err := strconv.ParseUint(fields[0], 10, 32)
			if err != nil {
				c.writeGateReply("501 5.5.4 Malformed size argument")
				continue
			}
			if _, err := io.CopyN(io.Discard, c.gate, int64(size)); err != nil {
				return 0, err
			}
		}
		c.writeGateReply(fmt.Sprintf("%d %d.%d.%d %s", errTLSRequired.Code,
			errTLSRequired.EnhancedCode[0], errTLSRequired.EnhancedCode[1],
			errTLSRequired.EnhancedCode[2], errTLSRequired.Message))
		c.srv.reject("tls_required")
		c.gateErrors++
		if c.gateErrors >= maxGateErrors {
			c.writeGateReply("421 4.7.0 Too many commands refused before STARTTLS, closing connection")
			c.Conn.Close()
			return 0, net.ErrClosed
		}
	}
}

// readGateLine reads one line of at most the server's line length.
func (c *conn) readGateLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := c.gate.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > c.srv.maxLineLength {
			c.writeGateReply("500 5.4.0 Too long line, closing connection")
			c.Conn.Close()
			return nil, net.ErrClosed
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if len(line) > 0 && errors.Is(err, io.EOF) {
				return line, nil
			}
			return nil, err
		}
	}
}

func (c *conn) writeGateReply(s string) {
	if c.srv.writeTimeout > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(c.srv.writeTimeout))
	}
	// Written through: the gate reads on beneath Read.
	c.buffered([]byte(s + "\r\n"))
	c.flush()
}

// startData bounds the coming DATA transfer.
func (c *conn) startData() {
	c.inCommand.Store(false)
	c.mu.Lock()
	c.dataDeadline = time.Now().Add(c.srv.dataTimeout)
	c.mu.Unlock()
}

// endData lifts the DATA bound; go-smtp sets its own deadline again
// before it reads the next command.
func (c *conn) endData() {
	c.mu.Lock()
	if !c.draining {
		c.dataDeadline = time.Time{}
	}
	c.mu.Unlock()
}

// hangUpAfterReply closes the connection after the next reply is written.
func (c *conn) hangUpAfterReply() {
	c.mu.Lock()
	c.closeOnWrite = true
	c.mu.Unlock()
}

func (c *conn) setSNI(name string) {
	c.mu.Lock()
	c.sni = name
	c.mu.Unlock()
}

func (c *conn) serverName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sni
}

// tlsFacts are what the TLS handshake of a connection established, as
// the session, the Received: header, the spool record and the log lines
// use them.
type tlsFacts struct {
	state tls.ConnectionState
	// peerVerified: the client certificate verified (by crypto/tls, or
	// against client_ca under "request"; serverTLS.peerVerified).
	peerVerified bool
}

// tlsSession returns the facts of the TLS session the connection is in,
// nil while it is in plaintext. They are recorded in the handshake's
// VerifyConnection, before the client's Finished message (and, in TLS
// 1.3, its CertificateVerify) is read; a STARTTLS handshake that fails
// after that leaves the connection in plaintext, as go-smtp sees it.
// Nothing is read on it after that (its 550 closes the connection, and
// go-smtp's next SetReadDeadline fails), but should anything be, it does
// not count as sent in TLS (REQUIRETLS, the Received: header, the spool).
// The log line still shows what the handshake got to.
func (c *conn) tlsSession() *tlsFacts {
	if c.tlsFailed.Load() {
		return nil
	}
	return c.tls.Load()
}

// handshakeDone records the TLS facts of the connection once its
// handshake is done: our own (STARTTLS, implicit TLS; from the handshake's
// VerifyConnection), or the one another app made (ServeConn). A client
// certificate is judged here, once. A connection has one handshake
// (go-smtp refuses a second STARTTLS), so a later call changes nothing.
func (c *conn) handshakeDone(cs tls.ConnectionState) {
	if c.tls.Load() != nil {
		return
	}
	f := &tlsFacts{state: cs, peerVerified: c.srv.tls.peerVerified(cs)}
	if c.tls.CompareAndSwap(nil, f) {
		c.srv.app.metrics.Handshakes.WithLabelValues(c.srv.name, "in", tls.VersionName(cs.Version), "ok").Inc()
	}
}

// countMessage counts an accepted message; the session is doing mail,
// so its junk count starts again.
func (c *conn) countMessage() {
	c.mu.Lock()
	c.messages++
	c.junk = 0
	c.mu.Unlock()
}

// Close logs the connection's line and closes it once.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	// The slot is given back before anything else: the client may
	// already be connecting again.
	c.srv.connDone(c.slot)
	messages := c.messages
	c.mu.Unlock()
	var cs *tls.ConnectionState
	verified := false
	if f := c.tls.Load(); f != nil {
		cs, verified = &f.state, f.peerVerified
	}
	c.srv.maillog.ConnectionClosed(c.remote, time.Since(c.start), messages, cs, verified)
	// The last reply (221, 421) and TLS's close_notify go out before the
	// close (crypto/tls sets the write deadline to now once it has
	// "written" its alert: closeRaw sets ours again, briefly).
	err := c.closeRaw()
	if c.done != nil {
		close(c.done)
	}
	return err
}

// unwrapConn finds our conn beneath whatever go-smtp holds (a *tls.Conn
// after STARTTLS or on an implicit-TLS listener).
func unwrapConn(nc net.Conn) *conn {
	for {
		switch c := nc.(type) {
		case *conn:
			return c
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return nil
		}
	}
}
