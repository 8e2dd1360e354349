package delivery

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/dane"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// Credentials for AUTH PLAIN at a smarthost.
type Credentials struct {
	Username string
	Password string
}

// Hop is one SMTP next hop: the host name (for certificate checks and
// logs) and the address to dial.
type Hop struct {
	// Host is the name the certificate is checked against.
	Host string
	// Addr is host:port or ip:port to dial.
	Addr string
	// NextHop is the next-hop domain, for level secure's matches: the
	// recipient domain for mx, the relay host for relay.
	NextHop string

	// Under dane and dane-only, PrepareDANE sets the level in force for
	// this hop, why, and the usable TLSA records.
	daneLevel Level
	daneWhy   string
	tlsa      []dane.Record

	// floor is a level a policy (MTA-STS enforce) raised this hop to at
	// least, and floorSource its name for the log.
	floor       Level
	floorSource string
}

// RaiseToVerify makes the hop's level at least verify (a policy source,
// such as MTA-STS in enforce mode, named source in the log). A stronger
// level of the route, or a hop authenticated by DANE, stays as it is.
func (h *Hop) RaiseToVerify(source string) { h.floor, h.floorSource = LevelVerify, source }

// floorApplies reports whether level is the verify floor a policy set
// (RaiseToVerify): the check is then the policy's, for the MX host.
func (h Hop) floorApplies(level Level) bool { return h.floor != "" && level == h.floor }

// DANEAuthenticated reports whether PrepareDANE found usable TLSA
// records for the hop: DANE, which takes precedence over MTA-STS
// (RFC 8461 2), authenticates it.
func (h *Hop) DANEAuthenticated() bool { return h.daneLevel == levelTLSA }

// hopLevel is the level in force for a hop under policy, and its source.
func hopLevel(policy *ClientTLS, hop Hop) (Level, string) {
	level, source := routeLevel(policy, hop)
	if hop.floor == LevelVerify && !level.Authenticated() {
		return LevelVerify, hop.floorSource
	}
	return level, source
}

// routeLevel is the level the route and DANE give a hop.
func routeLevel(policy *ClientTLS, hop Hop) (Level, string) {
	level := policy.EffectiveLevel()
	if !level.DANE() {
		return level, "route"
	}
	switch {
	case hop.daneLevel == levelTLSA:
		return levelTLSA, "dane"
	case hop.daneLevel != "":
		return hop.daneLevel, "dane (" + hop.daneWhy + ")"
	}
	// PrepareDANE was not called: nothing known of TLSA records.
	if level == LevelDANEOnly {
		return LevelDANEOnly, "dane-only (no TLSA lookup)"
	}
	return LevelMay, "dane (no TLSA lookup)"
}

// PrepareDANE decides, under dane or dane-only, how a hop is to be
// authenticated (RFC 7672): through r, a validating resolver on
// loopback, it checks that the hop's address records are
// DNSSEC-validated and looks up its TLSA records at _port._tcp.<host>.
// mxSecure says whether the MX records that named the host were
// validated (true for a configured relay host). It returns a result to
// defer the hop with, or nil. A lookup failure is a temporary failure
// under both levels, never a downgrade.
func (t *ClientTLS) PrepareDANE(ctx context.Context, r *dane.Resolver, mxSecure bool, hop *Hop, port int) *Result {
	level := t.EffectiveLevel()
	if !level.DANE() {
		return nil
	}
	lower := func(to Level, why string) *Result {
		if level == LevelDANEOnly {
			res := Temporary("4.7.5", fmt.Sprintf("DANE required (dane-only), but %s for %s", why, hop.Host))
			res.TLSFailed, res.TLSPolicy = true, "dane-only route"
			return &res
		}
		hop.daneLevel, hop.daneWhy = to, why
		return nil
	}
	fail := func(err error) *Result {
		res := Temporary("4.4.3", fmt.Sprintf("DANE: %v", err))
		res.TLSPolicy = string(level) + " route"
		return &res
	}
	switch {
	case r == nil || !r.Trusted():
		server := "none"
		if r != nil {
			server = r.Server
		}
		return lower(LevelMay, "the resolver "+server+" is not on loopback, so its DNSSEC answers are not trusted")
	case !mxSecure:
		return lower(LevelMay, "the MX records are not DNSSEC-validated")
	}
	secure, err := r.HostSecure(ctx, hop.Host)
	if err != nil {
		return fail(err)
	}
	if !secure {
		return lower(LevelMay, "the host's address records are not DNSSEC-validated")
	}
	records, secure, err := r.TLSA(ctx, hop.Host, port)
	if err != nil {
		return fail(err)
	}
	if !secure || len(records) == 0 {
		return lower(LevelMay, "there are no validated TLSA records")
	}
	usable, unusable := dane.Usable(records)
	if len(usable) == 0 {
		return lower(LevelEncrypt, fmt.Sprintf("none of %d TLSA records is usable", unusable))
	}
	hop.daneLevel, hop.tlsa = levelTLSA, usable
	return nil
}

