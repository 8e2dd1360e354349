// Package smtpcmd is the `caddy smtp-queue` command: the smtp app's
// queue administration from the command line, as Postfix's mailq,
// postqueue -f / -i, postsuper -d and "bounce now" do it, through the
// admin API of a running Caddy (admin.api.smtp).
//
//	caddy smtp-queue list [--sender A] [--recipient A] [--domain D] [--offset N] [--limit N]
//	caddy smtp-queue show <id>
//	caddy smtp-queue flush [<id>...]
//	caddy smtp-queue delete <id>...
//	caddy smtp-queue bounce <id>...
//	caddy smtp-queue quarantine list|show|release|delete [<id>...]
//
// Every subcommand takes --address (else the admin address of --config,
// else CADDY_ADMIN or localhost:2019, as `caddy stop` finds it) and
// --json, which prints the API's JSON instead of text.
package smtpcmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-smtp/caddy-smtp/admin"
	"github.com/caddy-smtp/caddy-smtp/queue"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-queue",
		Usage: "list|show|flush|delete|bounce|quarantine [--address <interface>] [--json]",
		Short: "Lists and manages the smtp app's mail queue (like mailq, postqueue, postsuper)",
		Long: `
Lists and manages the mail queue of the smtp app in a running Caddy, through
its admin API (the /smtp/ endpoints of admin.api.smtp).

  list     the queue, oldest first, in mailq's format (Postfix):
           each message with its size, arrival time and sender, then each
           recipient still to deliver, with the last error in parentheses
  show     one message: its envelope, recipients' state and headers
  flush    deliver deferred mail now: every message, or the ones named
           (postqueue -f / postqueue -i)
  delete   remove messages from the queue without notice (postsuper -d)
  bounce   return messages to their senders now, with a delivery status
           notification
  quarantine list|show|release|delete
           the messages content checks quarantined: list them, show one,
           release them into the queue for delivery, or delete them

The admin API is reached at --address if given; otherwise at the admin
address of the --config file; otherwise at the default (CADDY_ADMIN, or
localhost:2019). --json prints the API's JSON responses instead of text.
`,
		CobraFunc: func(cmd *cobra.Command) {
			pf := cmd.PersistentFlags()
			pf.StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
			pf.StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			pf.StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
			pf.BoolP("json", "", false, "Print the admin API's JSON instead of text")

			list := &cobra.Command{
				Use:   "list [--sender <address>] [--recipient <address>] [--domain <domain>] [--offset <n>] [--limit <n>]",
				Short: "Lists the queue like mailq",
				Long: `
Lists the queued messages, oldest first, in the format of Postfix's mailq:

-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
1A21C1D312B73C6099C      229 Fri Nov 27 08:26:44  alice@example.com
(451 4.7.1 greylisted, try again later)
                                         bob@example.net

-- 0 Kbytes in 1 Request.

Only the recipients still to deliver are listed, each after the last error
it got (in parentheses), if any. A "*" after the queue id means the message is
being delivered; a "!" means the queue is on hold. The filters match
case-insensitively: --sender the envelope sender, --recipient any recipient,
--domain the domain of any recipient. --limit 0 (the default) lists all.
`,
				Args: cobra.NoArgs,
				RunE: wrap(cmdList),
			}
			listFlags(list)
			cmd.AddCommand(list)

			cmd.AddCommand(&cobra.Command{
				Use:   "show <id>",
				Short: "Shows one message's envelope, delivery state and headers",
				Args:  cobra.ExactArgs(1),
				RunE:  wrap(cmdShow),
			})
			cmd.AddCommand(&cobra.Command{
				Use:   "flush [<id>...]",
				Short: "Makes deferred mail due now: all of it, or the messages named",
				Args:  cobra.ArbitraryArgs,
				RunE:  wrap(cmdFlush),
			})
			cmd.AddCommand(&cobra.Command{
				Use:   "delete <id>...",
				Short: "Removes messages from the queue without notice to anyone",
				Args:  cobra.MinimumNArgs(1),
				RunE:  wrap(cmdDelete),
			})
			cmd.AddCommand(&cobra.Command{
				Use:   "bounce <id>...",
				Short: "Returns messages to their senders now, with a bounce",
				Args:  cobra.MinimumNArgs(1),
				RunE:  wrap(cmdBounce),
			})
			cmd.AddCommand(quarantineCommand())
		},
	})
}

