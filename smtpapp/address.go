package smtpapp

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// Address syntax. go-smtp parses MAIL and RCPT and hands over the
// mailbox with any quotes of a quoted local part removed, and its client
// sends an address on as it is, unquoted. So an address whose local part
// needed quotes ("u@evil.test"@example.test) would reach the next hop as
// a different one (u@evil.test@example.test, or worse with spaces and
// ESMTP parameters): we accept only local parts that need no quoting
// (RFC 5322 dot-atom text) and domains that are host names or address
// literals (RFC 5321 4.1.2), and refuse the rest at MAIL or RCPT.

var (
	errBadRcptSyntax = &smtp.SMTPError{
		Code:         501,
		EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message:      "Bad recipient address syntax",
	}
	errBadSenderSyntax = &smtp.SMTPError{
		Code:         501,
		EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message:      "Bad sender address syntax",
	}
	errNotUTF8 = &smtp.SMTPError{
		Code:         553,
		EnhancedCode: smtp.EnhancedCode{5, 6, 7},
		Message:      "Address is not valid UTF-8",
	}
)

// addressProblem checks a non-null mailbox; it returns nil when the
// address is fine, or the reason it is not, as the reply's wording
// suits a recipient (sender false) or a sender (sender true).
// validAddressLiteral checks what stands between the brackets of an
// address literal (RFC 5321 4.1.3): an IPv4 address, "IPv6:" and an IPv6
// address, or a general literal, a tag (Ldh-str) ":" and printable ASCII
// but "[", "\\" and "]" (dcontent). Anything else, a control byte above
// all, would reach headers and logs.
func validAddressLiteral(lit string) bool {
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

func addressProblem(addr string, smtputf8, sender bool) *smtp.SMTPError {
	bad := errBadRcptSyntax
	if sender {
		bad = errBadSenderSyntax
	}
	if !utf8.ValidString(addr) {
		return errNotUTF8
	}
	if !smtputf8 && !isASCII(addr) {
		return errNeedsSMTPUTF8
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return bad
	}
	local, domain := addr[:at], addr[at+1:]
	for _, r := range local {
		if !(isAtext(r) || r == '.' || r >= 0x80) {
			return bad
		}
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") || !validAddressLiteral(domain[1:len(domain)-1]) {
			return bad
		}
		return nil
	}
	domain = strings.TrimSuffix(domain, ".")
	for _, label := range strings.Split(domain, ".") {
		if label == "" || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return bad
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r >= 0x80) {
				return bad
			}
		}
	}
	return nil
}

// isAtext reports whether r is RFC 5322 atext.
func isAtext(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// senderRouted reports whether a local part asks for routing by the
// next hop ("u%evil.test@example.com", "evil.test!u@example.com"). Many
// MTAs still honour these, so, like Postfix's allow_untrusted_routing
// = no, they are refused from clients that may not relay anyway.
func senderRouted(addr string) bool {
	at := strings.LastIndexByte(addr, '@')
	return at > 0 && strings.ContainsAny(addr[:at], "%!")
}