func (h Hop) String() string {
	host, port, _ := net.SplitHostPort(h.Addr)
	if host == h.Host || host == "" {
		return h.Addr
	}
	return fmt.Sprintf("%s[%s]:%s", h.Host, host, port)
}

// Timeouts of an SMTP client transaction (RFC 5321 4.5.3.2 suggests 5
// minutes per command and 10 for the end of data).
const (
	DialTimeout    = 30 * time.Second
	CommandTimeout = 5 * time.Minute
	DataTimeout    = 10 * time.Minute
)

// SendSMTP runs one SMTP transaction for job to hop under policy. It
// reports whether the failure was one of the connection (refused, no
// greeting, TLS required but failed), after which the caller should try
// its next host; per-recipient replies are final for this attempt.
//
// With a pool, the transaction runs on an open session to the same hop
// when one is idle there, and the session is kept for the next one
// afterwards (see Pool). A nil pool opens and closes a connection.
//
// Under level may a failed handshake is followed at once by a second
// attempt in plaintext, as Postfix does, and logged.
func SendSMTP(ctx context.Context, job *Job, hop Hop, policy *ClientTLS, creds *Credentials, pool *Pool) (results []Result, tryNext bool) {
	results, tryNext, tlsFailed := sendOnce(ctx, job, hop, policy, creds, pool, true)
	if level, _ := hopLevel(policy, hop); tlsFailed && level == LevelMay && !job.Envelope.RequireTLS {
		job.Logger.Info("tls handshake failed; retrying in plaintext (level may)",
			zap.String("queue_id", job.Envelope.ID), zap.String("relay", hop.String()),
			zap.String("reason", results[0].Reply))
		results, tryNext, _ = sendOnce(ctx, job, hop, policy, creds, pool, false)
	}
	return results, tryNext
}

func sendOnce(ctx context.Context, job *Job, hop Hop, policy *ClientTLS, creds *Credentials, pool *Pool, useTLS bool) (results []Result, tryNext, tlsFailed bool) {
	level, source := hopLevel(policy, hop)
	if job.Envelope.RequireTLS && !level.Authenticated() {
		// RFC 8689 section 5: REQUIRETLS mail goes only over a verified
		// TLS session.
		level, source = LevelVerify, "requiretls"
	}
	// The level in force and where it came from, for the log line.
	tlsPolicy := string(level) + " " + source
	if level == levelTLSA {
		tlsPolicy = "dane " + source
	}
	// The source alone, for metrics: route, requiretls, dane, mta-sts enforce.
	kind, _, _ := strings.Cut(source, " (")
	defer func() {
		for i := range results {
			results[i].TLSPolicy, results[i].TLSSource = tlsPolicy, kind
		}
	}()
	if !useTLS {
		level = LevelNone
	}
	key := poolKey{addr: hop.Addr, host: hop.Host, level: level, wantTLS: useTLS, policy: policy, creds: creds, hostname: job.Hostname}
	if policy.matchesNexthop(level) {
		key.nextHop = hop.NextHop
	}
	if s := pool.get(key); s != nil {
		results, tryNext, reusable, stale := transact(ctx, job, s)
		if !stale {
			release(pool, key, s, reusable)
			return results, tryNext, false
		}
		// The next hop closed the idle session (or said 421) before it
		// accepted anything: this attempt goes on a new connection.
		s.c.Close()
	}
	s, results, tryNext, tlsFailed := open(ctx, job, hop, policy, creds, level)
	if s == nil {
		return results, tryNext, tlsFailed
	}
	results, tryNext, reusable, _ := transact(ctx, job, s)
	release(pool, key, s, reusable)
	return results, tryNext, false
}