// cmdFunc is a subcommand: its flags, positional arguments and output.
type cmdFunc func(fl caddycmd.Flags, args []string, out io.Writer) error

// wrap runs a subcommand as caddycmd.WrapCommandFuncForCobra does
// (errors through Caddy's logger, exit status 1), with its arguments.
func wrap(f cmdFunc) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := f(caddycmd.Flags{FlagSet: cmd.Flags()}, args, cmd.OutOrStdout())
		if err != nil {
			caddy.Log().Error(err.Error())
			cmd.SilenceErrors = true
		}
		return err
	}
}

// request calls the admin API and returns the response body; a status
// of 400 or more is an error (caddycmd.AdminAPIRequest's, with the
// API's message).
func request(fl caddycmd.Flags, method, uri string, body any) ([]byte, error) {
	adminAddr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(adminAddr, method, uri, nil, rd)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// printJSON prints an API response as indented JSON.
// show GETs uri from the admin API and writes the answer: as JSON
// with --json, else decoded into a T and written by write.
func show[T any](fl caddycmd.Flags, out io.Writer, uri string, write func(io.Writer, T) error) error {
	body, err := request(fl, http.MethodGet, uri, nil)
	if err != nil {
		return err
	}
	if fl.Bool("json") {
		return printJSON(out, body)
	}
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("decoding response: %v", err)
	}
	return write(out, v)
}

func printJSON(out io.Writer, body []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(body), "", "  "); err != nil {
		return fmt.Errorf("decoding response: %v", err)
	}
	buf.WriteByte('\n')
	_, err := out.Write(buf.Bytes())
	return err
}

// listFlags adds a listing's filter and page flags to a subcommand.
func listFlags(c *cobra.Command) {
	c.Flags().String("sender", "", "Only messages from this envelope sender")
	c.Flags().String("recipient", "", "Only messages with this recipient")
	c.Flags().String("domain", "", "Only messages with a recipient in this domain")
	c.Flags().Int("offset", 0, "Skip this many matching messages")
	c.Flags().Int("limit", 0, "List at most this many messages (0: all)")
}

