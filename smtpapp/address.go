package smtpapp

import (
	"github.com/emersion/go-smtp"

	"github.com/caddy-smtp/caddy-smtp/address"
)

// Replies to an address that package address refuses.
var (
	errBadRcptSyntax   = reply(501, 5, 1, 3, "Bad recipient address syntax")
	errBadSenderSyntax = reply(501, 5, 1, 7, "Bad sender address syntax")
	errNotUTF8         = reply(553, 5, 6, 7, "Address is not valid UTF-8")
)

// addressProblem checks a non-null mailbox (address.Check); it returns
// nil when the address is fine, or the reply that refuses it, worded
// for a recipient (sender false) or a sender (sender true).
func addressProblem(addr string, smtputf8, sender bool) *smtp.SMTPError {
	switch address.Check(addr, smtputf8) {
	case address.OK:
		return nil
	case address.NotUTF8:
		return errNotUTF8
	case address.NeedsSMTPUTF8:
		return errNeedsSMTPUTF8
	}
	if sender {
		return errBadSenderSyntax
	}
	return errBadRcptSyntax
}
