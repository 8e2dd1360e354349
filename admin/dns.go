package admin

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"

	"github.com/caddy-smtp/caddy-smtp/mtasts"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

// DNSRecord is one record that the running config needs published, an
// element of the body of GET /smtp/dns.
type DNSRecord struct {
	// Name is the owner name, fully qualified, without the final dot:
	// `example.com`, `_mta-sts.example.com`, `_25._tcp.mx.example.com`.
	Name string `json:"name"`
	// Type is MX, TXT or TLSA.
	Type string `json:"type"`
	// Value is the record's data as a zone file has it, except that
	// a TXT string is not quoted and is in one piece (a DKIM RSA key's
	// is longer than the 255 bytes of one string: a zone file splits
	// it): `10 mx.example.com.`, `v=STSv1; id=...`,
	// `v=DKIM1; k=ed25519; p=...`, `3 1 1 <hex>`.
	Value string `json:"value"`
}

// handleDNS lists the DNS records to publish: GET /smtp/dns?domain=.
//
//   - MX: `<domain> MX 10 <hostname>.` for every domain in a server's
//     accept_domains (not `*.` wildcards: a wildcard MX is the zone's
//     business) and the hostname of every server that accepts it, so
//     each server taking mail for the domain is an MX of equal
//     preference. Servers whose hostname is an IP address are no MX
//     (RFC 5321 5.1: an MX names a host).
//   - TXT: `_mta-sts.<domain>` `v=STSv1; id=<id>` for every domain whose
//     site `mta-sts.<domain>` in the same config's http app has the
//     mta_sts handler, with the id of the policy it serves.
//   - TXT: `<selector>._domainkey.<domain>` `v=DKIM1; k=ed25519|rsa;
//     p=<key>` for every DKIM key of a server's dkim signing: the keys
//     in use and the older ones of the same domains still in storage,
//     whose records stay published until the key is deleted.
//   - TLSA: `_<port>._tcp.<hostname>` `3 1 1 <sha-256 of the key>`
//     (DANE-EE, RFC 7672) for every server that offers TLS, one record
//     for each port it listens on; a server without listen addresses
//     (reached through the layer4 app) is taken to be on port 25. The
//     key is that of the certificate the server serves for its
//     hostname, from the tls app's certificate cache.
//
// domain keeps only the records whose name is the domain or ends in
// "." and the domain.
func (a *API) handleDNS(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(w, r, http.MethodGet); err != nil {
		return err
	}
	filter := normalName(r.URL.Query().Get("domain"))
	app, err := smtpApp()
	if err != nil {
		return err
	}
	var httpApp *caddyhttp.App
	if appIface, err := caddy.ActiveContext().AppIfConfigured("http"); err == nil {
		httpApp, _ = appIface.(*caddyhttp.App)
	}
	records, err := dnsRecords(app, httpApp, time.Now())
	if err != nil {
		return err
	}
	out := []DNSRecord{}
	for _, rec := range records {
		if filter == "" || rec.Name == filter || strings.HasSuffix(rec.Name, "."+filter) {
			out = append(out, rec)
		}
	}
	return writeJSON(w, out)
}

