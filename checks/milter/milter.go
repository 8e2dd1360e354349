// Package milter is the smtp.checks.milter module: each message is
// given to a milter (Sendmail's mail filter protocol, which
// clamav-milter, rspamd's proxy, OpenDKIM and most filters speak) at the
// end of its data, envelope first, and the milter's answer decides:
// reject and tempfail (with the milter's reply when it gives one),
// discard, or accept. The protocol is github.com/d--j/go-milter's client.
//
// Changes a milter asks for (headers added, inserted, changed or
// deleted; a new body; the sender and recipients) and its quarantine
// action are applied by the server before the message is committed.
package milter

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	gomilter "github.com/d--j/go-milter"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/message"
)

func init() {
	caddy.RegisterModule(Milter{})
}

// Milter runs messages through a milter.
type Milter struct {
	checks.Options

	// The milter's address, a Caddy network address: `tcp/127.0.0.1:8891`
	// or `unix//run/clamav/clamav-milter.ctl`.
	Address string `json:"address,omitempty"`

	addr caddy.NetworkAddress
}

// CaddyModule returns the Caddy module information.
func (Milter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.checks.milter",
		New: func() caddy.Module { return new(Milter) },
	}
}

// maxRead bounds what is read from a milter per message beyond the
// message's own size (go-milter accepts packets up to 512 MiB; a milter
// that replaces the body may send the message's size back).
const maxRead = 1 << 20

// Provision parses the address and the options.
func (m *Milter) Provision(caddy.Context) error {
	if m.Address == "" {
		return errors.New("checks.milter.address: the milter's address is required (tcp/HOST:PORT or unix//PATH)")
	}
	addr, err := caddy.ParseNetworkAddress(m.Address)
	if err != nil {
		return fmt.Errorf("checks.milter.address: %w", err)
	}
	if addr.PortRangeSize() > 1 || (!addr.IsUnixNetwork() && addr.StartPort == 0) {
		return fmt.Errorf("checks.milter.address: %q: one address with its port", m.Address)
	}
	m.addr = addr
	if err := m.Options.Provision("checks.milter"); err != nil {
		return err
	}
	return nil
}

// Check runs one milter session for the message.
func (m *Milter) Check(ctx context.Context, msg *checks.Message) (checks.Verdict, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, m.addr.Network, m.addr.JoinHostPort(0))
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("milter at %s: %w", m.Address, err)
	}
	lc := &limitedConn{Conn: conn, left: maxRead + 2*msg.Size, hdrOff: 4}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()); conn.Close() })
	defer stop()
	// Every action go-milter handles is offered: milters refuse to
	// negotiate without the ones they may use (rspamd asks for all of
	// them), and the server applies each (package doc).
	client := gomilter.NewClient(m.addr.Network, m.addr.JoinHostPort(0),
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks),
		gomilter.WithReadTimeout(time.Duration(m.Timeout)),
		gomilter.WithWriteTimeout(time.Duration(m.Timeout)),
		gomilter.WithDialer(oneConn{lc}),
	)
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroMTAFQDN, msg.Hostname)
	macros.Set(gomilter.MacroDaemonName, "caddy-smtp")
	macros.Set(gomilter.MacroQueueId, msg.QueueID)
	if msg.Auth != "" {
		macros.Set(gomilter.MacroAuthAuthen, msg.Auth)
	}
	if msg.TLS != nil {
		macros.Set(gomilter.MacroTlsVersion, tlsVersion(msg.TLS.Version))
	}
	s, err := client.Session(macros)
	if err != nil {
		return checks.Verdict{}, m.wrap(ctx, "negotiation", err)
	}
	defer s.Close()
	v, err := m.run(s, macros, msg)
	if err != nil {
		return checks.Verdict{}, m.wrap(ctx, "", err)
	}
	return v, nil
}