// release puts a session back into the pool after a clean transaction,
// and closes it otherwise.
func release(pool *Pool, key poolKey, s *clientSession, reusable bool) {
	if reusable {
		pool.put(key, s)
		return
	}
	s.c.Close()
}

// open connects to hop, reads its greeting, says EHLO, starts TLS as
// level requires or allows, and authenticates. On failure it returns no
// session and the results for every recipient.
func open(ctx context.Context, job *Job, hop Hop, policy *ClientTLS, creds *Credentials, level Level) (s *clientSession, results []Result, tryNext, tlsFailed bool) {
	n := len(job.Recipients)
	remote := hop.String()
	var facts tlsFacts // once the handshake is done
	fail := func(r Result) (*clientSession, []Result, bool, bool) {
		r.Remote = remote
		return nil, withFacts(All(r, n), remote, facts), true, false
	}
	dialer := net.Dialer{Timeout: DialTimeout}
	conn, err := dialer.DialContext(ctx, "tcp", hop.Addr)
	if err != nil {
		return fail(Temporary("4.4.1", fmt.Sprintf("connect to %s: %v", remote, err)))
	}
	if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		_, port, _ := net.SplitHostPort(hop.Addr)
		remote = fmt.Sprintf("%s[%s]:%s", hop.Host, ta.IP, port)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// go-smtp's client has no exported STARTTLS and greets with
	// "localhost" before it; so the plaintext part up to the handshake
	// is done here, with our hostname, and go-smtp takes over the
	// connection after it (docs/design.md, "What go-smtp leaves to us").
	// When no handshake follows, go-smtp is handed the greeting and the
	// EHLO exchange already done, so that the next hop hears one EHLO:
	// RFC 3207 4.2 asks for a second only after TLS, and some servers
	// (OpenSMTPD: "503 5.5.1 Invalid command: Already identified")
	// refuse a repeated one.
	pre, err := preTLS(conn, job.Hostname)
	if err != nil {
		conn.Close()
		return fail(setupFailure(err, "4.4.2", pre.stage+" "+remote))
	}
	if !pre.starttls && level != LevelNone && level != LevelMay {
		quit(conn)
		r := Temporary("4.7.4", fmt.Sprintf("TLS is required, but was not offered by host %s", remote))
		r.TLSFailed = true
		return fail(r)
	}
	c := net.Conn(conn)
	// Without a handshake, go-smtp gets the EHLO reply too and its own
	// EHLO is dropped; after one, it says EHLO again, as it must.
	replay, helloDone := append(pre.greeting, pre.ehlo...), true
	if pre.starttls && level != LevelNone {
		var v Verification
		cfg := policy.config(hop, level, &v)
		if err := startTLS(conn); err != nil {
			conn.Close()
			r := setupFailure(err, "4.7.0", "STARTTLS at "+remote)
			r.Remote, r.TLSFailed = remote, true
			return nil, All(r, n), true, true
		}
		tc := tls.Client(conn, cfg)
		tc.SetDeadline(time.Now().Add(CommandTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			r := Temporary("4.7.5", tlsFailure(err, remote))
			r.Remote, r.TLSFailed = remote, true
			return nil, All(r, n), true, true
		}
		tc.SetDeadline(time.Time{})
		cs := tc.ConnectionState()
		facts = tlsFacts{on: true, version: tls.VersionName(cs.Version), cipher: tls.CipherSuiteName(cs.CipherSuite), verified: v.Verified, match: v.Match}
		c = tc
		replay, helloDone = pre.greeting, false
	}
	c = &replayConn{Conn: c, prefix: replay, swallowLine: helloDone}
	client := smtp.NewClient(c)
	client.CommandTimeout, client.SubmissionTimeout = CommandTimeout, DataTimeout
	s = &clientSession{c: client, conn: conn, remote: remote, facts: facts, created: time.Now()}
	if err := client.Hello(job.Hostname); err != nil {
		client.Close()
		stage := "EHLO at"
		if helloDone && (pre.ehloCode == 500 || pre.ehloCode == 502) {
			stage = "HELO at" // go-smtp's fallback after the refused EHLO
		}
		return fail(setupFailure(err, "4.4.2", stage+" "+remote))
	}
	if creds != nil {
		if !facts.on {
			client.Close()
			return fail(Temporary("4.7.0", fmt.Sprintf("refusing to send credentials to %s without TLS", remote)))
		}
		if err := client.Auth(sasl.NewPlainClient("", creds.Username, creds.Password)); err != nil {
			client.Close()
			return fail(setupFailure(err, "4.7.8", "AUTH at "+remote))
		}
	}
	if ctx.Err() != nil {
		client.Close()
		return fail(Temporary("4.4.2", fmt.Sprintf("connection to %s: %v", remote, ctx.Err())))
	}
	return s, nil, false, false
}

// transact runs one mail transaction on an open session. reusable says
// the session is ready for another transaction; stale says it failed at
// MAIL without a reply of the next hop's own, or with 421, before
// anything was accepted (a session that was idle and is no more).
func transact(ctx context.Context, job *Job, s *clientSession) (results []Result, tryNext, reusable, stale bool) {
	n := len(job.Recipients)
	c, remote, facts := s.c, s.remote, s.facts
	facts.connUse = s.uses + 1
	fail := func(r Result) ([]Result, bool, bool, bool) {
		r.Remote = remote
		return withFacts(All(r, n), remote, facts), true, false, false
	}
	// gone is fail for a session found dead at MAIL: stale, and the
	// caller may retry on a new connection.
	gone := func(r Result) ([]Result, bool, bool, bool) {
		rs, next, _, _ := fail(r)
		return rs, next, false, true
	}
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer func() {
		if !stop() {
			reusable = false // ctx ended: the connection is closed
		}
	}()

	env := job.Envelope
	mailOpts := &smtp.MailOptions{
		Body:       smtp.BodyType(env.Body),
		RequireTLS: env.RequireTLS,
		UTF8:       env.SMTPUTF8,
		Return:     smtp.DSNReturn(env.Ret),
		EnvelopeID: env.EnvID,
		Size:       env.Size,
	}
	if err := c.Mail(env.From, mailOpts); err != nil {
		var smtpErr *smtp.SMTPError
		switch {
		case errors.As(err, &smtpErr):
			if smtpErr.Code == 421 {
				return gone(replyResult(err, "", ""))
			}
			resetOK := c.Reset() == nil
			if !resetOK && s.uses > 0 {
				// The reply was the next hop's goodbye to an idle session
				// (qmail's "451 timeout", Exchange's "451 4.7.0 Timeout
				// waiting for client input"), not its answer to MAIL:
				// the session is gone, and a new one is tried.
				return gone(replyResult(err, "", ""))
			}
			return withFacts(All(replyResult(err, "", ""), n), remote, facts), false, resetOK, false
		case strings.Contains(err.Error(), "SMTPUTF8"):
			return withFacts(All(Permanent("5.6.7", "next hop "+remote+" does not support SMTPUTF8"), n), remote, facts), false, true, false
		case strings.Contains(err.Error(), "REQUIRETLS"):
			return withFacts(All(Permanent("5.7.30", "REQUIRETLS not supported by next hop "+remote), n), remote, facts), false, true, false
		}
		return gone(Temporary("4.4.2", fmt.Sprintf("lost connection with %s after MAIL: %v", remote, err)))
	}

	results = make([]Result, n)
	accepted := 0
	for i, r := range job.Recipients {
		if err := c.Rcpt(r.Address, rcptOptions(r)); err != nil {
			var smtpErr *smtp.SMTPError
			if !errors.As(err, &smtpErr) {
				return fail(Temporary("4.4.2", fmt.Sprintf("lost connection with %s after RCPT: %v", remote, err)))
			}
			results[i] = replyResult(err, "", "")
			results[i].Status = statusOf(smtpErr.Code)
			results[i].Remote = remote
			continue
		}
		results[i].Status = -1 // accepted, pending DATA
		accepted++
	}
	if accepted == 0 {
		return withFacts(results, remote, facts), false, c.Reset() == nil, false
	}

	final := Result{Status: Sent, Code: "2.0.0", Remote: remote}
	msg, err := job.Open()
	if err != nil {
		final = Temporary("4.3.0", fmt.Sprintf("opening queued message: %v", err))
		reusable = c.Reset() == nil
	} else {
		defer msg.Close()
		final, reusable = sendData(c, s.conn, msg, remote)
	}
	for i := range results {
		if results[i].Status == -1 {
			results[i] = final
		}
	}
	return withFacts(results, remote, facts), false, reusable, false
}

// sendData transfers the message and turns the final reply into a
// result; reusable says the session is ready for another transaction
// (the next hop answered the end of data, and not with 421). raw is the
// TCP connection beneath c, for the deadline of the transfer.
func sendData(c *smtp.Client, raw net.Conn, msg io.Reader, remote string) (r Result, reusable bool) {
	w, err := c.Data()
	if err != nil {
		var smtpErr *smtp.SMTPError
		if errors.As(err, &smtpErr) {
			return replyResult(err, "", ""), smtpErr.Code != 421 && c.Reset() == nil
		}
		return Temporary("4.4.2", fmt.Sprintf("lost connection with %s after DATA: %v", remote, err)), false
	}
	// go-smtp sets no deadline while the message is written: a next hop
	// that stops reading must not hold the attempt forever.
	raw.SetWriteDeadline(time.Now().Add(DataTimeout))
	_, err = io.Copy(w, msg)
	raw.SetWriteDeadline(time.Time{})
	if err != nil {
		// No end of data: whether the spool could not be read or the
		// connection failed, the next hop must not get a cut-off
		// message it could accept. The caller closes the connection.
		return Temporary("4.4.2", fmt.Sprintf("lost connection with %s while sending message: %v", remote, err)), false
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		var smtpErr *smtp.SMTPError
		if errors.As(err, &smtpErr) {
			return replyResult(err, "", ""), smtpErr.Code != 421
		}
		return Temporary("4.4.2", fmt.Sprintf("lost connection with %s after end of data: %v", remote, err)), false
	}
	return Result{Status: Sent, Code: "2.0.0", Reply: "250 " + resp.StatusText, Remote: remote}, true
}

// rcptOptions passes the recipient's DSN parameters on (RFC 3461 5.2).
func rcptOptions(r *spool.Recipient) *smtp.RcptOptions {
	opts := &smtp.RcptOptions{}
	for _, n := range r.Notify {
		opts.Notify = append(opts.Notify, smtp.DSNNotify(n))
	}
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok {
		opts.OriginalRecipientType = smtp.DSNAddressType(strings.ToUpper(typ))
		opts.OriginalRecipient = addr
	}
	return opts
}

// replyResult classifies an error from go-smtp's client: an SMTP reply
// keeps its code and text; anything else is a temporary failure with
// our reason.
func replyResult(err error, tempCode, context string) Result {
	var smtpErr *smtp.SMTPError
	if errors.As(err, &smtpErr) {
		code := fmt.Sprintf("%d.0.0", smtpErr.Code/100)
		if smtpErr.EnhancedCode != smtp.NoEnhancedCode && smtpErr.EnhancedCode != (smtp.EnhancedCode{}) {
			code = fmt.Sprintf("%d.%d.%d", smtpErr.EnhancedCode[0], smtpErr.EnhancedCode[1], smtpErr.EnhancedCode[2])
		}
		reply := fmt.Sprintf("%d %s %s", smtpErr.Code, code, smtpErr.Message)
		if context != "" {
			reply = context + ": " + reply
		}
		return Result{Status: statusOf(smtpErr.Code), Code: code, Reply: reply}
	}
	if tempCode == "" {
		tempCode = "4.0.0"
	}
	return Temporary(tempCode, fmt.Sprintf("%s: %v", context, err))
}

// setupFailure classifies a failure to set up a session (greeting,
// EHLO, STARTTLS, AUTH) as replyResult does, but never as permanent: the
// next hop refused a connection, not the message, and a wrong password
// or a host that is not ready must not bounce mail. The reply text keeps
// the next hop's code; the status code becomes 4.x.x (Postfix's
// smtp_skip_5xx_greeting and smtp_sasl_auth_soft_bounce, both on by
// default, do the same).
func setupFailure(err error, tempCode, context string) Result {
	r := replyResult(err, tempCode, context)
	if r.Status == Bounced {
		r.Status = Deferred
		r.Code = "4" + strings.TrimPrefix(r.Code, "5")
	}
	return r
}

func statusOf(code int) Status {
	switch {
	case code >= 200 && code < 300:
		return Sent
	case code >= 500:
		return Bounced
	}
	return Deferred
}

// tlsFailure words a failed handshake as Postfix's logs do.
func tlsFailure(err error, remote string) string {
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	var tve *tls.CertificateVerificationError
	var ve *verifyError
	if errors.As(err, &ve) {
		return fmt.Sprintf("%s: %s", ve.reason, remote)
	}
	if errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) || errors.As(err, &tve) {
		return fmt.Sprintf("certificate not verified: %s: %v", remote, err)
	}
	return fmt.Sprintf("TLS handshake with %s failed: %v", remote, err)
}

