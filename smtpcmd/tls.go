package smtpcmd

// The `caddy smtp-tls check` command: what the gateway would do for mail
// to a domain, from GET /smtp/tls-policy/<domain> of admin.api.smtp (in
// the spirit of Postfix's posttls-finger).
//
//	caddy smtp-tls check <domain> [--server S] [--connect] [--address A] [--json]

import (
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-smtp/caddy-smtp/admin"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-tls",
		Usage: "check <domain> [--server <name>] [--connect] [--address <interface>] [--json]",
		Short: "Shows the TLS policy the smtp app would apply to mail for a domain",
		Long: `
Shows what the running Caddy's smtp app would do for mail to a domain,
through its admin API (GET /smtp/tls-policy/<domain> of admin.api.smtp),
without sending mail: the MX hosts, whether the MX answer is
DNSSEC-validated (under the dane levels), the TLSA records DANE found, the
domain's MTA-STS policy with its cache age, and the client TLS level in
force per MX with its source. With --connect it also connects to each MX
host, does STARTTLS and the handshake, and shows the certificate, its
fingerprints, and whether and by what it was authenticated.

The route explained is the one of --server, or of the first server (by
name) with a route for the domain; only mx targets are explained. The
admin API is reached as for smtp-queue (--address, --config, CADDY_ADMIN).
--json prints the API's JSON instead.
`,
		CobraFunc: func(cmd *cobra.Command) {
			fs := cmd.Flags()
			fs.StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
			fs.StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			fs.StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
			fs.BoolP("json", "", false, "Print the admin API's JSON instead of text")
			fs.String("server", "", "The smtp server whose route to explain (default: the first with a route for the domain)")
			fs.Bool("connect", false, "Also connect to each MX host and do the TLS handshake")
			cmd.Args = cobra.ExactArgs(2)
			cmd.RunE = wrap(cmdTLS)
		},
	})
}

func cmdTLS(fl caddycmd.Flags, args []string, out io.Writer) error {
	if args[0] != "check" {
		return fmt.Errorf("unknown smtp-tls subcommand %q (want check)", args[0])
	}
	q := url.Values{}
	if s := fl.String("server"); s != "" {
		q.Set("server", s)
	}
	if fl.Bool("connect") {
		q.Set("connect", "1")
	}
	uri := "/smtp/tls-policy/" + url.PathEscape(args[1])
	if len(q) > 0 {
		uri += "?" + q.Encode()
	}
	return show(fl, out, uri, WriteTLSReport)
}

// WriteTLSReport writes a tls-policy report for people.
func WriteTLSReport(w io.Writer, rep admin.TLSPolicyResponse) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	p("domain %s: server %s, via %s, route level %s", rep.Domain, rep.Server, rep.Via, rep.Level)
	if rep.Error != "" {
		p("  no delivery possible now: %s", rep.Error)
	}
	if strings.HasPrefix(rep.Level, "dane") {
		p("  MX answer DNSSEC-validated: %v", rep.MXSecure)
	}
	if s := rep.MTASTS; s != nil {
		p("  MTA-STS: mode %s, mx %s, max_age %ds, id %s, fetched %s (%s ago; %s)", s.Mode, strings.Join(s.MX, " "),
			s.MaxAge, s.ID, s.Fetched.Format(time.RFC3339), time.Duration(s.AgeSeconds)*time.Second, s.How)
	} else if rep.Error == "" {
		p("  MTA-STS: no policy")
	}
	for _, h := range rep.Hosts {
		switch {
		case h.Skipped != "":
			p("  %s [%s]: not used: %s", h.Host, h.Addr, h.Skipped)
			continue
		case h.Deferred != "":
			p("  %s [%s]: deferred before connecting: %s", h.Host, h.Addr, h.Deferred)
			continue
		}
		p("  %s [%s]: tls_policy %s", h.Host, h.Addr, h.TLSPolicy)
		for _, r := range h.TLSA {
			p("    TLSA %s", r)
		}
		if h.Testing != "" {
			p("    MTA-STS testing: enforce would fail: %s", h.Testing)
		}
		if pr := h.Probe; pr != nil {
			switch {
			case !pr.STARTTLS && pr.TLSVersion == "":
				p("    connect: %s", pr.Error)
				continue
			case pr.TLSVersion == "":
				p("    handshake failed: %s", pr.Error)
				continue
			}
			p("    %s %s, certificate %s (issuer %s), names %s, expires %s", pr.TLSVersion, pr.TLSCipher,
				pr.Subject, pr.Issuer, strings.Join(pr.DNSNames, " "), pr.NotAfter)
			p("    certificate sha256 %s", pr.CertSHA256)
			p("    public key sha256 %s", pr.SPKISHA256)
			if pr.Verified {
				p("    Verified TLS connection established: matched %s", pr.Match)
			} else {
				p("    Untrusted TLS connection: %s", pr.Error)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