// run is the session, command by command; the first answer that is not
// "continue" is the verdict.
func (m *Milter) run(s *gomilter.ClientSession, macros *gomilter.MacroBag, msg *checks.Message) (checks.Verdict, error) {
	family, ip := gomilter.FamilyInet, msg.ClientIP.Unmap()
	if ip.Is6() {
		family = gomilter.FamilyInet6
	}
	steps := []func() (*gomilter.Action, error){
		func() (*gomilter.Action, error) {
			if !ip.IsValid() {
				return s.Conn("localhost", gomilter.FamilyUnknown, 0, "")
			}
			return s.Conn("["+ip.String()+"]", family, msg.ClientPort, ip.String())
		},
		func() (*gomilter.Action, error) { return s.Helo(msg.Helo) },
		func() (*gomilter.Action, error) {
			macros.Set(gomilter.MacroMailAddr, msg.From)
			return s.Mail("<"+msg.From+">", "")
		},
	}
	for _, rcpt := range msg.Rcpts {
		steps = append(steps, func() (*gomilter.Action, error) {
			macros.Set(gomilter.MacroRcptAddr, rcpt)
			return s.Rcpt("<"+rcpt+">", "")
		})
	}
	steps = append(steps, s.DataStart)
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return checks.Verdict{}, err
		}
		if v, done := verdict(act); done {
			return v, nil
		}
	}
	r, err := msg.Open()
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the message: %w", err)
	}
	br := bufio.NewReader(r)
	fields, first, err := message.ReadHeader(br)
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the message's header: %w", err)
	}
	for _, f := range fields {
		act, err := s.HeaderField(f.Name, f.Value(), nil)
		if err != nil {
			return checks.Verdict{}, err
		}
		if v, done := verdict(act); done {
			return v, nil
		}
	}
	act, err := s.HeaderEnd()
	if err != nil {
		return checks.Verdict{}, err
	}
	if v, done := verdict(act); done {
		return v, nil
	}
	mods, act, err := s.BodyReadFrom(io.MultiReader(strings.NewReader(first), br))
	if err != nil {
		return checks.Verdict{}, err
	}
	v, _ := verdict(act)
	if v.Action == checks.Accept && len(mods) > 0 {
		if err := changes(&v, mods); err != nil {
			return checks.Verdict{}, err
		}
	}
	return v, nil
}

// changes turns a milter's modification actions into the verdict's
// changes (applied by the server before the commit), and its
// quarantine action into the verdict. go-milter hands over what the
// milter sent, within the connection's read budget.
func changes(v *checks.Verdict, mods []gomilter.ModifyAction) error {
	var body []byte
	replaced := false
	for _, m := range mods {
		switch m.Type {
		case gomilter.ActionAddHeader:
			v.Edits = append(v.Edits, message.HeaderEdit{Op: message.AddHeader, Name: m.HeaderName, Value: m.HeaderValue})
		case gomilter.ActionInsertHeader:
			v.Edits = append(v.Edits, message.HeaderEdit{Op: message.InsertHeader, Name: m.HeaderName,
				Value: m.HeaderValue, Index: int(min(m.HeaderIndex, 1<<20))})
		case gomilter.ActionChangeHeader:
			// libmilter counts from 1; Sendmail takes 0 for 1.
			v.Edits = append(v.Edits, message.HeaderEdit{Op: message.ChangeHeader, Name: m.HeaderName,
				Value: m.HeaderValue, Index: int(max(min(m.HeaderIndex, 1<<20), 1))})
		case gomilter.ActionReplaceBody:
			replaced = true
			body = append(body, m.Body...)
		case gomilter.ActionChangeFrom:
			from := unbracket(m.From)
			v.From = &from
		case gomilter.ActionAddRcpt:
			v.AddRcpts = append(v.AddRcpts, unbracket(m.Rcpt))
		case gomilter.ActionDelRcpt:
			v.DelRcpts = append(v.DelRcpts, unbracket(m.Rcpt))
		case gomilter.ActionQuarantine:
			v.Action = checks.Quarantine
			v.Reason = "quarantined by the milter"
			if r := checks.OneLine(m.Reason); r != "" {
				v.Reason += ": " + r
			}
		default:
			return fmt.Errorf("unknown modification action %d", m.Type)
		}
	}
	if replaced {
		if body == nil {
			body = []byte{}
		}
		v.Body = body
	}
	return nil
}

// unbracket takes the angle brackets off a milter's address.
func unbracket(a string) string {
	a = strings.TrimSpace(a)
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		return a[1 : len(a)-1]
	}
	return a
}