// tlsFacts describe the session of an attempt, for its log line: its
// TLS, and which transaction on the connection this is.
type tlsFacts struct {
	on       bool
	version  string
	cipher   string
	verified bool
	match    string // what the certificate matched (Verification.Match)
	connUse  int
}

func withFacts(rs []Result, remote string, f tlsFacts) []Result {
	for i := range rs {
		if rs[i].Remote == "" {
			rs[i].Remote = remote
		}
		if f.on {
			rs[i].TLSVersion, rs[i].TLSCipher, rs[i].TLSVerified, rs[i].TLSMatch = f.version, f.cipher, f.verified, f.match
		}
		rs[i].ConnUse = f.connUse
	}
	return rs
}

// preTLSExchange is what preTLS read: the greeting and the reply to
// EHLO, as the lines that came on the wire, so that they can be
// replayed to go-smtp's client.
type preTLSExchange struct {
	greeting []byte // "220 ...\r\n" lines
	ehlo     []byte // the reply to EHLO, whatever its code
	ehloCode int
	starttls bool   // STARTTLS was offered
	stage    string // where a failure happened: "greeting from", "EHLO at"
}

// preTLS reads the greeting and says EHLO, and tells whether STARTTLS
// was offered. A 5xx to EHLO is no failure: it means no extensions,
// and so no STARTTLS (RFC 3207 needs EHLO); go-smtp's client, handed the
// same reply, falls back to HELO.
func preTLS(conn net.Conn, hostname string) (pre preTLSExchange, err error) {
	conn.SetDeadline(time.Now().Add(CommandTimeout))
	defer conn.SetDeadline(time.Time{})
	text := textproto.NewConn(conn)
	pre.stage = "greeting from"
	if pre.greeting, _, err = readReply(&text.Reader, 220); err != nil {
		return pre, protoErr(err)
	}
	pre.stage = "EHLO at"
	if err := text.PrintfLine("EHLO %s", hostname); err != nil {
		return pre, err
	}
	if pre.ehlo, pre.ehloCode, err = readReply(&text.Reader, 250); err != nil {
		if te, ok := err.(*textproto.Error); ok && te.Code >= 500 {
			return pre, nil
		}
		return pre, protoErr(err)
	}
	for _, line := range strings.Split(string(pre.ehlo), "\r\n") {
		if len(line) > 4 && strings.EqualFold(strings.TrimSpace(line[4:]), "STARTTLS") {
			pre.starttls = true
		}
	}
	return pre, nil
}

