package senderauth

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/caddy-smtp/caddy-smtp/checks"
	"github.com/caddy-smtp/caddy-smtp/message"
)

// The Authentication-Results header (RFC 8601), written here: go-msgauth's
// authres.Format quotes a value by putting a backslash before each '"'
// but not before a backslash, so a sender's HELO of `a\";dmarc=pass;x=\"`
// closed the quoted string and added a result to our trusted header.

// arResult is one method's result.
type arResult struct {
	method, result string
	reason         string
	props          [][2]string // ptype.property, value
}

// formatAR formats the header's value, one result per line.
func formatAR(authserv string, rs []arResult) string {
	if len(rs) == 0 {
		return authserv + "; none"
	}
	var b strings.Builder
	b.WriteString(authserv)
	for _, r := range rs {
		b.WriteString(";\n\t" + r.method + "=" + r.result)
		if r.reason != "" {
			b.WriteString(" reason=" + quoted(r.reason))
		}
		for _, p := range r.props {
			if pvalueSafe(p[1]) {
				b.WriteString(" " + p[0] + "=" + p[1])
			}
		}
	}
	return b.String()
}

// quoted is an RFC 5322 quoted-string of printable ASCII: the value made
// one line by checks.OneLine, with '\' and '"' escaped.
func quoted(s string) string {
	s = checks.OneLine(s)
	s = strings.ReplaceAll(s, `\`, `\\`)
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// pvalueSafe: a property value is written only when it is a plain
// domain or local@domain of letters, digits and . _ + - = (an address
// that needs quoting, or anything else a sender chose, is left out
// rather than risk a misparse of our verdict).
func pvalueSafe(v string) bool {
	if v == "" || len(v) > 255 {
		return false
	}
	local, domain, hasAt := strings.Cut(v, "@")
	if !hasAt {
		local, domain = "", v
	}
	ok := func(s, extra string) bool {
		for i := 0; i < len(s); i++ {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(extra, c) >= 0) {
				return false
			}
		}
		return true
	}
	return domain != "" && domain[0] != '.' && ok(domain, ".-") && ok(local, "._+-=") // [local]@domain
}

// authservID is the authserv-id of an Authentication-Results value, as
// an RFC 8601 reader finds it: comments and the quotes of a quoted
// string taken off, a final dot dropped, lower case.
func authservID(id string) string {
	var b strings.Builder
	depth, quoted := 0, false
scan:
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case c == '\\' && i+1 < len(id):
			i++
			if depth == 0 {
				b.WriteByte(id[i])
			}
		case c == '(' && !quoted:
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		case c == '"':
			quoted = !quoted
		case c == ';' && !quoted:
			break scan // the first ';' outside comments and quotes
		default:
			b.WriteByte(c)
		}
	}
	f := strings.Fields(b.String())
	if len(f) == 0 {
		return ""
	}
	return strings.TrimSuffix(strings.ToLower(f[0]), ".")
}

// removeForged deletes every Authentication-Results that claims our
// authserv-id (RFC 8601 5: a sender's forgery), from the last up, so
// that the indexes of those before stay right.
func (a *Auth) removeForged(fields []message.Field) []message.HeaderEdit {
	var edits []message.HeaderEdit
	n := 0
	var forged []int
	for _, f := range fields {
		if strings.EqualFold(f.Name, "Authentication-Results") {
			n++
			if authservID(f.Value()) == strings.ToLower(a.authserv) {
				forged = append(forged, n)
			}
		}
	}
	for i := len(forged) - 1; i >= 0; i-- {
		edits = append(edits, message.HeaderEdit{Op: message.ChangeHeader, Name: "Authentication-Results", Index: forged[i]})
	}
	return edits
}

// Bounds of a header given to the DKIM verifier: go-msgauth joins a
// field's folded lines one by one, in time quadratic in the field.
const (
	maxVerifiedHeader = 1 << 20
	maxFoldCost       = 64 << 20 // sum over fields of lines × bytes
)

// unverifiable reads the header as go-msgauth will (every line up to
// the empty one) and says why it is too costly to verify, or "".
func unverifiable(r io.Reader) string {
	br := bufio.NewReader(r)
	var total, cost, lines, size int
	for {
		line, err := br.ReadString('\n')
		total += len(line)
		if total > maxVerifiedHeader {
			return fmt.Sprintf("a header over %d bytes: not verified", maxVerifiedHeader)
		}
		// The empty line as go-msgauth's reader sees it: LF, or one CR
		// and LF.
		end := err != nil || line == "\n" || line == "\r\n"
		if end || (line[0] != ' ' && line[0] != '\t') {
			cost += lines * size
			lines, size = 0, 0
		}
		if cost > maxFoldCost {
			return "a header folded too often to verify"
		}
		if end {
			return ""
		}
		lines++
		size += len(line)
	}
}