// verdict maps a milter's answer; done is false for "continue".
func verdict(act *gomilter.Action) (v checks.Verdict, done bool) {
	if act == nil {
		return checks.Verdict{Action: checks.Accept}, true
	}
	switch act.Type {
	case gomilter.ActionContinue:
		return checks.Verdict{Action: checks.Accept}, false
	case gomilter.ActionAccept:
		return checks.Verdict{Action: checks.Accept, Reason: "accepted by the milter"}, true
	case gomilter.ActionDiscard:
		return checks.Verdict{Action: checks.Discard, Reason: "discarded by the milter"}, true
	case gomilter.ActionReject:
		return checks.Verdict{Action: checks.Reject, Reason: "rejected by the milter"}, true
	case gomilter.ActionTempFail:
		return checks.Verdict{Action: checks.Tempfail, Reason: "tempfail from the milter"}, true
	case gomilter.ActionRejectWithCode:
		text := replyText(act.SMTPReply)
		if act.SMTPCode >= 400 && act.SMTPCode < 500 {
			return checks.Verdict{Action: checks.Tempfail, Reply: text, Reason: "tempfail from the milter: " + text}, true
		}
		return checks.Verdict{Action: checks.Reject, Reply: text, Reason: "rejected by the milter: " + text}, true
	}
	// Skip and anything else the library passes on: go on.
	return checks.Verdict{Action: checks.Accept}, false
}

// replyText is the text of a milter's reply ("550 5.7.1 text", maybe
// several lines): the code and enhanced code are ours to set; the text
// is made one printable line of at most 200 bytes.
func replyText(reply string) string {
	line, _, _ := strings.Cut(reply, "\n")
	line = strings.TrimRight(line, "\r")
	// "550 5.7.1 text" or, the first line of several, "550-5.7.1 text".
	if len(line) >= 4 && (line[3] == ' ' || line[3] == '-') {
		line = line[4:]
		if code, rest, ok := strings.Cut(line, " "); ok && strings.Count(code, ".") == 2 {
			line = rest
		}
	}
	return checks.OneLine(line)
}

// wrap names the milter in an error and says when it was the check's
// time that ran out.
func (m *Milter) wrap(ctx context.Context, stage string, err error) error {
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if stage != "" {
		return fmt.Errorf("milter at %s: %s: %w", m.Address, stage, err)
	}
	return fmt.Errorf("milter at %s: %w", m.Address, err)
}

// oneConn hands go-milter the connection Check opened.
type oneConn struct{ c net.Conn }

// Dial returns the connection once.
func (o oneConn) Dial(string, string) (net.Conn, error) { return o.c, nil }

// limitedConn bounds what a milter may send: go-milter allocates a
// packet's announced length (up to 512 MiB) before reading it, and
// panics on an empty packet, so the length prefix of each packet is
// read here first and refused when it is zero or over what is left of
// the budget. go-milter reads each packet's 4-byte length, then its
// body; the framing is followed whatever sizes it reads in.
type limitedConn struct {
	net.Conn
	left   int64 // budget left
	hdr    [4]byte
	hdrOff int   // bytes of hdr handed over (4: none pending)
	body   int64 // bytes of the current packet's body still to read
}

// Errors of a milter's packets.
var (
	errTooMuch     = errors.New("the milter sent more than its read budget")
	errEmptyPacket = errors.New("the milter sent an empty packet")
)

// Read reads within the framing and the budget.
func (c *limitedConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.hdrOff < len(c.hdr) {
		n := copy(p, c.hdr[c.hdrOff:])
		c.hdrOff += n
		return n, nil
	}
	if c.body == 0 {
		if _, err := io.ReadFull(c.Conn, c.hdr[:]); err != nil {
			return 0, err
		}
		n := int64(binary.BigEndian.Uint32(c.hdr[:]))
		switch {
		case n == 0:
			return 0, errEmptyPacket
		case n > c.left:
			return 0, errTooMuch
		}
		c.left -= n
		c.body = n
		k := copy(p, c.hdr[:])
		c.hdrOff = k
		return k, nil
	}
	if int64(len(p)) > c.body {
		p = p[:c.body]
	}
	n, err := c.Conn.Read(p)
	c.body -= int64(n)
	return n, err
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0304:
		return "TLSv1.3"
	case 0x0303:
		return "TLSv1.2"
	}
	return ""
}

// UnmarshalCaddyfile parses (the check keyword and module name already
// read by the server's `check` directive):
//
//	check milter <address> {
//		timeout        <duration>
//		on_error       tempfail|accept
//		max_size       <size>
//		max_concurrent <n>
//	}
func (m *Milter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if !d.AllArgs(&m.Address) {
		return d.Err("milter needs the milter's address: tcp/HOST:PORT or unix//PATH")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := checks.ParseOption(d, &m.Options); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Milter)(nil)
	_ checks.Check          = (*Milter)(nil)
	_ caddyfile.Unmarshaler = (*Milter)(nil)
)