// readReply reads one reply, as textproto's ReadResponse does, and also
// returns its lines as they came (CRLF line ends), at most 100 of them.
func readReply(r *textproto.Reader, expect int) (raw []byte, code int, err error) {
	var msg []string
	for i := 0; ; i++ {
		line, err := r.ReadLine()
		if err != nil {
			return nil, 0, err
		}
		if len(line) < 4 || (line[3] != ' ' && line[3] != '-') || i >= 100 {
			return nil, 0, textproto.ProtocolError("malformed reply: " + line)
		}
		c, err := strconv.Atoi(line[:3])
		if err != nil || c < 100 || (code != 0 && c != code) {
			return nil, 0, textproto.ProtocolError("malformed reply: " + line)
		}
		code = c
		raw = append(append(raw, line...), '\r', '\n')
		msg = append(msg, line[4:])
		if line[3] == ' ' {
			break
		}
	}
	if code/100 != expect/100 {
		return raw, code, &textproto.Error{Code: code, Msg: strings.Join(msg, "\n")}
	}
	return raw, code, nil
}

// quit ends a session we will not use with QUIT (RFC 5321 4.1.1.10),
// reads the reply, and closes the connection.
func quit(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "QUIT\r\n"); err == nil {
		bufio.NewReader(io.LimitReader(conn, 1024)).ReadString('\n')
	}
	conn.Close()
}

