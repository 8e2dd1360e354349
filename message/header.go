package message

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// ParseAddressList parses an address field (From:) whatever the
// charset of its display names: only the addresses are wanted, so a
// name in a charset Go does not know is taken as it is rather than
// failing the parse (which would skip DKIM signing, or waive DMARC).
func ParseAddressList(value string) ([]*mail.Address, error) {
	return addressParser.ParseList(value)
}

var addressParser = &mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// Field is one header field as read: its name, and the whole field as
// it stands in the message (name, colon, value, folding, and the line
// end of each line).
type Field struct {
	Name string
	Raw  string
}

// Value is the field's value as a milter gets it: what follows the
// colon, folding kept, without the one space after the colon.
func (f Field) Value() string {
	_, v, _ := strings.Cut(f.Raw, ":")
	return strings.TrimPrefix(v, " ")
}

// ReadHeader reads a message's header fields as Postfix and Sendmail
// do: the header ends at the empty line (consumed: it is part of
// neither), or at the first line that is neither a field nor a
// continuation, which then starts the body (returned as first) so that
// nothing of the message is lost. A sender's malformed header line can
// thus make no check fail or skip. Written here: mail header parsers
// (net/textproto, go-message) refuse such a line instead.
//
// A field name may be followed by spaces before its colon (RFC 5322
// 4.5.3's obsolete syntax, which readers must accept); Name has them
// trimmed, Raw keeps them. A field's continuation lines are gathered in
// one buffer, so a long folded field costs linear time.
func ReadHeader(br *bufio.Reader) (fields []Field, first string, err error) {
	var cur strings.Builder // the last field's text, while it may go on
	var name string
	end := func() {
		if name != "" {
			fields = append(fields, Field{Name: name, Raw: cur.String()})
		}
		name = ""
		cur.Reset()
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil && err != io.EOF {
			return nil, "", err
		}
		if line == "" || line == "\r\n" || line == "\n" {
			end()
			return fields, "", nil
		}
		if (line[0] == ' ' || line[0] == '\t') && name != "" {
			cur.WriteString(line)
		} else if n, _, ok := strings.Cut(line, ":"); ok && ValidFieldName(strings.TrimRight(n, " \t")) {
			end()
			name = strings.TrimRight(n, " \t")
			cur.WriteString(line)
		} else {
			end()
			return fields, line, nil
		}
		if err == io.EOF {
			end()
			return fields, "", nil
		}
	}
}

// ValidFieldName is a header field name: printable ASCII but the colon
// (RFC 5322 2.2).
func ValidFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' || k[i] == ':' {
			return false
		}
	}
	return true
}

// EditOp is what a HeaderEdit does.
type EditOp int

// Header edits, as the milter protocol has them (smfi_addheader,
// smfi_insheader, smfi_chgheader).
const (
	// AddHeader appends a field at the end of the header.
	AddHeader EditOp = iota
	// InsertHeader puts a field after the Index-th field of the header
	// (0: first of all).
	InsertHeader
	// ChangeHeader replaces the value of the Index-th field named Name
	// (1-based, case-insensitive; negative: from the last; 0: every
	// one); an empty Value deletes it. A change of a field that is not
	// there adds it (as libmilter's smfi_chgheader does), a deletion of
	// one that is not there does nothing.
	ChangeHeader
)

// HeaderEdit is a change to a message's header that a content check
// asks for.
type HeaderEdit struct {
	// Op is what the edit does.
	Op EditOp
	// Name is the field's name.
	Name string
	// Value goes after "Name: "; lines after the first are continuation
	// lines (beginning with a space or tab), separated by LF or CRLF.
	Value string
	// Index is where: see the EditOp constants.
	Index int
}

// Bounds of the edits of one message.
const (
	maxEditValue = 64 << 10 // bytes of one field's value
	maxEdits     = 1000
)

// ErrBadEdit is a header edit that would break the message: a bad
// field name, a value that ends the header or carries a bare CR or a
// NUL, or too much.
var ErrBadEdit = errors.New("invalid header edit")

