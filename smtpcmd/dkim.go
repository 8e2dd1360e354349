package smtpcmd

// The `caddy smtp-dkim check` command: does DNS publish the DKIM keys
// of the running config? The records come from GET /smtp/dns of
// admin.api.smtp, what DNS publishes from a TXT lookup of each.
//
//	caddy smtp-dkim check <domain> [--resolver H:P] [--address A] [--json]

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"golang.org/x/net/idna"

	"github.com/caddy-smtp/caddy-smtp/admin"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smtp-dkim",
		Usage: "check <domain> [--resolver <host:port>] [--address <interface>] [--json]",
		Short: "Checks that DNS publishes the DKIM keys the smtp app signs a domain's mail with",
		Long: `
Compares what DNS publishes at each DKIM selector of a domain with the keys
of the running Caddy's smtp app: the selectors and their records come from
its admin API (GET /smtp/dns of admin.api.smtp: the keys in use, and older
keys still in Caddy's storage, whose records should stay published), what
DNS publishes from a TXT lookup of <selector>._domainkey.<domain> through
--resolver (host:port), or the system's resolver. Each selector is:

  published and matching   one TXT record there, with the key (k= and p=)
  missing                  no TXT record there (NXDOMAIN or no data)
  different                records there, but none or not only the key's
  lookup failed            DNS did not answer (SERVFAIL, timeout)

and the record to publish is printed for each that is not matching. The exit
status is 1 unless every selector is published and matching. The admin API
is reached as for smtp-queue (--address, --config, CADDY_ADMIN). --json
prints the results as JSON.
`,
		CobraFunc: func(cmd *cobra.Command) {
			fs := cmd.Flags()
			fs.StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
			fs.StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			fs.StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
			fs.BoolP("json", "", false, "Print the results as JSON")
			fs.String("resolver", "", "The DNS server to ask, host:port (default: the system's resolver)")
			cmd.Args = cobra.ExactArgs(2)
			cmd.RunE = wrap(cmdDKIM)
		},
	})
}

// DKIM check statuses.
const (
	DKIMMatching  = "published and matching"
	DKIMMissing   = "missing"
	DKIMDifferent = "different"
	DKIMFailed    = "lookup failed"
)

// DKIMCheck is what DNS publishes at one selector of a domain, against
// the record of the key.
type DKIMCheck struct {
	// Name is the record's owner: `<selector>._domainkey.<domain>`.
	Name string `json:"name"`
	// Want is the record of the key (`v=DKIM1; k=...; p=...`).
	Want string `json:"want"`
	// Status is one of DKIMMatching, DKIMMissing, DKIMDifferent,
	// DKIMFailed.
	Status string `json:"status"`
	// Published is the TXT records found there, each with its strings
	// joined.
	Published []string `json:"published,omitempty"`
	// Detail says why a record is different, or how the lookup failed.
	Detail string `json:"detail,omitempty"`
}

func cmdDKIM(fl caddycmd.Flags, args []string, out io.Writer) error {
	if args[0] != "check" {
		return fmt.Errorf("unknown smtp-dkim subcommand %q (want check)", args[0])
	}
	domain, err := idna.Lookup.ToASCII(strings.TrimSuffix(strings.TrimSpace(args[1]), "."))
	if err != nil || domain == "" {
		return fmt.Errorf("%q is not a domain name: %v", args[1], err)
	}
	body, err := request(fl, http.MethodGet, "/smtp/dns?"+url.Values{"domain": {domain}}.Encode(), nil)
	if err != nil {
		return err
	}
	var records []admin.DNSRecord
	if err := json.Unmarshal(body, &records); err != nil {
		return fmt.Errorf("decoding response: %v", err)
	}
	resolver := net.DefaultResolver
	if addr := fl.String("resolver"); addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("--resolver %q: %v (want host:port)", addr, err)
		}
		resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	}
	checks, err := CheckDKIM(context.Background(), records, domain, resolver.LookupTXT)
	if err != nil {
		return err
	}
	if fl.Bool("json") {
		b, err := json.Marshal(checks)
		if err != nil {
			return err
		}
		if err := printJSON(out, b); err != nil {
			return err
		}
	} else if err := WriteDKIMCheck(out, domain, checks); err != nil {
		return err
	}
	bad := 0
	for _, c := range checks {
		if c.Status != DKIMMatching {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d DKIM records of %s are not published as the keys are", bad, len(checks), domain)
	}
	return nil
}

