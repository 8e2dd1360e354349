// Package dnssectest runs a DNSSEC test rig on loopback for tests: a real
// authoritative server (NSD) serving test zones, some of them signed with
// ldns-signzone, behind a real validating resolver (Unbound) that has the
// signed zones' trust anchors. A signed zone's answers come from Unbound
// with AD=1, an unsigned zone's with AD=0, and a bogus zone (signed, then
// its signatures corrupted) gets SERVFAIL.
//
//	srv := dnssectest.Start(t,
//		dnssectest.Zone{Name: "example.test", Signed: true, Records: []string{
//			"mx.example.test. 300 IN A 127.0.0.1",
//			"_25._tcp.mx.example.test. 300 IN TLSA 3 1 1 " + hex,
//		}},
//	)
//	// srv.Addr() is Unbound's 127.0.0.1:PORT (UDP and TCP).
//
// Both daemons run as child processes of the test binary, as its user
// (they drop no privileges and chroot nowhere; root is not needed), and
// touch nothing of the system's: their configs, zone files, keys, pid
// files, logs and control sockets are under t.TempDir(), they listen on
// free loopback ports, and they are stopped at t.Cleanup (their own
// process groups get the signals, nothing else). Unbound sends queries to NSD only: every name outside the
// test zones is refused, the root is a stub zone pointing at NSD, and all
// non-loopback addresses are in do-not-query-address.
//
// When nsd, unbound or the ldns tools are missing, Start skips the test,
// except under CI=true, where it fails it (CI installs the packages nsd,
// unbound and ldnsutils).
package dnssectest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Zone is a test zone. The helper writes its SOA and apex NS itself (the
// NS is dnssectest-ns.<zone>, with an A record of 127.0.0.1), so Records
// must not contain an SOA.
type Zone struct {
	// Name is the zone's apex, e.g. "example.test" (a trailing dot is
	// optional; it is lower-cased).
	Name string
	// Records are zone-file lines, e.g. "mx.example.test. 300 IN A
	// 127.0.0.1". Relative names are relative to Name, and a line without
	// a TTL gets 300.
	Records []string
	// Signed zones are signed with a fresh KSK and ZSK (ECDSAP256SHA256),
	// and Unbound has the KSK's DS as trust anchor: answers get AD=1.
	// Unsigned zones are domain-insecure in Unbound: NOERROR with AD=0.
	Signed bool
	// Bogus zones are signed, then every RRSIG except the DNSKEY set's
	// has its signature corrupted, so Unbound answers SERVFAIL for any
	// name in them. Bogus implies Signed.
	Bogus bool
}

// Server is a running rig: NSD and Unbound.
type Server struct {
	dir   string // t.TempDir(): configs, zones, keys, logs
	sock  string // directory of the control sockets (dir unless too long)
	tools tools

	mu      sync.Mutex
	zones   []*zoneState // in the order given to Start
	nsd     *daemon
	unbound *daemon
	unbConf string // the config Unbound runs with
}

type zoneState struct {
	Zone
	serial uint32
	keys   *keyPair // nil until the zone is first signed
	ds     string   // the KSK's DS record, for the trust anchor
}

type tools struct {
	nsd, nsdControl, nsdCheckzone, unbound, unboundControl, unboundCheckconf, keygen, signzone string
}

// startTimeout bounds each wait for a daemon to come up or to take a
// change; queryTimeout bounds one query while polling.
const (
	startTimeout = 15 * time.Second
	queryTimeout = 500 * time.Millisecond
	pollInterval = 20 * time.Millisecond
)

// Start signs the zones, starts NSD and Unbound, waits until Unbound
// answers each zone as its kind says (signed: NOERROR with AD=1;
// unsigned: NOERROR with AD=0; bogus: SERVFAIL), and stops both at
// t.Cleanup. It skips the test when the tools are not installed (fails it
// under CI=true).
func Start(t testing.TB, zones ...Zone) *Server {
	t.Helper()
	if len(zones) == 0 {
		t.Fatal("dnssectest.Start: no zones")
	}
	tl := findTools(t)
	s := &Server{dir: t.TempDir(), tools: tl}
	s.sock = s.dir
	if len(filepath.Join(s.dir, "unbound.ctl")) > 100 { // sun_path is 108 bytes
		d, err := os.MkdirTemp("/tmp", "dnst")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		s.sock = d
	}
	for _, sub := range []string{"zones", "keys", "nsd", "unbound"} {
		if err := os.MkdirAll(filepath.Join(s.dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, z := range zones {
		z.Name = canonical(z.Name)
		if seen[z.Name] {
			t.Fatalf("dnssectest.Start: zone %s given twice", z.Name)
		}
		seen[z.Name] = true
		zs := &zoneState{Zone: z, serial: 1}
		if err := s.writeZone(zs); err != nil {
			t.Fatalf("dnssectest: zone %s: %v", z.Name, err)
		}
		s.zones = append(s.zones, zs)
	}
	t.Cleanup(func() { s.stop(t) })
	if err := s.startNSD(); err != nil {
		t.Fatalf("dnssectest: NSD: %v", err)
	}
	if err := s.startUnbound(); err != nil {
		t.Fatalf("dnssectest: Unbound: %v", err)
	}
	for _, zs := range s.zones {
		if err := s.checkZone(zs); err != nil {
			t.Fatalf("dnssectest: %v\n%s", err, s.unbound.logTail())
		}
	}
	return s
}

// Addr is Unbound's address, 127.0.0.1:PORT, on UDP and TCP: the
// validating resolver.
func (s *Server) Addr() string { return s.unbound.addr }

// Authoritative is NSD's address, 127.0.0.1:PORT, on UDP and TCP: answers
// straight from the zones, never with AD=1.
func (s *Server) Authoritative() string { return s.nsd.addr }

// ResolverLog is Unbound's log so far. With val-log-level 2 it has a
// line "validation failure <NAME TYPE IN>: REASON" for each bogus answer.
func (s *Server) ResolverLog() string {
	b, err := os.ReadFile(s.unbound.log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// DS is the DS record that Unbound has as trust anchor for a signed zone,
// in presentation format ("" for an unsigned zone or one not served).
func (s *Server) DS(zone string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if zs := s.find(canonical(zone)); zs != nil && zs.signed() {
		return zs.ds
	}
	return ""
}

// Update replaces a zone's records (and may change Signed and Bogus),
// re-signs it with the zone's keys (the same trust anchor) and a higher
// SOA serial, has NSD reload it and flushes the zone from Unbound's cache
// (or reloads Unbound when its trust anchors change). It returns when
// NSD serves the new serial and Unbound answers the zone as its kind says.
// The zone must be one given to Start. t is the calling test (a subtest
// may pass its own).
func (s *Server) Update(t testing.TB, z Zone) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	z.Name = canonical(z.Name)
	zs := s.find(z.Name)
	if zs == nil {
		t.Fatalf("dnssectest.Update: zone %s was not given to Start", z.Name)
	}
	old := *zs
	zs.Zone = z
	zs.serial++
	if err := s.writeZone(zs); err != nil {
		*zs = old
		t.Fatalf("dnssectest.Update: zone %s: %v", z.Name, err)
	}
	if out, err := s.nsdControl("reload", z.Name); err != nil {
		t.Fatalf("dnssectest.Update: nsd-control reload %s: %v\n%s\n%s", z.Name, err, out, s.nsd.logTail())
	}
	if err := s.waitNSDSerial(zs); err != nil {
		t.Fatalf("dnssectest.Update: %v\n%s", err, s.nsd.logTail())
	}
	conf := s.unboundConfig(s.unbound.port)
	if conf != s.unbConf {
		if err := os.WriteFile(filepath.Join(s.dir, "unbound", "unbound.conf"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		s.unbConf = conf
		if out, err := s.unboundControl("reload"); err != nil {
			t.Fatalf("dnssectest.Update: unbound-control reload: %v\n%s", err, out)
		}
	} else {
		for _, args := range [][]string{{"flush_zone", z.Name}, {"flush_bogus"}, {"flush_negative"}} {
			if out, err := s.unboundControl(args...); err != nil {
				t.Fatalf("dnssectest.Update: unbound-control %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
	if err := s.checkZone(zs); err != nil {
		t.Fatalf("dnssectest.Update: %v\n%s", err, s.unbound.logTail())
	}
}

func (s *Server) find(name string) *zoneState {
	for _, zs := range s.zones {
		if zs.Name == name {
			return zs
		}
	}
	return nil
}

func (zs *zoneState) signed() bool { return zs.Signed || zs.Bogus }

func canonical(name string) string { return dns.CanonicalName(strings.TrimSpace(name)) }

// ---- tools ------------------------------------------------------------

func findTools(t testing.TB) tools {
	t.Helper()
	var missing []string
	look := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		// /usr/sbin is often not in a non-root user's PATH.
		for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
			p := filepath.Join(d, name)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
		missing = append(missing, name)
		return ""
	}
	tl := tools{
		nsd:              look("nsd"),
		nsdControl:       look("nsd-control"),
		nsdCheckzone:     look("nsd-checkzone"),
		unbound:          look("unbound"),
		unboundControl:   look("unbound-control"),
		unboundCheckconf: look("unbound-checkconf"),
		keygen:           look("ldns-keygen"),
		signzone:         look("ldns-signzone"),
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("dnssectest: %s not installed (Debian packages nsd, unbound, ldnsutils)", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + "; CI=true, so this is a failure")
		}
		t.Skip(msg)
	}
	return tl
}

// ---- zones ------------------------------------------------------------

// writeZone writes the zone's file for NSD, signed (and corrupted) as its
// kind says, generating its keys on first use.
func (s *Server) writeZone(zs *zoneState) error {
	rrs, err := zoneRecords(zs)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, rr := range rrs {
		b.WriteString(rr.String())
		b.WriteByte('\n')
	}
	file := filepath.Join(s.dir, "zones", zs.Name+"zone")
	text := b.String()
	if zs.signed() {
		if zs.keys == nil {
			kp, err := s.keygen(zs.Name)
			if err != nil {
				return err
			}
			zs.keys, zs.ds = kp, kp.ds
		}
		text, err = s.sign(zs.Name, text, zs.keys)
		if err != nil {
			return err
		}
		if zs.Bogus {
			if text, err = corrupt(zs.Name, text); err != nil {
				return err
			}
		}
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		return err
	}
	if out, err := runBounded(s.tools.nsdCheckzone, zs.Name, tmp); err != nil {
		return fmt.Errorf("nsd-checkzone: %v\n%s", err, out)
	}
	return os.Rename(tmp, file)
}

// zoneRecords parses the zone's Records and puts the helper's SOA, NS
// and the NS's address in front.
func zoneRecords(zs *zoneState) ([]dns.RR, error) {
	if _, ok := dns.IsDomainName(zs.Name); !ok || zs.Name == "." {
		return nil, fmt.Errorf("bad zone name %q", zs.Name)
	}
	ns := "dnssectest-ns." + zs.Name
	head := fmt.Sprintf("@ 300 IN SOA %s hostmaster.%s %d 3600 900 604800 300\n@ 300 IN NS %s\n%s 300 IN A 127.0.0.1\n",
		ns, zs.Name, zs.serial, ns, ns)
	zp := dns.NewZoneParser(strings.NewReader("$TTL 300\n"+head+strings.Join(zs.Records, "\n")+"\n"), zs.Name, "")
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if len(rrs) >= 3 && rr.Header().Rrtype == dns.TypeSOA {
			return nil, errors.New("records must not contain an SOA (the helper writes it)")
		}
		if !dns.IsSubDomain(zs.Name, rr.Header().Name) {
			return nil, fmt.Errorf("record %q is not in zone %s", rr.String(), zs.Name)
		}
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("records: %v", err)
	}
	return rrs, nil
}

// ---- NSD --------------------------------------------------------------

func (s *Server) nsdConfig(port int) string {
	d := filepath.Join(s.dir, "nsd")
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	ip-address: 127.0.0.1@%d
	port: %d
	do-ip4: yes
	do-ip6: no
	reuseport: no
	server-count: 1
	username: ""
	chroot: ""
	database: ""
	zonesdir: %q
	zonelistfile: %q
	xfrdfile: %q
	xfrdir: %q
	pidfile: %q
	logfile: %q
	verbosity: 2
	hide-version: yes
remote-control:
	control-enable: yes
	control-interface: %q
`, port, port, filepath.Join(s.dir, "zones"), filepath.Join(d, "zone.list"), filepath.Join(d, "xfrd.state"),
		d, filepath.Join(d, "nsd.pid"), filepath.Join(d, "nsd.log"), filepath.Join(s.sock, "nsd.ctl"))
	for _, zs := range s.zones {
		fmt.Fprintf(&b, "zone:\n\tname: %q\n\tzonefile: %q\n", zs.Name, zs.Name+"zone")
	}
	return b.String()
}

func (s *Server) startNSD() error {
	conf := filepath.Join(s.dir, "nsd", "nsd.conf")
	var errs []error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		if err := os.WriteFile(conf, []byte(s.nsdConfig(port)), 0o644); err != nil {
			return err
		}
		d, err := startDaemon("nsd", s.tools.nsd, []string{"-d", "-c", conf}, port,
			filepath.Join(s.dir, "nsd", "nsd.stderr"), filepath.Join(s.dir, "nsd", "nsd.log"))
		if err != nil {
			return err
		}
		s.nsd = d
		err = s.waitNSD()
		if err == nil {
			return nil
		}
		died := d.exited() // e.g. lost the race for the port: try another
		d.stop()
		errs = append(errs, fmt.Errorf("attempt on port %d: %v\n%s", port, err, d.logTail()))
		if !died {
			break
		}
	}
	return errors.Join(errs...)
}

// waitNSD polls NSD until it answers each zone's SOA authoritatively with
// the zone's serial, on UDP and TCP.
func (s *Server) waitNSD() error {
	for _, zs := range s.zones {
		if err := s.waitNSDSerial(zs); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) waitNSDSerial(zs *zoneState) error {
	var last string
	err := poll(s.nsd, func() bool {
		for _, netw := range []string{"udp", "tcp"} {
			r, err := query(netw, s.nsd.addr, zs.Name, dns.TypeSOA)
			if err != nil {
				last = err.Error()
				return false
			}
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
				last = "answer: " + r.String()
				return false
			}
			soa, ok := r.Answer[0].(*dns.SOA)
			if !ok || soa.Serial != zs.serial {
				last = "answer: " + r.String()
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("NSD at %s does not serve %s with serial %d: %v; last: %s", s.nsd.addr, zs.Name, zs.serial, err, last)
	}
	return nil
}

func (s *Server) nsdControl(args ...string) ([]byte, error) {
	return runBounded(s.tools.nsdControl, append([]string{"-c", filepath.Join(s.dir, "nsd", "nsd.conf")}, args...)...)
}

// ---- Unbound ------------------------------------------------------------

// noQuery is every IPv4 and IPv6 address but 127.0.0.0/8: Unbound may
// send queries to loopback only, whatever it learns or has built in.
var noQuery = []string{
	"0.0.0.0/2", "64.0.0.0/3", "96.0.0.0/4", "112.0.0.0/5", "120.0.0.0/6",
	"124.0.0.0/7", "126.0.0.0/8", "128.0.0.0/1", "::/0",
}

func (s *Server) unboundConfig(port int) string {
	d := filepath.Join(s.dir, "unbound")
	var b strings.Builder
	fmt.Fprintf(&b, `server:
	interface: 127.0.0.1@%d
	port: %d
	do-ip4: yes
	do-ip6: no
	do-udp: yes
	do-tcp: yes
	so-reuseport: no
	outgoing-interface: 127.0.0.1
	num-threads: 1
	username: ""
	chroot: ""
	directory: %q
	pidfile: %q
	use-syslog: no
	logfile: %q
	log-time-ascii: yes
	verbosity: 1
	val-log-level: 2
	trust-anchor-signaling: no
	module-config: "validator iterator"
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	local-zone: "." refuse
`, port, port, d, filepath.Join(d, "unbound.pid"), filepath.Join(d, "unbound.log"))
	for _, a := range noQuery {
		fmt.Fprintf(&b, "\tdo-not-query-address: %s\n", a)
	}
	for _, zs := range s.zones {
		fmt.Fprintf(&b, "\tlocal-zone: %q transparent\n", zs.Name)
		if zs.signed() {
			fmt.Fprintf(&b, "\ttrust-anchor: %q\n", zs.ds)
		} else {
			fmt.Fprintf(&b, "\tdomain-insecure: %q\n", zs.Name)
		}
	}
	fmt.Fprintf(&b, `remote-control:
	control-enable: yes
	control-interface: %q
	control-use-cert: no
`, filepath.Join(s.sock, "unbound.ctl"))
	// The root too goes to NSD (which refuses it): Unbound's built-in
	// root hints are never used.
	names := []string{"."}
	for _, zs := range s.zones {
		names = append(names, zs.Name)
	}
	for _, n := range names {
		fmt.Fprintf(&b, "stub-zone:\n\tname: %q\n\tstub-addr: %s\n\tstub-prime: no\n", n, strings.Replace(s.nsd.addr, ":", "@", 1))
	}
	return b.String()
}

func (s *Server) startUnbound() error {
	conf := filepath.Join(s.dir, "unbound", "unbound.conf")
	var errs []error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		text := s.unboundConfig(port)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return err
		}
		if out, err := runBounded(s.tools.unboundCheckconf, conf); err != nil {
			return fmt.Errorf("unbound-checkconf: %v\n%s\n%s", err, out, text)
		}
		s.unbConf = text
		d, err := startDaemon("unbound", s.tools.unbound, []string{"-d", "-c", conf}, port,
			filepath.Join(s.dir, "unbound", "unbound.stderr"), filepath.Join(s.dir, "unbound", "unbound.log"))
		if err != nil {
			return err
		}
		s.unbound = d
		err = s.waitUnbound()
		if err == nil {
			return nil
		}
		died := d.exited() // e.g. lost the race for the port: try another
		d.stop()
		errs = append(errs, fmt.Errorf("attempt on port %d: %v\n%s", port, err, d.logTail()))
		if !died {
			break
		}
	}
	return errors.Join(errs...)
}

// waitUnbound polls Unbound until it answers (anything) on UDP and TCP
// and its control socket works.
func (s *Server) waitUnbound() error {
	var last string
	err := poll(s.unbound, func() bool {
		for _, netw := range []string{"udp", "tcp"} {
			if _, err := query(netw, s.unbound.addr, s.zones[0].Name, dns.TypeSOA); err != nil {
				last = err.Error()
				return false
			}
		}
		if out, err := s.unboundControl("status"); err != nil {
			last = fmt.Sprintf("unbound-control status: %v: %s", err, out)
			return false
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("Unbound at %s does not answer: %v; last: %s", s.unbound.addr, err, last)
	}
	return nil
}

// checkZone polls until Unbound answers the zone's SOA as the zone's kind
// says: signed, NOERROR and AD=1 with the current serial; unsigned,
// NOERROR and AD=0 with it; bogus, SERVFAIL.
func (s *Server) checkZone(zs *zoneState) error {
	var last string
	err := poll(s.unbound, func() bool {
		r, err := query("udp", s.unbound.addr, zs.Name, dns.TypeSOA)
		if err != nil {
			last = err.Error()
			return false
		}
		last = "answer: " + r.String()
		if zs.Bogus {
			return r.Rcode == dns.RcodeServerFailure
		}
		if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData != zs.Signed || len(r.Answer) == 0 {
			return false
		}
		soa, ok := r.Answer[0].(*dns.SOA)
		return ok && soa.Serial == zs.serial
	})
	if err != nil {
		kind := "unsigned (NOERROR, AD=0)"
		switch {
		case zs.Bogus:
			kind = "bogus (SERVFAIL)"
		case zs.Signed:
			kind = "signed (NOERROR, AD=1)"
		}
		return fmt.Errorf("Unbound at %s does not answer zone %s serial %d as %s: %v; last: %s",
			s.unbound.addr, zs.Name, zs.serial, kind, err, last)
	}
	return nil
}

func (s *Server) unboundControl(args ...string) ([]byte, error) {
	return runBounded(s.tools.unboundControl, append([]string{"-c", filepath.Join(s.dir, "unbound", "unbound.conf")}, args...)...)
}

// ---- both -----------------------------------------------------------------

func (s *Server) stop(t testing.TB) {
	for _, d := range []*daemon{s.unbound, s.nsd} {
		if d == nil {
			continue
		}
		if err := d.stop(); err != nil {
			t.Errorf("dnssectest: stopping %s: %v", d.name, err)
		}
		if t.Failed() {
			t.Logf("dnssectest: %s log (%s):\n%s", d.name, d.log, d.logTail())
		}
	}
}

// query sends one query with the DO bit (and a 4096-byte buffer) and
// returns the reply.
func query(netw, addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, true)
	c := &dns.Client{Net: netw, Timeout: queryTimeout}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// poll calls ok until it returns true, the daemon exits or startTimeout
// passes.
func poll(d *daemon, ok func() bool) error {
	deadline := time.Now().Add(startTimeout)
	for {
		if ok() {
			return nil
		}
		if d.exited() {
			return fmt.Errorf("%s exited: %v", d.name, d.waitErr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", startTimeout)
		}
		select {
		case <-d.done:
		case <-time.After(pollInterval):
		}
	}
}

// freePort returns a loopback port that is free on TCP and UDP just now
// (a daemon that loses a race for it fails to start, and is retried).
func freePort() (int, error) {
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp4", "127.0.0.1:"+strconv.Itoa(port))
		l.Close()
		if err == nil {
			u.Close()
			return port, nil
		}
	}
	return 0, errors.New("no loopback port free on both TCP and UDP")
}

// runBounded runs a short command with a time limit.
func runBounded(name string, args ...string) ([]byte, error) {
	return runBoundedIn("", name, args...)
}

// runBoundedIn runs a short command in dir ("": the current directory)
// with a time limit, and returns its output.
func runBoundedIn(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return []byte(out.String()), err
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		return []byte(out.String()), fmt.Errorf("%s %s: no exit within 10s", filepath.Base(name), strings.Join(args, " "))
	}
}
