package smtpcmd

// The `caddy smtp-dns` command: the DNS records the running config
// needs published, from GET /smtp/dns of admin.api.smtp.
//
//	caddy smtp-dns [--domain D] [--address A] [--json]

import (
	"fmt"
	"io"
	"net/url"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-smtp/caddy-smtp/admin"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-dns",
		Usage: "[--domain <domain>] [--address <interface>] [--json]",
		Short: "Prints the DNS records the smtp app needs published (MX, MTA-STS, DKIM, TLSA)",
		Long: `
Prints the DNS records that the config of a running Caddy needs published,
through its admin API (GET /smtp/dns of admin.api.smtp), as zone file lines:

  example.com. 3600 IN MX 10 mx.example.com.
  _mta-sts.example.com. 3600 IN TXT "v=STSv1; id=0123456789abcdef0123"
  2026a-ed25519._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=ed25519; p=<key>"
  _25._tcp.mx.example.com. 3600 IN TLSA 3 1 1 <sha-256 of the key>

MX: each domain of a server's accept_domains, to the hostname of each server
that accepts it. TXT: _mta-sts.<domain> with the id of the policy that the
mta_sts handler of the site mta-sts.<domain> serves, and
<selector>._domainkey.<domain> for each DKIM key of a server's dkim signing:
the keys in use and the older ones still in Caddy's storage (delete a key
from storage to retire it). An RSA key's record is longer than the 255 bytes
of one string: it is printed as several strings of one record, which readers
join. caddy smtp-dkim check compares what DNS publishes with them. TLSA
(DANE-EE, SPKI, SHA-256): each port of each server that offers TLS, for the
key of the certificate it serves now. A TLSA record breaks when the key
changes: publish the next key's record before the server switches to it.

--domain keeps the records whose name is the domain or under it. The admin
API is reached at --address if given; otherwise at the admin address of the
--config file; otherwise at the default (CADDY_ADMIN, or localhost:2019).
--json prints the API's JSON instead.
`,
		CobraFunc: func(cmd *cobra.Command) {
			fs := cmd.Flags()
			fs.StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
			fs.StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			fs.StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
			fs.BoolP("json", "", false, "Print the admin API's JSON instead of zone file lines")
			fs.String("domain", "", "Only the records of this domain and the names under it")
			cmd.Args = cobra.NoArgs
			cmd.RunE = wrap(cmdDNS)
		},
	})
}

// zoneTTL is the TTL the zone file lines carry: an hour, short enough
// that a TLSA rollover is not long to wait for.
const zoneTTL = 3600

func cmdDNS(fl caddycmd.Flags, _ []string, out io.Writer) error {
	uri := "/smtp/dns"
	if d := fl.String("domain"); d != "" {
		uri += "?" + url.Values{"domain": {d}}.Encode()
	}
	return show(fl, out, uri, WriteZone)
}

// WriteZone writes records as zone file lines: `name. TTL IN TYPE
// value`, the TXT value quoted. No records: a comment saying so, so that
// an empty answer is not taken for a failure.
func WriteZone(w io.Writer, records []admin.DNSRecord) error {
	var b strings.Builder
	if len(records) == 0 {
		b.WriteString("; no DNS records to publish\n")
	}
	for _, r := range records {
		value := r.Value
		if r.Type == "TXT" {
			value = txtString(value)
		}
		fmt.Fprintf(&b, "%s. %d IN %s %s\n", r.Name, zoneTTL, r.Type, value)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// txtString quotes a TXT value as zone file character strings (RFC
// 1035 5.1: `"` and `\` escaped), 255 bytes of the value each (RFC
// 1035 3.3: a character-string is at most 255 long; a DKIM RSA key's
// record needs two), separated by a space: readers of the record join
// them (RFC 6376 3.6.2.2, RFC 7208 3.3).
func txtString(s string) string {
	var b strings.Builder
	for start := 0; start == 0 || start < len(s); start += 255 {
		if start > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('"')
		for i := start; i < len(s) && i < start+255; i++ {
			c := s[i]
			switch {
			case c == '"' || c == '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case c < ' ' || c > '~':
				fmt.Fprintf(&b, "\\%03d", c)
			default:
				b.WriteByte(c)
			}
		}
		b.WriteByte('"')
	}
	return b.String()
}
