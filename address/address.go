// Package address is what caddy-smtp knows about mail addresses: their
// domain, domain normalization, the syntax the gateway accepts, and
// sender-specified routing. Every other package asks here, so that one
// address has one domain everywhere (relay control, routes, the queue,
// delivery targets).
package address

import (
	"net/netip"
	"strings"
	"unicode/utf8"
)

// NormalizeDomain lower-cases a domain and drops one trailing dot. It is
// applied exactly once to an address's domain (in Domain): applying it
// twice would turn "example.com.." into a configured domain.
func NormalizeDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(d), ".")
}

// Domain returns the normalized domain of an address: what follows its
// last "@" ("" if there is none).
func Domain(addr string) string {
	_, domain := Split(addr)
	return NormalizeDomain(domain)
}

// Split cuts an address at its last "@" into local part and domain, as
// they are (domain "" when there is no "@").
func Split(addr string) (local, domain string) {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr, ""
	}
	return addr[:i], addr[i+1:]
}

// Problem is what is wrong with an address, for the reply that refuses
// it.
type Problem int

// Problems an address can have.
const (
	// OK: the address can be accepted and sent on as it is.
	OK Problem = iota
	// BadSyntax: not a local part that needs no quoting, "@", and a host
	// name or address literal.
	BadSyntax
	// NotUTF8: the bytes are not valid UTF-8.
	NotUTF8
	// NeedsSMTPUTF8: non-ASCII, and the transaction did not say SMTPUTF8.
	NeedsSMTPUTF8
)

// Check checks a non-null mailbox. go-smtp parses MAIL and RCPT and
// hands over the mailbox with the quotes of a quoted local part
// removed, and its client sends an address on as it is, unquoted. So an
// address whose local part needed quotes ("u@evil.test"@example.test)
// would reach the next hop as a different one (u@evil.test@example.test,
// or worse with spaces and ESMTP parameters): only local parts that need
// no quoting (RFC 5322 dot-atom text) and domains that are host names or
// address literals (RFC 5321 4.1.2) pass.
func Check(addr string, smtputf8 bool) Problem {
	if !utf8.ValidString(addr) {
		return NotUTF8
	}
	if !smtputf8 && !IsASCII(addr) {
		return NeedsSMTPUTF8
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return BadSyntax
	}
	local, domain := addr[:at], addr[at+1:]
	for _, r := range local {
		if !(isAtext(r) || r == '.' || r >= 0x80) {
			return BadSyntax
		}
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") || !validLiteral(domain[1:len(domain)-1]) {
			return BadSyntax
		}
		return OK
	}
	domain = strings.TrimSuffix(domain, ".")
	for _, label := range strings.Split(domain, ".") {
		if label == "" || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return BadSyntax
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r >= 0x80) {
				return BadSyntax
			}
		}
	}
	return OK
}

// validLiteral checks what stands between the brackets of an address
// literal (RFC 5321 4.1.3): an IPv4 address, "IPv6:" and an IPv6
// address, or a general literal, a tag (Ldh-str) ":" and printable ASCII
// but "[", "\\" and "]" (dcontent). Anything else, a control byte above
// all, would reach headers and logs.
func validLiteral(lit string) bool {
	if a, err := netip.ParseAddr(lit); err == nil {
		return a.Is4()
	}
	tag, rest, ok := strings.Cut(lit, ":")
	if !ok || tag == "" || rest == "" {
		return false
	}
	if strings.EqualFold(tag, "IPv6") {
		a, err := netip.ParseAddr(rest)
		return err == nil && a.Is6() && a.Zone() == ""
	}
	for _, r := range tag {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	if strings.HasPrefix(tag, "-") || strings.HasSuffix(tag, "-") {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; c < 33 || c > 126 || c == '[' || c == '\\' || c == ']' {
			return false
		}
	}
	return true
}

// isAtext reports whether r is RFC 5322 atext.
func isAtext(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// SenderRouted reports whether a local part asks for routing by the
// next hop ("u%evil.test@example.com", "evil.test!u@example.com"). Many
// MTAs still honour these, so, like Postfix's allow_untrusted_routing
// = no, the gateway refuses them from clients that may not relay anyway.
func SenderRouted(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	return at > 0 && strings.ContainsAny(addr[:at], "%!")
}

// IsASCII reports whether s is all ASCII.
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
