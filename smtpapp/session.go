package smtpapp

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/dkimsign"
	"github.com/caddy-smtp/caddy-smtp/maillog"
	"github.com/caddy-smtp/caddy-smtp/message"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// reply is an SMTP reply with its enhanced status code (RFC 3463).
func reply(code, class, subject, detail int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: text}
}

// Replies of the session that go-smtp does not have.
var (
	errRequireTLSPlaintext = reply(530, 5, 7, 10, "REQUIRETLS needs a TLS session; issue STARTTLS first")
	errNeedsSMTPUTF8       = reply(553, 5, 6, 7, "Non-ASCII address requires the SMTPUTF8 parameter")
	errSpoolUnavailable    = reply(452, 4, 3, 1, "Insufficient system storage, try again later")
	errSigningFailed       = reply(451, 4, 3, 0, "Message could not be signed, try again later")
	errDataTimeout         = reply(421, 4, 4, 2, "Timeout waiting for message data, closing connection")
	errTooLongLine         = reply(500, 5, 4, 0, "Too long line, closing connection")
	// errBareNewline is the reply to message data with a bare LF or CR
	// (message.ErrBareNewline).
	errBareNewline = reply(550, 5, 5, 2, "Message contains a bare LF or bare CR; lines must end with CRLF (RFC 5321 2.3.8)")
	errNoSender    = reply(503, 5, 5, 1, "Bad sequence of commands")
)

// NewSession implements smtp.Backend; go-smtp calls it at HELO/EHLO, and
// again after STARTTLS.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	if !validHeloName(c.Hostname()) {
		return nil, errBadHelo
	}
	sess := &session{srv: s, conn: unwrapConn(c.Conn()), helo: c.Hostname()}
	if sess.conn == nil {
		return nil, errors.New("smtp: connection of unknown type")
	}
	sess.conn.smtpConn.Store(c)
	sess.conn.progress()
	return sess, nil
}

// errBadHelo refuses a HELO/EHLO name with control bytes or invalid
// UTF-8: it would be stored in the envelope and shown in the Received
// header, the logs and `caddy smtp-queue show`.
var errBadHelo = reply(501, 5, 5, 2, "Invalid domain/address argument for HELO")

// validHeloName allows what a domain or an address literal may hold,
// loosely (many clients send bare host names), but no control bytes and
// only valid UTF-8.
func validHeloName(name string) bool {
	if name == "" || !utf8.ValidString(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c == 0x7f {
			return false
		}
	}
	return true
}

// session is the per-connection state of one SMTP client between
// greetings; policy decisions are plain functions it calls.
//
// Its TLS facts are the connection's (conn.tlsSession), recorded when
// the handshake was done. go-smtp begins a new session after STARTTLS
// and drops the one before, so none lives on across the handshake.
type session struct {
	srv    *Server
	conn   *conn
	helo   string
	authID string

	hasFrom  bool
	from     string
	mailOpts smtp.MailOptions
	rcpts    []*spool.Recipient
}

func (ss *session) isTLS() bool { return ss.conn.tlsSession() != nil }

// Reset implements smtp.Session.
func (ss *session) Reset() {
	if ss.hasFrom {
		ss.conn.progress() // RSET of a transaction; or go-smtp's after one
	}
	ss.hasFrom, ss.from, ss.mailOpts, ss.rcpts = false, "", smtp.MailOptions{}, nil
}

// Logout implements smtp.Session.
func (ss *session) Logout() error { return nil }

// Mail implements smtp.Session.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.conn.progress()
	return ss.counted(ss.mail(from, opts))
}

// Rcpt implements smtp.Session.
func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	ss.conn.progress()
	return ss.counted(ss.rcpt(to, opts))
}

// maxRefusals is how many MAIL and RCPT commands one connection may
// have refused before it is closed, as Postfix's smtpd_hard_error_limit
// (20): a client probing addresses or relay rules gets no unlimited
// tries on one connection. (go-smtp counts only syntax errors; its 452
// for recipients past max_recipients is not counted here.)
const maxRefusals = 20

