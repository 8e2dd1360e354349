package smtpcmd

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-smtp/caddy-smtp/admin"
)

// quarantineCommand is `caddy smtp-queue quarantine`: the quarantine's
// list, show, release and delete, through /smtp/quarantine.
func quarantineCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quarantine list|show|release|delete",
		Short: "Lists and manages the messages content checks quarantined",
		Long: `
Lists and manages the quarantine of the smtp app in a running Caddy: the
messages a content check (clamav, rspamd, milter with action quarantine)
kept from delivery, answering the sender 250. They stay until released,
deleted, or older than queue.quarantine_max_age.

  list     the quarantine, oldest first, in mailq's format, with the check
           and its reason in parentheses and the Subject under each message
  show     one message: its envelope, the checks' reasons and its headers
  release  move messages into the queue, to be delivered as if just
           received (their time in the queue starts again)
  delete   remove messages from the quarantine without notice
`,
	}
	list := &cobra.Command{
		Use:   "list [--sender <address>] [--recipient <address>] [--domain <domain>] [--offset <n>] [--limit <n>]",
		Short: "Lists the quarantine like mailq",
		Long: `
Lists the quarantined messages, oldest first, as "caddy smtp-queue list" lists
the queue (Postfix's mailq format): per message its id, size, arrival time and
sender, then the check that quarantined it and why in parentheses, its Subject,
and its recipients. The filters are those of "caddy smtp-queue list".
`,
		Args: cobra.NoArgs,
		RunE: wrap(cmdQuarantineList),
	}
	listFlags(list)
	cmd.AddCommand(list)
	cmd.AddCommand(&cobra.Command{
		Use:   "show <id>",
		Short: "Shows one quarantined message's envelope, the checks' reasons and its headers",
		Args:  cobra.ExactArgs(1),
		RunE:  wrap(cmdQuarantineShow),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "release <id>...",
		Short: "Moves quarantined messages into the queue for delivery",
		Args:  cobra.MinimumNArgs(1),
		RunE: wrap(func(fl caddycmd.Flags, args []string, out io.Writer) error {
			return eachID(fl, args, out, http.MethodPost, func(id string) string {
				return "/smtp/quarantine/" + url.PathEscape(id) + "/release"
			}, "Released")
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "delete <id>...",
		Short: "Removes quarantined messages without notice to anyone",
		Args:  cobra.MinimumNArgs(1),
		RunE: wrap(func(fl caddycmd.Flags, args []string, out io.Writer) error {
			return eachID(fl, args, out, http.MethodDelete, func(id string) string {
				return "/smtp/quarantine/" + url.PathEscape(id)
			}, "Deleted")
		}),
	})
	return cmd
}

func cmdQuarantineList(fl caddycmd.Flags, _ []string, out io.Writer) error {
	uri, filtered := listURI(fl, "/smtp/quarantine")
	return show(fl, out, uri, func(w io.Writer, list admin.QuarantineListResponse) error {
		return WriteQuarantine(w, list, filtered)
	})
}

// WriteQuarantine writes a quarantine listing as WriteMailq writes the
// queue's: per message its id, size, arrival time (local) and sender,
// then "(check: reason)", "Subject: ..." when it has one, and its
// recipients, indented; and the totals at the end.
func WriteQuarantine(w io.Writer, list admin.QuarantineListResponse, filtered bool) error {
	var b strings.Builder
	if list.Total == 0 {
		if filtered {
			b.WriteString("No matching messages in the quarantine\n")
		} else {
			b.WriteString("Quarantine is empty\n")
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	b.WriteString("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n")
	var size int64
	for _, m := range list.Messages {
		size += m.Size
		sender := m.From
		if sender == "" {
			sender = "MAILER-DAEMON"
		}
		fmt.Fprintf(&b, "%-11s %7d %-20.20s %s\n", m.ID+" ", m.Size,
			m.Received.Local().Format("Mon Jan _2 15:04:05 2006"), sender)
		reason := m.Check
		if r := oneLine(m.Reason); r != "" {
			reason += ": " + r
		}
		fmt.Fprintf(&b, "(%s)\n", reason)
		if m.Subject != "" {
			fmt.Fprintf(&b, "Subject: %s\n", oneLine(m.Subject))
		}
		for _, rcpt := range m.To {
			fmt.Fprintf(&b, "%41s%s\n", "", rcpt)
		}
		b.WriteString("\n")
	}
	writeTotals(&b, len(list.Messages), list.Total, list.Offset, size)
	_, err := io.WriteString(w, b.String())
	return err
}

func cmdQuarantineShow(fl caddycmd.Flags, args []string, out io.Writer) error {
	return show(fl, out, "/smtp/quarantine/"+url.PathEscape(args[0]),
		func(w io.Writer, m admin.QuarantineMessageResponse) error { return WriteQuarantined(w, m, time.Now()) })
}

// WriteQuarantined writes one quarantined message's entry and headers
// as text, as WriteMessage writes a queued one.
func WriteQuarantined(w io.Writer, m admin.QuarantineMessageResponse, now time.Time) error {
	var b strings.Builder
	field := entryFields(&b, m.ID, m.Server, m.From)
	field("Subject", "%s", oneLine(m.Subject))
	field("Arrival time", "%s", m.Received.Local().Format(time.RFC1123Z))
	field("Quarantined", "%s (%s ago) by %s", m.QuarantinedAt.Local().Format(time.RFC1123Z),
		duration(now.Sub(m.QuarantinedAt)), m.Check)
	field("Reason", "%s", oneLine(m.Reason))
	for _, r := range m.Reasons {
		field("Also", "%s", oneLine(r))
	}
	field("Size", "%d bytes", m.Size)
	clientFields(field, m.Client)
	b.WriteString("Recipients:\n")
	for _, rcpt := range m.To {
		fmt.Fprintf(&b, "  %s\n", rcpt)
	}
	return writeHeaders(w, &b, m.Headers)
}
