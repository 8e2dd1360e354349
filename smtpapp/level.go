package smtpapp

import (
	"fmt"
	"strings"
)

// Level is a server (receiving) TLS security level. The names are
// Postfix's smtpd_tls_security_level values.
type Level string

// Server TLS security levels.
const (
	// LevelNone: "No TLS encryption". STARTTLS is not offered.
	LevelNone Level = "none"
	// LevelMay: "Attempt TLS encryption". STARTTLS is offered, mail is
	// accepted with or without it. The default, and what RFC 3207 asks
	// of a public MX.
	LevelMay Level = "may"
	// LevelEncrypt: "Require TLS encryption". Mail transactions and AUTH
	// are refused until the client has done STARTTLS.
	LevelEncrypt Level = "encrypt"
)

// ParseLevel validates a server TLS level; empty means LevelMay.
func ParseLevel(s string) (Level, error) {
	switch Level(s) {
	case "":
		return LevelMay, nil
	case LevelNone, LevelMay, LevelEncrypt:
		return Level(s), nil
	}
	return "", fmt.Errorf("%q is not one of none, may, encrypt", s)
}

// ClientAuth is the server's client-certificate mode.
type ClientAuth string

// Client certificate modes.
const (
	// ClientAuthNone: "Do not request" a client certificate.
	ClientAuthNone ClientAuth = "none"
	// ClientAuthRequest: "Request" a certificate; accept clients without
	// one, and log whether a given one verified against client_ca.
	ClientAuthRequest ClientAuth = "request"
	// ClientAuthRequire: "Require" a certificate (verified against
	// client_ca when given); the handshake fails without one.
	ClientAuthRequire ClientAuth = "require"
)

// ParseClientAuth validates a client_auth mode; empty means none.
func ParseClientAuth(s string) (ClientAuth, error) {
	switch ClientAuth(s) {
	case "":
		return ClientAuthNone, nil
	case ClientAuthNone, ClientAuthRequest, ClientAuthRequire:
		return ClientAuth(s), nil
	}
	return "", fmt.Errorf("%q is not one of none, request, require", s)
}

// errTLSRequired is the reply of an encrypt-level server to MAIL, RCPT,
// DATA, BDAT and AUTH before STARTTLS (RFC 3207 section 4).
var errTLSRequired = reply(530, 5, 7, 0, "Must issue a STARTTLS command first")

// requiresTLSFirst reports whether a command must be refused with
// errTLSRequired: the level is encrypt and the session is not yet TLS.
func requiresTLSFirst(level Level, isTLS bool, verb string) bool {
	if level != LevelEncrypt || isTLS {
		return false
	}
	switch strings.ToUpper(verb) {
	case "MAIL", "RCPT", "DATA", "BDAT", "AUTH":
		return true
	}
	return false
}