// listURI is a listing's API path with the query of its flags
// (listFlags), and whether a filter is set.
func listURI(fl caddycmd.Flags, path string) (uri string, filtered bool) {
	q := url.Values{}
	for _, name := range []string{"sender", "recipient", "domain"} {
		if v := fl.String(name); v != "" {
			q.Set(name, v)
			filtered = true
		}
	}
	for _, name := range []string{"offset", "limit"} {
		if v := fl.Int(name); v != 0 {
			q.Set(name, strconv.Itoa(v))
		}
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path, filtered
}

func cmdList(fl caddycmd.Flags, _ []string, out io.Writer) error {
	uri, filtered := listURI(fl, "/smtp/queue")
	return show(fl, out, uri, func(w io.Writer, list admin.QueueListResponse) error { return WriteMailq(w, list, filtered) })
}

// WriteMailq writes a queue listing in the format of Postfix's mailq:
// a heading, then per message its id, size, arrival time (local) and
// sender, each last error in parentheses followed by the recipients
// still to deliver that it concerns, indented, a blank line, and at the
// end "-- N Kbytes in M Requests." over the messages listed. A message
// id is followed by "*" while it is being delivered, and by "!" when
// the queue is on hold.
func WriteMailq(w io.Writer, list admin.QueueListResponse, filtered bool) error {
	var b strings.Builder
	if list.Total == 0 {
		if filtered {
			b.WriteString("No matching messages in the queue\n")
		} else {
			b.WriteString("Mail queue is empty\n")
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	b.WriteString("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n")
	var size int64
	for _, m := range list.Messages {
		size += m.Size
		mark := ' '
		switch {
		case m.Active:
			mark = '*' // being delivered, as Postfix marks the active queue
		case list.Hold:
			mark = '!'
		}
		sender := m.Sender
		if sender == "" {
			sender = "MAILER-DAEMON"
		}
		// Postfix's "%-11s %7ld %20.20s %s" over the id with its
		// status mark and ctime(3)'s date
		fmt.Fprintf(&b, "%-11s %7d %-20.20s %s\n", m.ID+string(mark), m.Size,
			m.Received.Local().Format("Mon Jan _2 15:04:05 2006"), sender)
		reason := ""
		for _, rc := range m.Recipients {
			if !rc.Pending() {
				continue
			}
			if e := oneLine(rc.LastError); e != "" && e != reason {
				fmt.Fprintf(&b, "(%s)\n", e)
				reason = e
			}
			fmt.Fprintf(&b, "%41s%s\n", "", rc.Address)
		}
		b.WriteString("\n")
	}
	writeTotals(&b, len(list.Messages), list.Total, list.Offset, size)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTotals ends a listing as mailq does, "-- N Kbytes in M
// Requests.", over the shown messages of size bytes in all, after a
// line on the page when not all matches are shown.
func writeTotals(b *strings.Builder, shown, total, offset int, size int64) {
	if shown < total {
		next := ""
		if offset+shown < total {
			next = fmt.Sprintf("; more with --offset %d", offset+shown)
		}
		fmt.Fprintf(b, "-- %d of %d Requests shown (offset %d)%s\n", shown, total, offset, next)
	}
	fmt.Fprintf(b, "-- %d Kbytes in %d Request%s.\n", size/1024, shown, plural(shown))
}

func cmdShow(fl caddycmd.Flags, args []string, out io.Writer) error {
	return show(fl, out, "/smtp/queue/"+url.PathEscape(args[0]),
		func(w io.Writer, m admin.MessageResponse) error { return WriteMessage(w, m, time.Now()) })
}

// WriteMessage writes one message's queue entry and headers as text.
func WriteMessage(w io.Writer, m admin.MessageResponse, now time.Time) error {
	var b strings.Builder
	field := entryFields(&b, m.ID, m.Server, m.Sender)
	field("Arrival time", "%s (%s ago)", m.Received.Local().Format(time.RFC1123Z), duration(time.Duration(m.AgeSeconds*float64(time.Second))))
	field("Size", "%d bytes", m.Size)
	clientFields(field, m.Client)
	field("Attempts", "%d", m.Attempts)
	if m.NextAttempt != nil {
		field("Next attempt", "%s (in %s)", m.NextAttempt.Local().Format(time.RFC1123Z), duration(m.NextAttempt.Sub(now)))
	}
	b.WriteString("Recipients:\n")
	for _, rc := range m.Recipients {
		state := rc.Status
		if rc.Attempts > 0 {
			state += fmt.Sprintf(", %d attempt%s", rc.Attempts, plural(rc.Attempts))
		}
		if rc.Status == spool.StatusDeferred && !rc.NextAttempt.IsZero() {
			state += ", next " + rc.NextAttempt.Local().Format("Mon Jan _2 15:04:05")
		}
		if rc.Remote != "" {
			state += ", relay " + rc.Remote
		}
		fmt.Fprintf(&b, "  %s  %s\n", rc.Address, state)
		if e := oneLine(rc.LastError); e != "" {
			fmt.Fprintf(&b, "    (%s)\n", e)
		}
	}
	return writeHeaders(w, &b, m.Headers)
}

// entryFields starts a message shown (queued or quarantined) with its
// id, server and sender, and returns the function that writes further
// "Name: value" lines into b.
func entryFields(b *strings.Builder, id, server, sender string) func(name, format string, args ...any) {
	field := func(name, format string, args ...any) {
		fmt.Fprintf(b, "%-14s %s\n", name+":", fmt.Sprintf(format, args...))
	}
	if sender == "" {
		sender = "<> (MAILER-DAEMON)"
	}
	field("Queue ID", "%s", id)
	field("Server", "%s", server)
	field("Sender", "%s", printable(sender))
	return field
}

// writeHeaders ends a message shown with its header section, control
// characters replaced (it is the mail's text, not ours), and writes b
// to w.
func writeHeaders(w io.Writer, b *strings.Builder, headers string) error {
	b.WriteString("Headers:\n")
	b.WriteString(printable(strings.ReplaceAll(headers, "\r\n", "\n")))
	if !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// clientFields writes the Client: and TLS: fields of a message shown.
func clientFields(field func(name, format string, args ...any), c spool.Client) {
	client := c.IP
	if c.Helo != "" {
		client += " (helo " + c.Helo + ")"
	}
	if c.Protocol != "" {
		client += " " + c.Protocol
	}
	if c.Auth != "" {
		client += ", authenticated as " + c.Auth
	}
	field("Client", "%s", client)
	if t := c.TLS; t != nil {
		field("TLS", "%s", tlsText(t))
	}
}

func tlsText(t *spool.TLSInfo) string {
	s := t.Version + " " + t.Cipher
	if t.ServerName != "" {
		s += ", SNI " + t.ServerName
	}
	if t.PeerSubject != "" {
		s += ", client certificate " + t.PeerSubject
		if t.PeerVerified {
			s += " (verified)"
		} else {
			s += " (not verified)"
		}
	}
	return s
}

func cmdFlush(fl caddycmd.Flags, args []string, out io.Writer) error {
	if len(args) == 0 {
		body, err := request(fl, http.MethodPost, "/smtp/queue/flush", nil)
		if err != nil {
			return err
		}
		if fl.Bool("json") {
			return printJSON(out, body)
		}
		var r admin.FlushResponse
		if err := json.Unmarshal(body, &r); err != nil {
			return fmt.Errorf("decoding response: %v", err)
		}
		_, err = fmt.Fprintf(out, "Flushed: %d message%s\n", r.Flushed, plural(r.Flushed))
		return err
	}
	return eachID(fl, args, out, http.MethodPost, queueAction("flush"), "Flushed")
}

func cmdBounce(fl caddycmd.Flags, args []string, out io.Writer) error {
	return eachID(fl, args, out, http.MethodPost, queueAction("bounce"), "Bounced")
}

// queueAction is the API path of an action on a queued message,
// /smtp/queue/{id}/{action}.
func queueAction(action string) func(id string) string {
	return func(id string) string { return "/smtp/queue/" + url.PathEscape(id) + "/" + action }
}

// eachID sends method to the API path uri gives for every id, reporting
// each as done; it goes on past a failure and fails at the end.
func eachID(fl caddycmd.Flags, ids []string, out io.Writer, method string, uri func(id string) string, done string) error {
	var errs []error
	for _, id := range ids {
		body, err := request(fl, method, uri(id), nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", id, err))
			continue
		}
		if fl.Bool("json") {
			err = printJSON(out, body)
		} else {
			_, err = fmt.Fprintf(out, "%s: %s\n", done, id)
		}
		if err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func cmdDelete(fl caddycmd.Flags, args []string, out io.Writer) error {
	body, err := request(fl, http.MethodPost, "/smtp/queue/delete", admin.DeleteRequest{IDs: args})
	if err != nil {
		return err
	}
	var r admin.DeleteResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("decoding response: %v", err)
	}
	if fl.Bool("json") {
		err = printJSON(out, body)
	} else {
		_, err = fmt.Fprintf(out, "Deleted: %d message%s\n", len(r.Deleted), plural(len(r.Deleted)))
	}
	if err != nil {
		return err
	}
	if len(r.NotFound) > 0 {
		return fmt.Errorf("%v: %s", queue.ErrNoSuchMessage, strings.Join(r.NotFound, " "))
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// oneLine keeps a reply on one line, as mailq shows it.
func oneLine(s string) string { return strings.Join(strings.Fields(printable(s)), " ") }

// printable replaces control characters (C0 but tab and line feed,
// DEL, C1) with "?": what is printed comes from mail (a quarantined
// message's Subject, its headers), and must not drive the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t' && r != '\n') || (r >= 0x7f && r < 0xa0) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// duration rounds a duration for people: 2m3s, 4h5m, 3d4h.
func duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 24*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	days := int(d / (24 * time.Hour))
	return fmt.Sprintf("%dd%dh", days, int((d-time.Duration(days)*24*time.Hour)/time.Hour))
}