// startTLS sends STARTTLS and reads the 220. Whatever the server sent
// after it is never read (CVE-2011-0411 class, client side).
func startTLS(conn net.Conn) error {
	conn.SetDeadline(time.Now().Add(CommandTimeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
		return err
	}
	// Read byte by byte so that nothing past the reply's CRLF is
	// consumed from the TLS stream that follows.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 1024 {
		if _, err := conn.Read(b); err != nil {
			return err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			if len(line) >= 4 && line[3] == '-' {
				line = line[:0] // continuation line of a multi-line reply
				continue
			}
			break
		}
	}
	code, msg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
	if code != "220" {
		n, _ := strconv.Atoi(code)
		return protoErr(&textproto.Error{Code: n, Msg: msg})
	}
	return nil
}

// protoErr turns a textproto reply error into go-smtp's SMTPError, so
// that replies are classified one way.
func protoErr(err error) error {
	te, ok := err.(*textproto.Error)
	if !ok {
		return err
	}
	e := &smtp.SMTPError{Code: te.Code, Message: te.Msg}
	if parts := strings.SplitN(te.Msg, " ", 2); len(parts) == 2 {
		var a, b, c int
		if k, _ := fmt.Sscanf(parts[0], "%d.%d.%d", &a, &b, &c); k == 3 {
			e.EnhancedCode, e.Message = smtp.EnhancedCode{a, b, c}, parts[1]
		}
	}
	return e
}

// replayConn yields prefix before reading from the connection. With
// swallowLine, the first line written to it (go-smtp's EHLO, whose
// reply is in prefix) is dropped instead of sent.
type replayConn struct {
	net.Conn
	prefix      []byte
	swallowLine bool
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.prefix) > 0 {
		n := copy(p, r.prefix)
		r.prefix = r.prefix[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

func (r *replayConn) Write(p []byte) (int, error) {
	if !r.swallowLine {
		return r.Conn.Write(p)
	}
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		return len(p), nil
	}
	r.swallowLine = false
	if rest := p[i+1:]; len(rest) > 0 {
		n, err := r.Conn.Write(rest)
		return i + 1 + n, err
	}
	return len(p), nil
}
