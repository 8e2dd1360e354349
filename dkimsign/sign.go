package dkimsign

import (
	"bufio"
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/caddy-smtp/caddy-smtp/message"
)

// MaxHeaderSize bounds the header Sign reads into memory; a larger
// header is not signed (ErrNotSigned). Postfix's header_size_limit is
// 100 KiB; this is ten times that.
const MaxHeaderSize = 1 << 20

// maxHeaderList bounds the h= tag: go-msgauth writes it on one line,
// which must stay under SMTP's 998 (RFC 5322 2.1.1).
const maxHeaderList = 800

// maxFoldCost bounds the work go-msgauth's header reader does on a
// field of many lines: it joins them one at a time, copying the field
// so far each time, which costs about lines × length / 2 bytes of
// copying. A field of a thousand 60-byte lines costs 30 MB; the bound
// is about a tenth of a second, where the 1 MiB header of single-space
// lines that the bound refuses would take a minute, to sign and again
// to verify.
const maxFoldCost = 256 << 20

// oversigned are the fields whose absence is signed too (RFC 6376
// 8.15): each is listed in h= once more than it occurs, so that a field
// added in transit (a second From:, a Subject: where there was none)
// breaks the signature. RFC 6376 5.4.1's core fields and the MIME ones
// (a changed Content-Type changes how the body reads).
var oversigned = []string{
	"From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// signedIfPresent are the other fields RFC 6376 5.4.1 recommends
// signing (and RFC 8058 3: List-Unsubscribe-Post), signed as often as
// they occur: forwarders and lists may add their own.
var signedIfPresent = []string{
	"Sender", "In-Reply-To", "References",
	"Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "Resent-Message-ID",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
	"List-Post", "List-Owner", "List-Archive",
	"Content-Disposition", "Content-ID", "Content-Description", "Content-Language",
}

// Sign reads a message (header and body, CRLF line ends) once and
// returns the DKIM-Signature header fields to prepend to it, each whole
// with its CRLF, one per algorithm in the config's order: relaxed/
// relaxed canonicalisation, SHA-256, d= the From: domain, h= as
// oversigned and signedIfPresent say. Signature fields already in the
// message (another domain's) are left alone and not signed over.
//
// A message whose From: address is in another domain than the config's
// gets no fields and no error: there is nothing to sign for. A message
// whose signing domain cannot be told (no From: field, several, a From:
// with several addresses or none that parses, an ambiguous or too large
// header) gets no fields and an error wrapping ErrNotSigned that says
// why: it can go unsigned. Other errors are failures to read it.
func (s *Signer) Sign(msg io.Reader) ([]string, error) {
	if s == nil {
		return nil, nil
	}
	br := bufio.NewReader(msg)
	raw, fields, err := readHeader(br)
	if err != nil {
		return nil, err
	}

	domain, err := fromDomain(fields)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotSigned, err)
	}
	keys := s.keys[domain]
	if len(keys) == 0 {
		return nil, nil
	}
	headerKeys := signedKeys(fields)
	if n := len(strings.Join(headerKeys, ":")); n > maxHeaderList {
		return nil, fmt.Errorf("%w: the header fields to sign make an h= of %d characters (at most %d)", ErrNotSigned, n, maxHeaderList)
	}

	signers := make([]*dkim.Signer, 0, len(keys))
	closed := false
	defer func() {
		if !closed { // a failure: its error is the one returned
			for _, sg := range signers {
				sg.Close()
			}
		}
	}()
	writers := make([]io.Writer, 0, len(keys))
	for _, k := range keys {
		sg, err := dkim.NewSigner(&dkim.SignOptions{
			Domain:                 k.domain,
			Selector:               k.selector,
			Signer:                 k.signer,
			Hash:                   crypto.SHA256,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             headerKeys,
		})
		if err != nil {
			return nil, fmt.Errorf("dkim signer for %s: %v", k.selector, err)
		}
		signers = append(signers, sg)
		writers = append(writers, sg)
	}
	w := io.MultiWriter(writers...)
	if _, err := w.Write(raw); err != nil {
		return nil, fmt.Errorf("signing: %v", err)
	}
	if _, err := br.WriteTo(w); err != nil {
		return nil, fmt.Errorf("reading the message to sign: %v", err)
	}
	closed = true
	var errs []error
	for i, sg := range signers {
		if err := sg.Close(); err != nil {
			errs = append(errs, fmt.Errorf("signing with %s: %v", keys[i].selector, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	out := make([]string, 0, len(signers))
	for _, sg := range signers {
		out = append(out, sg.Signature())
	}
	return out, nil
}

// field is a header field: its name as go-msgauth compares it (spaces
// around it trimmed) and the whole field as it stands (filled in at
// the end of the header: a field's lines are added as offsets, so that
// a field of many lines costs no more than its length).
type field struct {
	name       string
	start, end int
	lines      int
	raw        string
}

// errHeaderTooLarge: a header over MaxHeaderSize.
var errHeaderTooLarge = fmt.Errorf("%w: the header is larger than %d bytes", ErrNotSigned, MaxHeaderSize)

// readHeader reads the header as DKIM verifiers read it (go-msgauth,
// OpenDKIM, dkimpy): every line up to the first empty one, a line that
// starts with a space or tab continuing the field before it. It returns
// the header's bytes with the empty line, as the signers must see them
// (a header that runs to the end of the message gets the empty line
// and a last line end added: verifiers read such a message as one with
// an empty body), and the fields. It holds no more than MaxHeaderSize
// in memory, however long a line.
//
// A line that is no field (no colon, or a name that is no field name)
// is not signed over: Postfix and our checks end the header there
// (package message), verifiers take it for a field and go on, and a
// signature over a header that readers see differently is one a sender
// could play with.
func readHeader(br *bufio.Reader) ([]byte, []field, error) {
	var raw bytes.Buffer
	var fields []field
	for n := 1; ; n++ {
		start := raw.Len()
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			if raw.Len()+len(chunk) > MaxHeaderSize {
				return nil, nil, errHeaderTooLarge
			}
			raw.Write(chunk)
			if err != bufio.ErrBufferFull {
				break
			}
		}
		if err != nil && err != io.EOF {
			return nil, nil, fmt.Errorf("reading the message to sign: %v", err)
		}
		line := raw.Bytes()[start:]
		if string(line) == "\r\n" || string(line) == "\n" {
			return endHeader(raw.Bytes(), fields)
		}
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				raw.WriteString("\r\n")
			}
			switch name, _, ok := bytes.Cut(line, []byte(":")); {
			case line[0] == ' ' || line[0] == '\t':
				if len(fields) == 0 {
					return nil, nil, fmt.Errorf("%w: the header starts with a continuation line", ErrNotSigned)
				}
				fields[len(fields)-1].end = raw.Len()
				fields[len(fields)-1].lines++
			case ok && message.ValidFieldName(string(bytes.TrimRight(name, " \t"))):
				fields = append(fields, field{name: string(bytes.TrimRight(name, " \t")), start: start, end: raw.Len(), lines: 1})
			default:
				return nil, nil, fmt.Errorf("%w: header line %d is not a header field", ErrNotSigned, n)
			}
		}
		if err == io.EOF {
			raw.WriteString("\r\n")
			return endHeader(raw.Bytes(), fields)
		}
	}
}