// dnsRecords returns the records the smtp app (and the mta_sts sites of
// httpApp, which may be nil) needs published, as GET /smtp/dns answers
// them: MX first, then TXT, then TLSA, each sorted by name and value,
// each once. It fails when a server that offers TLS has no certificate
// yet (503): a list without its TLSA record would be taken for whole.
func dnsRecords(app *smtpapp.App, httpApp *caddyhttp.App, now time.Time) ([]DNSRecord, error) {
	seen := make(map[DNSRecord]bool)
	var records []DNSRecord
	add := func(rec DNSRecord) {
		if !seen[rec] {
			seen[rec] = true
			records = append(records, rec)
		}
	}
	var domains []string
	names := make([]string, 0, len(app.Servers))
	for name := range app.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		s := app.Servers[name]
		if s == nil {
			continue
		}
		for _, r := range s.DKIMSigner().Records() {
			add(DNSRecord{Name: r.Name, Type: r.Type, Value: r.Value})
		}
		host := normalName(s.Hostname)
		isIP := net.ParseIP(host) != nil
		for _, d := range s.AcceptDomains {
			d = normalName(d)
			if d == "" || strings.HasPrefix(d, "*.") {
				continue
			}
			if !slices.Contains(domains, d) {
				domains = append(domains, d)
			}
			if !isIP {
				add(DNSRecord{Name: d, Type: "MX", Value: "10 " + host + "."})
			}
		}
		if isIP || !offersTLS(s) {
			continue
		}
		cert, err := servedCertificate(s, now)
		if err != nil {
			return nil, caddy.APIError{
				HTTPStatus: http.StatusServiceUnavailable,
				Err:        fmt.Errorf("servers.%s: %w", name, err),
			}
		}
		hash, err := dns.CertificateToDANE(1, 1, cert)
		if err != nil {
			return nil, internalError(fmt.Errorf("servers.%s: %w", name, err))
		}
		for _, port := range ports(s) {
			add(DNSRecord{Name: "_" + strconv.Itoa(int(port)) + "._tcp." + host, Type: "TLSA", Value: "3 1 1 " + hash})
		}
	}

	if httpApp != nil {
		sites := mtaSTSSites(httpApp)
		// A site of its own makes a policy domain, as does a domain
		// we accept mail for whose mta-sts name a wildcard site serves.
		for _, site := range sites {
			for _, host := range site.hosts {
				if d, ok := strings.CutPrefix(host, "mta-sts."); ok && !strings.Contains(d, "*") && !slices.Contains(domains, d) {
					domains = append(domains, d)
				}
			}
		}
		for _, d := range domains {
			for _, site := range sites {
				if slices.ContainsFunc(site.hosts, func(h string) bool { return certmagic.MatchWildcard("mta-sts."+d, h) }) {
					_, id := site.handler.Policy()
					add(DNSRecord{Name: "_mta-sts." + d, Type: "TXT", Value: "v=STSv1; id=" + id})
					break // the first site that matches serves the host
				}
			}
		}
	}

	order := map[string]int{"MX": 0, "TXT": 1, "TLSA": 2}
	slices.SortStableFunc(records, func(x, y DNSRecord) int {
		xHost, xPort := tlsaName(x.Name)
		yHost, yPort := tlsaName(y.Name)
		return cmp.Or(cmp.Compare(order[x.Type], order[y.Type]),
			cmp.Compare(xHost, yHost), cmp.Compare(xPort, yPort), cmp.Compare(x.Value, y.Value))
	})
	return records, nil
}

// tlsaName splits `_<port>._tcp.<host>` into the host and the port, so
// that TLSA records sort by host, then port as a number; any other name
// is itself, port 0.
func tlsaName(name string) (string, int) {
	portPart, host, ok := strings.Cut(name, "._tcp.")
	if p, err := strconv.Atoi(strings.TrimPrefix(portPart, "_")); ok && err == nil && strings.HasPrefix(portPart, "_") {
		return host, p
	}
	return name, 0
}

