// Package message is what the gateway does to the text of a message it
// receives: the CRLF discipline of its data (bare LF and bare CR, the
// SMTP smuggling class) and the trace header it adds. Later header
// changes (checks, DKIM) belong here too: what is spooled is what is
// delivered.
package message

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
)

// ErrBareNewline is returned for message data with a bare LF or CR.
// RFC 5321 2.3.8 allows CR and LF only together; a receiver that lets
// them through alone helps SMTP smuggling (CVE-2023-51764 and kin).
var ErrBareNewline = errors.New("message contains a bare LF or bare CR")

// Copy copies message data (already dot-unstuffed by go-smtp) to dst,
// enforcing CRLF line endings: with normalize it rewrites each bare LF
// and bare CR to CRLF, otherwise it stops with ErrBareNewline at the
// first one. Runs between line ends are copied whole.
func Copy(dst io.Writer, src io.Reader, normalize bool) error {
	var (
		buf    [32 << 10]byte
		prevCR bool // the last chunk ended in a CR not yet written
	)
	crlf := []byte("\r\n")
	for {
		n, rerr := src.Read(buf[:])
		chunk := buf[:n]
		if prevCR && len(chunk) > 0 {
			prevCR = false
			if chunk[0] == '\n' {
				chunk = chunk[1:]
			} else if !normalize {
				return ErrBareNewline
			}
			if _, err := dst.Write(crlf); err != nil {
				return err
			}
		}
		for len(chunk) > 0 {
			j := bytes.IndexAny(chunk, "\r\n")
			if j < 0 {
				if _, err := dst.Write(chunk); err != nil {
					return err
				}
				break
			}
			if _, err := dst.Write(chunk[:j]); err != nil {
				return err
			}
			switch {
			case chunk[j] == '\r' && j+1 == len(chunk):
				prevCR = true
				chunk = nil
				continue
			case chunk[j] == '\r' && chunk[j+1] == '\n':
				chunk = chunk[j+2:]
			case !normalize:
				return ErrBareNewline
			default:
				chunk = chunk[j+1:]
			}
			if _, err := dst.Write(crlf); err != nil {
				return err
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				return rerr
			}
			if prevCR {
				if !normalize {
					return ErrBareNewline
				}
				_, err := dst.Write(crlf)
				return err
			}
			return nil
		}
	}
}

// Protocol is the RFC 3848 "with" keyword for a session.
func Protocol(esmtp, isTLS, authenticated bool) string {
	if !esmtp {
		return "SMTP"
	}
	p := "ESMTP"
	if isTLS {
		p += "S"
	}
	if authenticated {
		p += "A"
	}
	return p
}

// Received builds our trace header (RFC 5321 4.4), laid out like
// Postfix's so that mail admins read it at a glance. The TLS comment
// names the protocol version and cipher. "for" is given only with one
// recipient, so as not to disclose Bcc recipients to each other.
func Received(by, helo string, ip netip.Addr, proto, id string, cs *tls.ConnectionState, rcpts []string, now time.Time) string {
	var b strings.Builder
	lit := ip.String()
	if ip.Is6() && !ip.Is4In6() {
		lit = "IPv6:" + lit
	} else {
		lit = ip.Unmap().String()
	}
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n", sanitizeHeaderWord(helo), lit)
	if cs != nil {
		fmt.Fprintf(&b, "\t(using %s with cipher %s)\r\n",
			TLSVersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	}
	fmt.Fprintf(&b, "\tby %s (caddy-smtp) with %s id %s", by, proto, id)
	if len(rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", sanitizeHeaderWord(rcpts[0]))
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	return b.String()
}

// TLSVersionName is "TLSv1.3"-style, as Postfix writes it.
func TLSVersionName(v uint16) string {
	return strings.Replace(tls.VersionName(v), "TLS ", "TLSv", 1)
}

// sanitizeHeaderWord keeps client-supplied text from breaking out of a
// header: printable ASCII without parentheses, at most 255 bytes.
func sanitizeHeaderWord(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	out := []byte(s)
	for i, c := range out {
		if c < 0x21 || c > 0x7e || c == '(' || c == ')' || c == ';' {
			out[i] = '?'
		}
	}
	if len(out) == 0 {
		return "unknown"
	}
	return string(out)
}