// endHeader checks the header's folding against maxFoldCost and fills
// in the fields' text from its bytes (only From's is needed).
func endHeader(raw []byte, fields []field) ([]byte, []field, error) {
	var cost int64
	for i, f := range fields {
		cost += int64(f.lines) * int64(f.end-f.start) / 2
		if cost > maxFoldCost {
			return nil, nil, fmt.Errorf("%w: header fields of too many lines (%s: %d lines)", ErrNotSigned, f.name, f.lines)
		}
		if strings.EqualFold(f.name, "From") {
			fields[i].raw = string(raw[f.start:f.end])
		}
	}
	return raw, fields, nil
}

// fromDomain returns the domain of the message's one From: address, in
// lower case and A-labels. RFC 5322 3.6.2 allows several authors (then
// Sender: names the one that sent it), but DKIM and DMARC take the
// From: domain as the author's: with several, which one is ambiguous
// (RFC 7489 6.6.1 lets a receiver reject such mail), so none is signed
// for.
func fromDomain(fields []field) (string, error) {
	var from []field
	for _, f := range fields {
		if strings.EqualFold(f.name, "From") {
			from = append(from, f)
		}
	}
	switch len(from) {
	case 0:
		return "", errors.New("no From: field")
	case 1:
	default:
		return "", fmt.Errorf("%d From: fields", len(from))
	}
	_, value, _ := strings.Cut(from[0].raw, ":")
	value = strings.NewReplacer("\r\n", "", "\n", "").Replace(value) // unfolding, RFC 5322 2.2.3
	addrs, err := message.ParseAddressList(value)
	if err != nil {
		return "", fmt.Errorf("From: %v", err)
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("From: has %d addresses", len(addrs))
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 {
		return "", fmt.Errorf("From: address %q has no domain", addrs[0].Address)
	}
	d, err := normalDomain(addrs[0].Address[at+1:])
	if err != nil {
		return "", fmt.Errorf("From: domain %q: %v", addrs[0].Address[at+1:], err)
	}
	return d, nil
}

// signedKeys returns the h= list: each oversigned field once more than
// it occurs, each signedIfPresent one as often as it occurs, lower case.
// go-msgauth picks instances from the bottom of the header up, as RFC
// 6376 5.4.2 says, and signs a listed instance that is not there as
// empty.
func signedKeys(fields []field) []string {
	count := make(map[string]int)
	for _, f := range fields {
		count[strings.ToLower(f.name)]++
	}
	var keys []string
	for _, k := range oversigned {
		k = strings.ToLower(k)
		for range count[k] + 1 {
			keys = append(keys, k)
		}
	}
	for _, k := range signedIfPresent {
		k = strings.ToLower(k)
		for range count[k] {
			keys = append(keys, k)
		}
	}
	return keys
}
