// Package clamav is the smtp.checks.clamav module: each message is sent
// to clamd with its INSTREAM command (over TCP or a unix socket), and a
// message in which clamd finds a virus is refused.
//
// Written here: clamd's INSTREAM is a few lines (a length-prefixed chunk
// stream and one reply line); the Go clients around are unmaintained.
package clamav

import (
	"bufio"
	"bytes"
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

	"github.com/caddy-smtp/caddy-smtp/checks"
)

func init() {
	caddy.RegisterModule(ClamAV{})
}

// ClamAV scans messages with clamd.
type ClamAV struct {
	checks.Options

	// clamd's address, a Caddy network address: `tcp/127.0.0.1:3310`
	// or `unix//run/clamav/clamd.ctl`.
	Address string `json:"address,omitempty"`

	// What a message with a virus gets: `reject` (default: 550 5.7.1
	// with the signature's name) or `quarantine` (250 to the sender;
	// kept undelivered in the quarantine with the signature's name).
	Action string `json:"action,omitempty"`

	addr caddy.NetworkAddress
}

// CaddyModule returns the Caddy module information.
func (ClamAV) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp.checks.clamav",
		New: func() caddy.Module { return new(ClamAV) },
	}
}

// Provision parses the address and the options.
func (c *ClamAV) Provision(caddy.Context) error {
	if c.Address == "" {
		return errors.New("checks.clamav.address: clamd's address is required (tcp/HOST:PORT or unix//PATH)")
	}
	addr, err := caddy.ParseNetworkAddressWithDefaults(c.Address, "tcp", 3310)
	if err != nil {
		return fmt.Errorf("checks.clamav.address: %w", err)
	}
	if addr.PortRangeSize() > 1 {
		return fmt.Errorf("checks.clamav.address: %q: one address, not a range", c.Address)
	}
	c.addr = addr
	switch c.Action {
	case "", "reject":
		c.Action = "reject"
	case "quarantine":
	default:
		return fmt.Errorf("checks.clamav.action: %q is not one of reject, quarantine", c.Action)
	}
	return c.Options.Provision("checks.clamav")
}

// maxReply bounds what is read of clamd's answer.
const maxReply = 4096

// chunk is the size of the INSTREAM chunks sent.
const chunk = 64 << 10

// Check streams the message to clamd and reads its verdict.
func (c *ClamAV) Check(ctx context.Context, m *checks.Message) (checks.Verdict, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, c.addr.Network, c.addr.JoinHostPort(0))
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("clamd at %s: %w", c.Address, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	msg, err := m.Open()
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("reading the message: %w", err)
	}
	w := bufio.NewWriterSize(conn, chunk+4)
	w.WriteString("zINSTREAM\x00")
	buf := make([]byte, chunk)
	var size [4]byte
	for {
		n, rerr := io.ReadFull(msg, buf)
		if n > 0 {
			binary.BigEndian.PutUint32(size[:], uint32(n))
			w.Write(size[:])
			if _, err := w.Write(buf[:n]); err != nil {
				return c.afterWriteError(conn, err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return checks.Verdict{}, fmt.Errorf("reading the message: %w", rerr)
		}
	}
	w.Write([]byte{0, 0, 0, 0})
	if err := w.Flush(); err != nil {
		return c.afterWriteError(conn, err)
	}
	reply, err := bufio.NewReader(io.LimitReader(conn, maxReply)).ReadString(0)
	if err != nil {
		return checks.Verdict{}, fmt.Errorf("clamd at %s: no answer: %v", c.Address, err)
	}
	v, err := verdict(strings.TrimSuffix(reply, "\x00"))
	if err == nil && v.Action == checks.Reject && c.Action == "quarantine" {
		v.Action, v.Reply = checks.Quarantine, ""
	}
	return v, err
}

// afterWriteError reads what clamd said before it closed the stream: a
// stream over its StreamMaxLength is answered and then cut off, which
// is the message's size, not clamd being down.
func (c *ClamAV) afterWriteError(conn net.Conn, werr error) (checks.Verdict, error) {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if reply, err := bufio.NewReader(io.LimitReader(conn, maxReply)).ReadString(0); err == nil {
		return verdict(strings.TrimSuffix(reply, "\x00"))
	}
	return checks.Verdict{}, fmt.Errorf("clamd at %s: %w", c.Address, werr)
}

// verdict reads clamd's answer to INSTREAM: "stream: OK",
// "stream: <signature> FOUND", or an error ("... ERROR").
func verdict(reply string) (checks.Verdict, error) {
	r := strings.TrimPrefix(reply, "stream: ")
	switch {
	case r == "OK":
		return checks.Verdict{Action: checks.Accept}, nil
	case strings.HasSuffix(r, " FOUND"):
		sig := strings.TrimSpace(strings.TrimSuffix(r, " FOUND"))
		if sig == "" || len(sig) > 256 || strings.ContainsAny(sig, "\r\n") {
			return checks.Verdict{}, fmt.Errorf("clamd: malformed answer %q", truncate(reply))
		}
		return checks.Verdict{Action: checks.Reject, Reason: sig, Reply: "Virus found: " + sig}, nil
	}
	if strings.Contains(r, "size limit exceeded") {
		return checks.Verdict{}, &checks.SkipError{Reason: "the message is over clamd's StreamMaxLength (set max_size no larger)"}
	}
	return checks.Verdict{}, fmt.Errorf("clamd: %q", truncate(reply))
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("?")))
}

// UnmarshalCaddyfile parses (the check keyword and module name already
// read by the server's `check` directive):
//
//	check clamav <address> {
//		action         reject|quarantine
//		timeout        <duration>
//		on_error       tempfail|accept
//		max_size       <size>
//		max_concurrent <n>
//	}
func (c *ClamAV) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the module name
	if !d.AllArgs(&c.Address) {
		return d.Err("clamav needs clamd's address: tcp/HOST:PORT or unix//PATH")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "action":
			if !d.AllArgs(&c.Action) {
				return d.ArgErr()
			}
		default:
			err = checks.ParseOption(d, &c.Options)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*ClamAV)(nil)
	_ checks.Check          = (*ClamAV)(nil)
	_ caddyfile.Unmarshaler = (*ClamAV)(nil)
)