// normalName is a DNS name as the records have it: lower case, no final
// dot.
func normalName(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

// offersTLS reports whether a server does TLS at all (level may or
// encrypt, the default may).
func offersTLS(s *smtpapp.Server) bool {
	return s.TLS == nil || s.TLS.Level != string(smtpapp.LevelNone)
}

// ports returns the TCP ports a server listens on, sorted; 25 for a
// server with no listen addresses of its own (the layer4 app hands it
// its connections, on the port senders use).
func ports(s *smtpapp.Server) []uint {
	if len(s.Listen) == 0 {
		return []uint{25}
	}
	var out []uint
	for _, l := range s.Listen {
		addr, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 25)
		if err != nil || addr.IsUnixNetwork() {
			continue // unix sockets have no TLSA name
		}
		for p := addr.StartPort; p <= addr.EndPort; p++ {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}

// servedCertificate returns the leaf certificate the server serves for
// its hostname, from the tls app's certificate cache, chosen as
// CertMagic chooses it in the server's handshakes:
//
//   - a managed certificate (no `certificate` files): among the cached
//     certificates for the hostname (exact names before wildcards), the
//     first that has not expired (CertMagic's default selection for a
//     client that supports it);
//   - `certificate` files: the server selects by a tag of the chain it
//     loaded (package certfiles); the files' chain is the one served if
//     the cache holds it. Files replaced since the config was loaded are
//     not served yet: that is an error until a reload.
func servedCertificate(s *smtpapp.Server, now time.Time) (*x509.Certificate, error) {
	host := normalName(s.Hostname)
	if s.TLS != nil && s.TLS.Certificate != nil {
		loaded, err := caddytls.FileLoader{{Certificate: s.TLS.Certificate.Certificate, Key: s.TLS.Certificate.Key}}.LoadCertificates()
		if err != nil {
			return nil, fmt.Errorf("tls.certificate: %w", err)
		}
		chain := loaded[0].Certificate.Certificate
		leaf, err := x509.ParseCertificate(chain[0])
		if err != nil {
			return nil, fmt.Errorf("tls.certificate: %w", err)
		}
		names := append([]string{host, leaf.Subject.CommonName}, leaf.DNSNames...)
		for _, ip := range leaf.IPAddresses {
			names = append(names, ip.String())
		}
		for _, name := range names {
			for _, c := range caddytls.AllMatchingCertificates(name) {
				if slices.EqualFunc(c.Certificate.Certificate, chain, bytes.Equal) {
					return leaf, nil
				}
			}
		}
		return nil, fmt.Errorf("tls.certificate: the certificate in %s is not the one being served (replaced since the config was loaded?); reload the config", s.TLS.Certificate.Certificate)
	}
	all := caddytls.AllMatchingCertificates(host)
	var exact, wild []certmagic.Certificate
	for _, c := range all {
		if slices.Contains(c.Names, host) {
			exact = append(exact, c)
		} else {
			wild = append(wild, c)
		}
	}
	choices := exact
	if len(choices) == 0 {
		choices = wild
	}
	if len(choices) == 0 {
		return nil, fmt.Errorf("no certificate for %s in the tls app yet (being obtained? see the log); ask again once it is served", host)
	}
	pick := choices[0]
	for _, c := range choices {
		if c.Leaf != nil && now.Before(c.Leaf.NotAfter) {
			pick = c
			break
		}
	}
	if pick.Leaf == nil {
		return nil, errors.New("the cached certificate for " + host + " has no parsed leaf")
	}
	return pick.Leaf, nil
}

// mtaSTSSite is an mta_sts handler of the http app and the host
// patterns (lower case, wildcards as in host matchers) it serves.
type mtaSTSSite struct {
	hosts   []string
	handler *mtasts.Handler
}

// mtaSTSSites walks the routes of the http app's servers (in name order,
// each in route order, into subroutes, which is how a Caddyfile site
// block is built) and returns every mta_sts handler with the hosts that
// reach it: the host matchers of its route or of a route enclosing it.
// Handlers reached by no host matcher serve no mta-sts.<domain> site of
// their own and are left out.
func mtaSTSSites(httpApp *caddyhttp.App) []mtaSTSSite {
	var sites []mtaSTSSite
	var walk func(routes caddyhttp.RouteList, hosts []string)
	walk = func(routes caddyhttp.RouteList, hosts []string) {
		for _, route := range routes {
			routeHosts := hosts
			if own := hostMatchers(route.MatcherSets); len(own) > 0 {
				routeHosts = own
			}
			for _, h := range route.Handlers {
				switch h := h.(type) {
				case *mtasts.Handler:
					if len(routeHosts) > 0 {
						sites = append(sites, mtaSTSSite{hosts: routeHosts, handler: h})
					}
				case *caddyhttp.Subroute:
					walk(h.Routes, routeHosts)
				}
			}
		}
	}
	names := make([]string, 0, len(httpApp.Servers))
	for name := range httpApp.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if srv := httpApp.Servers[name]; srv != nil {
			walk(srv.Routes, nil)
		}
	}
	return sites
}

// hostMatchers returns the host patterns of a route's host matchers, in
// any of its matcher sets.
func hostMatchers(sets caddyhttp.MatcherSets) []string {
	var hosts []string
	for _, set := range sets {
		for _, m := range set {
			var mh caddyhttp.MatchHost
			switch m := m.(type) {
			case caddyhttp.MatchHost:
				mh = m
			case *caddyhttp.MatchHost:
				mh = *m
			}
			for _, h := range mh {
				hosts = append(hosts, normalName(h))
			}
		}
	}
	return hosts
}