// CheckDKIM looks up the DKIM records among records (a GET /smtp/dns
// answer) of domain (lower case, A-labels), those named
// `<selector>._domainkey.<domain>`, with lookupTXT, in their order. It
// fails when there is none: the running config signs nothing for the
// domain.
func CheckDKIM(ctx context.Context, records []admin.DNSRecord, domain string, lookupTXT func(ctx context.Context, name string) ([]string, error)) ([]DKIMCheck, error) {
	var checks []DKIMCheck
	for _, r := range records {
		sel, ok := strings.CutSuffix(r.Name, "._domainkey."+domain)
		if r.Type != "TXT" || !ok || sel == "" {
			continue
		}
		c := DKIMCheck{Name: r.Name, Want: r.Value}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		txt, err := lookupTXT(lctx, r.Name+".")
		cancel()
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound, err == nil && len(txt) == 0:
			c.Status = DKIMMissing
		case err != nil:
			c.Status, c.Detail = DKIMFailed, err.Error()
		default:
			c.Published = txt
			c.Status, c.Detail = compareDKIM(r.Value, txt)
		}
		checks = append(checks, c)
	}
	if len(checks) == 0 {
		return nil, fmt.Errorf("the running config has no DKIM key for %s (is it among a server's dkim domains?)", domain)
	}
	return checks, nil
}

// compareDKIM compares the TXT records at a selector with the key's
// record: the same key type (k=, rsa when absent) and public key (p=,
// whitespace aside) in the one record there. With several records a
// verifier may take any of them (RFC 6376 3.6.2.2): that is different
// too, even when one of them is the key's.
func compareDKIM(want string, published []string) (status, detail string) {
	wk, wp := dkimKey(want)
	var matching int
	var why string
	for _, p := range published {
		tags, err := dkimTags(p)
		switch {
		case err != nil:
			why = err.Error()
		case tags["v"] != "" && tags["v"] != "DKIM1":
			why = fmt.Sprintf("v=%s is not DKIM1", tags["v"])
		default:
			k, key := dkimKey(p)
			switch {
			case key == "":
				why = "p= is empty: the key is revoked (RFC 6376 3.6.1)"
			case k != wk:
				why = fmt.Sprintf("k=%s where the key is %s", k, wk)
			case key != wp:
				why = "p= is another key"
			default:
				matching++
			}
		}
	}
	switch {
	case matching == 1 && len(published) == 1:
		return DKIMMatching, ""
	case len(published) > 1:
		return DKIMDifferent, fmt.Sprintf("%d TXT records (%d of them the key's): verifiers may take any (RFC 6376 3.6.2.2); keep only the key's", len(published), matching)
	default:
		return DKIMDifferent, why
	}
}

// dkimKey returns a key record's key type (rsa when k= is absent) and
// public key without whitespace; "" for a record that does not parse.
func dkimKey(record string) (k, p string) {
	tags, err := dkimTags(record)
	if err != nil {
		return "", ""
	}
	k = tags["k"]
	if k == "" {
		k = "rsa"
	}
	return k, strings.Join(strings.Fields(tags["p"]), "")
}

// dkimTags parses a tag=value list (RFC 6376 3.2).
func dkimTags(s string) (map[string]string, error) {
	tags := make(map[string]string)
	for _, part := range strings.Split(s, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("%q is not a tag=value list (RFC 6376 3.2)", s)
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("tag %s twice", name)
		}
		tags[name] = strings.TrimSpace(value)
	}
	if _, ok := tags["p"]; !ok {
		return nil, errors.New("no p= tag: not a DKIM key record")
	}
	return tags, nil
}

// WriteDKIMCheck writes the results for people: a line per selector,
// and the zone file line to publish under each that is not matching.
func WriteDKIMCheck(w io.Writer, domain string, checks []DKIMCheck) error {
	var b strings.Builder
	fmt.Fprintf(&b, "DKIM keys of %s: %d selector%s\n", domain, len(checks), plural(len(checks)))
	for _, c := range checks {
		line := c.Name + ": " + c.Status
		if c.Detail != "" {
			line += " (" + c.Detail + ")"
		}
		b.WriteString(line + "\n")
		if c.Status == DKIMMatching {
			continue
		}
		for _, p := range c.Published {
			fmt.Fprintf(&b, "  published: %s\n", txtString(p))
		}
		b.WriteString("  publish:   ")
		if err := WriteZone(&b, []admin.DNSRecord{{Name: c.Name, Type: "TXT", Value: c.Want}}); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