var errTooManyRefusals = reply(421, 4, 7, 0, "Too many refused commands, closing connection")

// counted passes a MAIL or RCPT reply on, counting refusals; the one
// that reaches maxRefusals is answered with 421 and the connection
// closed.
func (ss *session) counted(err error) error {
	var se *smtp.SMTPError
	if err == nil || !errors.As(err, &se) || se.Code < 400 {
		return err
	}
	if ss.conn.refusals.Add(1) >= maxRefusals {
		ss.srv.maillog.Refused("closing connection: too many refused commands", ss.conn.remote.Addr(), zap.Int("refused", maxRefusals))
		ss.conn.hangUpAfterReply()
		return errTooManyRefusals
	}
	return err
}

func (ss *session) mail(from string, opts *smtp.MailOptions) error {
	if requiresTLSFirst(ss.srv.level, ss.isTLS(), "MAIL") {
		ss.srv.reject("tls_required")
		return errTLSRequired
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	if opts.RequireTLS && !ss.isTLS() {
		ss.srv.reject("requiretls_plaintext")
		return errRequireTLSPlaintext
	}
	if from != "" {
		if problem := addressProblem(from, opts.UTF8, true); problem != nil {
			ss.srv.reject("address_syntax")
			return problem
		}
	}
	ss.Reset()
	ss.hasFrom, ss.from, ss.mailOpts = true, from, *opts
	return nil
}

func (ss *session) rcpt(to string, opts *smtp.RcptOptions) error {
	if requiresTLSFirst(ss.srv.level, ss.isTLS(), "RCPT") {
		return errTLSRequired
	}
	if !ss.hasFrom {
		return errNoSender
	}
	if problem := addressProblem(to, ss.mailOpts.UTF8, false); problem != nil {
		ss.srv.reject("address_syntax")
		return problem
	}
	trusted := ss.srv.relay.MayRelay(ss.conn.remote.Addr()) || ss.authID != ""
	if !ss.srv.relay.Accepts(to, ss.conn.remote.Addr(), ss.authID != "") || (!trusted && address.SenderRouted(to)) {
		ss.srv.reject("relay_denied")
		ss.srv.maillog.Refused("recipient refused: relay access denied", ss.conn.remote.Addr(),
			zap.String(maillog.FieldFrom, ss.from), zap.String(maillog.FieldTo, to))
		return errRelayDenied
	}
	if ss.srv.routeFor(to) < 0 {
		ss.srv.reject("no_route")
		ss.srv.maillog.Refused("recipient refused: no route", ss.conn.remote.Addr(),
			zap.String(maillog.FieldFrom, ss.from), zap.String(maillog.FieldTo, to))
		return errNoRoute
	}
	for _, r := range ss.rcpts {
		if r.Address == to {
			return nil // a duplicate RCPT is accepted and delivered once
		}
	}
	r := &spool.Recipient{Address: to, Status: spool.StatusQueued}
	if opts != nil {
		for _, n := range opts.Notify {
			r.Notify = append(r.Notify, string(n))
		}
		if opts.OriginalRecipient != "" {
			r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	ss.rcpts = append(ss.rcpts, r)
	return nil
}

// Data implements smtp.Session: the message goes to the spool, and the
// reply is 250 only after the record is durable.
func (ss *session) Data(r io.Reader) error {
	ss.conn.progress()
	if requiresTLSFirst(ss.srv.level, ss.isTLS(), "DATA") {
		return errTLSRequired
	}
	if !ss.hasFrom || len(ss.rcpts) == 0 {
		return errNoSender
	}
	start := time.Now()
	ss.conn.startData()
	defer ss.conn.endData()

	sp := ss.srv.app.spool
	draft, err := sp.Create()
	if err != nil {
		ss.srv.reject("spool")
		ss.srv.logger.Error("spool unavailable", zap.Error(err))
		return errSpoolUnavailable
	}
	defer draft.Abort()

	addrs := addresses(ss.rcpts)
	proto := message.Protocol(ss.conn.esmtp.Load(), ss.isTLS(), ss.authID != "")
	remote := ss.conn.remote.Addr()
	if _, err := draft.WriteString(message.Received(ss.srv.Hostname, ss.helo, remote, proto,
		draft.ID(), ss.tlsState(), addrs, start)); err != nil {
		return ss.spoolFailed(err)
	}
	err = message.Copy(draft, r, ss.srv.BareNewlines == BareNewlinesNormalize)
	if errors.Is(err, message.ErrBareNewline) {
		err = errBareNewline
	}
	if err != nil {
		var smtpErr *smtp.SMTPError
		var netErr net.Error
		switch {
		case errors.As(err, &smtpErr):
			switch smtpErr {
			case errBareNewline:
				ss.srv.reject("bare_newline")
			case smtp.ErrDataTooLarge:
				ss.srv.reject("size")
			}
			// The rest of the message is unread. go-smtp drains it after
			// we return; if that drain timed out, it would read what is
			// left as commands, and a sender could smuggle a second
			// transaction in the tail. The drain stays under the data
			// deadline, and a timeout in it closes the connection.
			ss.conn.startDrain()
			if smtpErr == errBareNewline {
				ss.srv.maillog.Refused("message refused: bare newline in data", remote, zap.String(maillog.FieldFrom, ss.from))
			}
			return smtpErr // 552 too large, 550 bare newline
		case errors.Is(err, smtp.ErrTooLongLine):
			ss.srv.reject("line_length")
			ss.conn.hangUpAfterReply()
			return errTooLongLine
		case errors.As(err, &netErr) && netErr.Timeout():
			ss.srv.reject("data_timeout")
			ss.conn.hangUpAfterReply()
			return errDataTimeout
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, smtp.ErrDataReset):
			// The client hung up, or sent RSET in the middle of BDAT:
			// nothing to acknowledge, nothing wrong with the spool.
			return err
		}
		// The rest of the message is unread; keep go-smtp's drain of it
		// under the data deadline, as above.
		ss.conn.startDrain()
		return ss.spoolFailed(err)
	}
	if ss.conn.peerGone.Load() {
		// The client hung up before we could answer: it cannot have seen
		// a 250, so it will send again, and what we read may be cut off
		// (go-smtp v0.25.1 takes a BDAT chunk that ends early with the
		// connection for a whole one). Not accepting it is the only
		// answer that neither duplicates nor truncates mail.
		ss.srv.maillog.Refused("message not accepted: the client hung up before the end of data was answered", remote,
			zap.String(maillog.FieldFrom, ss.from))
		return io.ErrUnexpectedEOF
	}

	res, err := ss.runChecks(draft, ss.rcpts)
	if err != nil {
		return err // the draft is aborted: nothing is queued
	}
	if err := ss.sign(draft); err != nil {
		return err
	}
	env := &spool.Envelope{
		Server:     ss.srv.name,
		From:       res.from,
		Recipients: res.rcpts,
		Body:       string(ss.mailOpts.Body),
		SMTPUTF8:   ss.mailOpts.UTF8,
		RequireTLS: ss.mailOpts.RequireTLS,
		EnvID:      ss.mailOpts.EnvelopeID,
		Ret:        string(ss.mailOpts.Return),
		Client: spool.Client{
			IP:       remote.String(),
			Helo:     ss.helo,
			Protocol: proto,
			Auth:     ss.authID,
			TLS:      ss.tlsInfo(),
		},
		Received:   start.UTC(),
		Quarantine: res.quarantine,
	}
	if res.quarantine != nil {
		return ss.quarantine(draft, env, start)
	}
	committing := time.Now()
	if err := draft.Commit(env); err != nil {
		return ss.spoolFailed(err)
	}
	m := ss.srv.app.metrics
	m.AcceptLatency.WithLabelValues(ss.srv.name).Observe(time.Since(committing).Seconds())
	m.Messages.WithLabelValues(ss.srv.name, "accepted", "").Inc()
	m.Bytes.WithLabelValues(ss.srv.name).Add(float64(env.Size))
	ss.conn.countMessage()
	ss.srv.app.queued(env.ID)
	ss.srv.maillog.MessageAccepted(maillog.Accepted{ID: env.ID, Remote: remote, From: env.From, To: addresses(env.Recipients),
		Size: env.Size, Protocol: proto, Took: time.Since(start), TLS: ss.tlsState()})
	return reply(250, 2, 0, 0, "OK: queued as "+env.ID)
}

// sign adds the server's DKIM signatures to mail from relay_networks
// and authenticated clients, after every change of ours and of the
// checks, so that the spooled record is the signed one.
func (ss *session) sign(draft *spool.Draft) error {
	signer := ss.srv.signer
	if signer == nil || (ss.authID == "" && !ss.srv.relay.MayRelay(ss.conn.remote.Addr())) {
		return nil
	}
	if err := draft.Flush(); err != nil {
		return ss.spoolFailed(err)
	}
	fields, err := signer.Sign(draft.Reader())
	if errors.Is(err, dkimsign.ErrNotSigned) {
		// A message that cannot be signed (no or several From:, a
		// header too large) goes out unsigned, as OpenDKIM lets it.
		ss.srv.logger.Warn("message not DKIM-signed", zap.String(maillog.FieldQueueID, draft.ID()), zap.Error(err))
		return nil
	}
	if err != nil {
		ss.srv.reject("dkim")
		ss.srv.logger.Error("DKIM signing failed", zap.String(maillog.FieldQueueID, draft.ID()), zap.Error(err))
		return errSigningFailed
	}
	if len(fields) == 0 {
		return nil
	}
	if err := draft.Rewrite(func(w io.Writer, old io.Reader) error {
		for _, f := range fields {
			if _, err := io.WriteString(w, f); err != nil {
				return err
			}
		}
		_, err := io.Copy(w, old)
		return err
	}); err != nil {
		return ss.spoolFailed(err)
	}
	return nil
}

// quarantine commits a message a check quarantined into the
// quarantine: to the sender it is accepted (250), and it is not
// delivered until an administrator releases it.
func (ss *session) quarantine(draft *spool.Draft, env *spool.Envelope, start time.Time) error {
	q := ss.srv.app.quarantine
	if q == nil {
		return ss.spoolFailed(errors.New("the quarantine is not open"))
	}
	if err := draft.CommitTo(q, env); err != nil {
		return ss.spoolFailed(err)
	}
	m := ss.srv.app.metrics
	m.Messages.WithLabelValues(ss.srv.name, "quarantined", "").Inc()
	m.Quarantined.WithLabelValues(ss.srv.name, env.Quarantine.Check).Inc()
	ss.conn.countMessage()
	ss.srv.maillog.Quarantined(env, ss.conn.remote.Addr(), time.Since(start))
	return reply(250, 2, 0, 0, "OK: queued as "+env.ID)
}

func (ss *session) spoolFailed(err error) error {
	ss.srv.reject("spool")
	ss.srv.logger.Error("writing to spool failed; message not accepted", zap.Error(err))
	return errSpoolUnavailable
}

// tlsState is the session's TLS connection state, nil in plaintext.
func (ss *session) tlsState() *tls.ConnectionState {
	if f := ss.conn.tlsSession(); f != nil {
		return &f.state
	}
	return nil
}

// tlsInfo is what the spool record keeps of the session's TLS.
func (ss *session) tlsInfo() *spool.TLSInfo {
	f := ss.conn.tlsSession()
	if f == nil {
		return nil
	}
	cs := &f.state
	info := &spool.TLSInfo{
		Version:    tls.VersionName(cs.Version),
		Cipher:     tls.CipherSuiteName(cs.CipherSuite),
		ServerName: cs.ServerName,
	}
	if len(cs.PeerCertificates) > 0 {
		info.PeerSubject = cs.PeerCertificates[0].Subject.String()
		info.PeerVerified = f.peerVerified
	}
	return info
}