// CheckEdits refuses edits that would make the message invalid, or
// inject text into it, before any is applied: engines' answers are
// untrusted input.
func CheckEdits(edits []HeaderEdit) error {
	if len(edits) > maxEdits {
		return fmt.Errorf("%w: %d edits, more than %d", ErrBadEdit, len(edits), maxEdits)
	}
	for _, e := range edits {
		if !ValidFieldName(e.Name) {
			return fmt.Errorf("%w: field name %q", ErrBadEdit, e.Name)
		}
		if len(e.Value) > maxEditValue {
			return fmt.Errorf("%w: %s: value of %d bytes", ErrBadEdit, e.Name, len(e.Value))
		}
		if e.Op < AddHeader || e.Op > ChangeHeader || (e.Op == InsertHeader && e.Index < 0) {
			return fmt.Errorf("%w: %s: operation %d at %d", ErrBadEdit, e.Name, e.Op, e.Index)
		}
		for i, line := range strings.Split(strings.ReplaceAll(e.Value, "\r\n", "\n"), "\n") {
			if strings.ContainsAny(line, "\r\x00") {
				return fmt.Errorf("%w: %s: bare CR or NUL in the value", ErrBadEdit, e.Name)
			}
			if i > 0 && (line == "" || (line[0] != ' ' && line[0] != '\t') || strings.TrimLeft(line, " \t") == "") {
				return fmt.Errorf("%w: %s: a line of the value is not a continuation", ErrBadEdit, e.Name)
			}
		}
	}
	return nil
}

// field makes the text of a field, CRLF line ends.
func (e HeaderEdit) field() string {
	sep := ": "
	if e.Value != "" && (e.Value[0] == ' ' || e.Value[0] == '\t') {
		sep = ":" // the value brings its own (Postfix does the same)
	}
	return e.Name + sep + strings.ReplaceAll(strings.ReplaceAll(e.Value, "\r\n", "\n"), "\n", "\r\n") + "\r\n"
}

// EditHeader writes src to dst with the edits applied in order (checked
// first with CheckEdits), and, when body is not nil, with the body
// replaced by it. The header is read with ReadHeader, so a message
// whose header ends at a malformed line keeps that line as the first of
// its body. Edits are applied to the header in memory: its size is
// bounded by the message size limit the message was received under.
func EditHeader(dst io.Writer, src io.Reader, edits []HeaderEdit, body io.Reader) error {
	if err := CheckEdits(edits); err != nil {
		return err
	}
	br := bufio.NewReaderSize(src, 32<<10)
	fields, first, err := ReadHeader(br)
	if err != nil {
		return fmt.Errorf("reading the header: %w", err)
	}
	for _, e := range edits {
		fields = apply(fields, e)
	}
	bw := bufio.NewWriterSize(dst, 32<<10)
	for _, f := range fields {
		bw.WriteString(f.Raw)
	}
	bw.WriteString("\r\n")
	if body != nil {
		_, err = io.Copy(bw, body)
	} else {
		bw.WriteString(first)
		_, err = io.Copy(bw, br)
	}
	if err != nil {
		return fmt.Errorf("copying the body: %w", err)
	}
	return bw.Flush()
}

// EditsChange reports whether edits would change a message's header:
// a check that deletes fields the message does not have changes
// nothing, and the message need not be rewritten for it.
func EditsChange(src io.Reader, edits []HeaderEdit) (bool, error) {
	fields, _, err := ReadHeader(bufio.NewReaderSize(src, 32<<10))
	if err != nil {
		return false, fmt.Errorf("reading the header: %w", err)
	}
	before := append([]Field(nil), fields...)
	for _, e := range edits {
		fields = apply(fields, e)
	}
	if len(fields) != len(before) {
		return true, nil
	}
	for i := range fields {
		if fields[i] != before[i] {
			return true, nil
		}
	}
	return false, nil
}

func apply(fields []Field, e HeaderEdit) []Field {
	nf := Field{Name: e.Name, Raw: e.field()}
	switch e.Op {
	case AddHeader:
		return append(fields, nf)
	case InsertHeader:
		i := min(e.Index, len(fields))
		return append(fields[:i], append([]Field{nf}, fields[i:]...)...)
	}
	var at []int // positions of the fields of that name
	for i, f := range fields {
		if strings.EqualFold(f.Name, e.Name) {
			at = append(at, i)
		}
	}
	var which []int
	switch {
	case e.Index == 0:
		which = at
	case e.Index > 0 && e.Index <= len(at):
		which = at[e.Index-1 : e.Index]
	case e.Index < 0 && -e.Index <= len(at):
		which = at[len(at)+e.Index : len(at)+e.Index+1]
	}
	if len(which) == 0 {
		if e.Value == "" {
			return fields
		}
		return append(fields, nf)
	}
	if e.Value != "" {
		for _, i := range which {
			fields[i] = Field{Name: fields[i].Name, Raw: HeaderEdit{Name: fields[i].Name, Value: e.Value}.field()}
		}
		return fields
	}
	out := fields[:0]
	for i, f := range fields {
		if len(which) > 0 && which[0] == i {
			which = which[1:]
			continue
		}
		out = append(out, f)
	}
	return out
}
