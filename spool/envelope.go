package spool

import (
	"encoding/json"
	"fmt"
	"time"
)

// EnvelopeVersion is the version of the envelope encoding written now.
const EnvelopeVersion = 1

// Envelope is everything about a queued message except its content.
type Envelope struct {
	// Version of this encoding, for upgrades of the spool format.
	Version int `json:"version"`
	// ID is the queue id.
	ID string `json:"id"`
	// Server is the name of the smtp server that accepted the message;
	// its routes deliver it.
	Server string `json:"server"`
	// From is the reverse-path; empty for the null sender (bounces).
	From string `json:"from"`
	// Recipients, each with its own delivery state.
	Recipients []*Recipient `json:"recipients"`
	// Size of the stored message in bytes, Received: header included.
	Size int64 `json:"size"`
	// Body is the MAIL BODY= parameter (7BIT, 8BITMIME, BINARYMIME).
	Body string `json:"body,omitempty"`
	// SMTPUTF8 is set when the sender used the SMTPUTF8 parameter.
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
	// RequireTLS is set when the sender asked for REQUIRETLS (RFC 8689).
	RequireTLS bool `json:"requiretls,omitempty"`
	// EnvID is the DSN envelope id (RFC 3461 ENVID).
	EnvID string `json:"envid,omitempty"`
	// Ret is the DSN RET parameter (FULL or HDRS).
	Ret string `json:"ret,omitempty"`
	// Client is who handed the message to us.
	Client Client `json:"client"`
	// Received is when the message was accepted.
	Received time.Time `json:"received"`
	// Quarantine is set on a message a content check quarantined; it
	// is kept undelivered until an administrator releases or deletes
	// it.
	Quarantine *Quarantine `json:"quarantine,omitempty"`
}

// Quarantine is why a message was quarantined.
type Quarantine struct {
	// Check is the module name of the check that quarantined it
	// (clamav, rspamd, milter).
	Check string `json:"check"`
	// Reason is what the engine found: a virus signature, rspamd's
	// symbols, a milter's reason.
	Reason string `json:"reason,omitempty"`
	// Reasons are the other checks' findings on the message, one line
	// each, in the order they ran.
	Reasons []string `json:"reasons,omitempty"`
	// At is when the message was quarantined.
	At time.Time `json:"at"`
}

// Client describes the SMTP client that submitted a message.
type Client struct {
	// IP is the client's address (after PROXY protocol, if any).
	IP string `json:"ip"`
	// Helo is the name the client gave in HELO/EHLO.
	Helo string `json:"helo"`
	// Protocol is the RFC 3848 "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPSA...
	Protocol string `json:"protocol"`
	// Auth is the authenticated identity, if any.
	Auth string `json:"auth,omitempty"`
	// TLS describes the TLS session, nil for plaintext.
	TLS *TLSInfo `json:"tls,omitempty"`
}

// TLSInfo records the facts of a TLS session.
type TLSInfo struct {
	// Version is the protocol version, e.g. "TLS1.3".
	Version string `json:"version"`
	// Cipher is the cipher suite name.
	Cipher string `json:"cipher"`
	// ServerName is the SNI the client sent (empty if none).
	ServerName string `json:"server_name,omitempty"`
	// PeerSubject is the subject of the peer's certificate, if any.
	PeerSubject string `json:"peer_subject,omitempty"`
	// PeerVerified reports whether that certificate chain verified.
	PeerVerified bool `json:"peer_verified,omitempty"`
}

// Recipient delivery states.
const (
	StatusQueued   = "queued"
	StatusDeferred = "deferred"
	StatusSent     = "sent"
	StatusBounced  = "bounced"
)

// Recipient is one forward-path of a message and its delivery state.
type Recipient struct {
	// Address is the recipient mailbox as given in RCPT TO.
	Address string `json:"address"`
	// Notify is the DSN NOTIFY parameter (NEVER, SUCCESS, FAILURE, DELAY).
	Notify []string `json:"notify,omitempty"`
	// ORcpt is the DSN ORCPT parameter, "type;address".
	ORcpt string `json:"orcpt,omitempty"`
	// Status is one of queued, deferred, sent, bounced.
	Status string `json:"status"`
	// Attempts counts delivery attempts so far.
	Attempts int `json:"attempts,omitempty"`
	// NextAttempt is when the next attempt is due (deferred only).
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// LastError is the last failure, in the remote's words where possible.
	LastError string `json:"last_error,omitempty"`
	// Code is the enhanced status code of the last attempt ("4.4.1").
	Code string `json:"code,omitempty"`
	// Remote is the next hop of the last attempt, "host[ip]:port".
	Remote string `json:"remote,omitempty"`
	// Done is when the recipient reached sent or bounced.
	Done time.Time `json:"done,omitzero"`
}

// Pending reports whether the recipient still needs delivering.
func (r *Recipient) Pending() bool {
	return r.Status == StatusQueued || r.Status == StatusDeferred
}

// DecodeEnvelope parses an envelope file, rejecting what this version
// cannot read rather than guessing.
func DecodeEnvelope(data []byte) (*Envelope, error) {
	var env Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, fmt.Errorf("decoding envelope: %w", err)
	}
	if env.Version != EnvelopeVersion {
		return nil, fmt.Errorf("decoding envelope: unsupported version %d", env.Version)
	}
	if !validID(env.ID) {
		return nil, fmt.Errorf("decoding envelope: invalid id %q", env.ID)
	}
	if len(env.Recipients) == 0 {
		return nil, fmt.Errorf("decoding envelope %s: no recipients", env.ID)
	}
	for i, r := range env.Recipients {
		if r == nil || r.Address == "" {
			return nil, fmt.Errorf("decoding envelope %s: recipient %d is empty", env.ID, i)
		}
	}
	return &env, nil
}
