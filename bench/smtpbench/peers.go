package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// The peers (issue 16): maddy, chasquid and Haraka as systems under test
// beside the gateway and Postfix, each relaying to the harness's sink
// through its own durable queue, each set up as its documentation asks
// for a relay from trusted clients, and otherwise left at its defaults.
// bench/run.sh installs them into a cache directory (maddy with go
// install, chasquid from Debian's package unpacked with dpkg -x, Haraka
// from npm) and passes their paths; a peer whose path is empty or
// missing is left out, with a line saying why.

// peerProbe checks a peer's installation before the run; the error says
// why it is left out.
func peerProbe(name, path string) error {
	if path == "" {
		return fmt.Errorf("%s: not installed (bench/run.sh could not set it up; see its output)", name)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	return nil
}

// waitPeer waits until a started peer greets on port (and completes a
// STARTTLS with TLS); on failure it stops the peer.
func waitPeer(d *daemon, name string, cfg SystemConfig, log string) error {
	if err := waitReady(fmt.Sprintf("127.0.0.1:%d", cfg.Port), cfg.TLS, d.alive, 60*time.Second); err != nil {
		d.stop(10 * time.Second)
		return fmt.Errorf("%s: %w (see %s)", name, err, log)
	}
	return nil
}

// dirEmpty says whether no regular file is anywhere under dir (a missing
// dir is empty).
func dirEmpty(dir string) bool {
	empty := true
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			empty = false
			return fs.SkipAll
		}
		return nil
	})
	return empty
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// writeText writes a file from a text/template in text.
func writeText(dst, text string, data any) error {
	t, err := template.New(filepath.Base(dst)).Parse(text)
	if err != nil {
		return err
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return err
	}
	return os.WriteFile(dst, []byte(b.String()), 0o644)
}

// ---- maddy ----------------------------------------------------------------

// Maddy is maddy (go install of github.com/foxcpp/maddy/cmd/maddy): the
// smtp endpoint on loopback delivers to a target.queue (its durable
// queue, default 16 deliveries at once) whose target is a target.smtp
// to the sink with starttls yes (or no, in plaintext cells). dmarc is
// off: the clients are trusted, as the gateway's relay_networks and
// Postfix's mynetworks, and the gateway does no sender checks for them
// either. target.smtp verifies the sink's certificate; SSL_CERT_FILE
// names the harness's self-signed one.
type Maddy struct {
	Bin string
	cfg SystemConfig
	daemon
}

// Name implements System.
func (m *Maddy) Name() string { return "maddy" }

// Version implements System.
func (m *Maddy) Version() string {
	out, err := exec.Command(m.Bin, "version").Output()
	if err != nil {
		return "maddy (version unknown)"
	}
	return "maddy " + firstLine(out)
}

// Start implements System.
func (m *Maddy) Start(cfg SystemConfig) error {
	m.cfg = cfg
	for _, d := range []string{"state", "run"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(cfg.Dir, "maddy.conf")
	if err := writeTemplate("maddy.conf.tmpl", conf, cfg); err != nil {
		return err
	}
	if err := m.daemon.start(filepath.Join(cfg.Dir, "maddy.out"), cfg.Dir, []string{"SSL_CERT_FILE=" + cfg.Cert},
		m.Bin, "--config", conf, "run"); err != nil {
		return err
	}
	return waitPeer(&m.daemon, "maddy", cfg, filepath.Join(cfg.Dir, "maddy.log"))
}

// Pids implements System: maddy is one process.
func (m *Maddy) Pids() []int { return m.daemon.pids() }

// QueueEmpty implements System: no file in the queue's directory.
func (m *Maddy) QueueEmpty() bool { return dirEmpty(filepath.Join(m.cfg.Dir, "queue")) }

// Stop implements System.
func (m *Maddy) Stop() { m.daemon.stop(10 * time.Second) }

// ---- chasquid -------------------------------------------------------------

// ChasquidDomain is the local domain of the chasquid instance: chasquid
// relays only for authenticated users, so the load generator sends to
// bench@ChasquidDomain, which its aliases file forwards to
// bench@sink.bench.
const ChasquidDomain = "peer.bench"

// Chasquid is chasquid from Debian's package, unpacked (dpkg -x) rather
// than installed: it conflicts with Postfix (both provide
// mail-transport-agent). It has no smarthost: mail to a remote domain
// goes to the domain's MX on port 25, so -testing__outgoing_smtp_port
// moves the port to the sink's, and chasquid runs in a mount namespace
// of its own whose /etc/resolv.conf names the harness's DNS stub, which
// answers sink.bench's MX with 127.0.0.1 (and NXDOMAIN to its SPF and
// MTA-STS lookups). Its SMTP listener only (no submission ports); the
// certificate in certs/ (chasquid needs one: it offers STARTTLS in
// plaintext cells too, unused by the load there; outbound it always uses
// STARTTLS when offered, so in plaintext cells it still does). No hooks
// (the Debian package's post-data hook is not copied). chasquid writes
// its queue file and renames it without an fsync (strace: no fsync, no
// O_SYNC): it is the one system here that answers 250 before the message
// is on disk.
type Chasquid struct {
	Bin     string
	DNSAddr string // the stub's host:port; the port must be 53
	cfg     SystemConfig
	daemon
}

// Name implements System.
func (c *Chasquid) Name() string { return "chasquid" }

// Version implements System.
func (c *Chasquid) Version() string {
	out, err := exec.Command(c.Bin, "-version").CombinedOutput()
	if err != nil {
		return "chasquid (version unknown)"
	}
	return firstLine(out)
}

// Recipient is the load generator's recipient for chasquid.
func (c *Chasquid) Recipient() string { return "bench@" + ChasquidDomain }

// Start implements System.
func (c *Chasquid) Start(cfg SystemConfig) error {
	c.cfg = cfg
	etc := filepath.Join(cfg.Dir, "etc")
	dom := filepath.Join(etc, "domains", ChasquidDomain)
	for _, d := range []string{dom, filepath.Join(cfg.Dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// chasquid will not start without a certificate in certs/: it offers
	// STARTTLS in plaintext cells too (the load generator does not use
	// it there).
	certs := filepath.Join(etc, "certs", "bench.test")
	if err := os.MkdirAll(certs, 0o755); err != nil {
		return err
	}
	for src, dst := range map[string]string{cfg.Cert: "fullchain.pem", cfg.Key: "privkey.pem"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(certs, dst), b, 0o600); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dom, "aliases"), []byte("bench: bench@sink.bench\n"), 0o644); err != nil {
		return err
	}
	if err := writeTemplate("chasquid.conf.tmpl", filepath.Join(etc, "chasquid.conf"), cfg); err != nil {
		return err
	}
	host, port, _ := strings.Cut(c.DNSAddr, ":")
	if port != "53" {
		return fmt.Errorf("chasquid: the DNS stub must be on port 53 (resolv.conf cannot name a port), not %q", c.DNSAddr)
	}
	resolv := filepath.Join(cfg.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+host+"\noptions timeout:1 attempts:1\n"), 0o644); err != nil {
		return err
	}
	sinkPort := strconv.Itoa(cfg.SinkPort)
	// unshare execs sh, which mounts and execs chasquid: one pid.
	args := []string{"-m", "--propagation", "private", "sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv,
		c.Bin, "-config_dir", etc, "-logfile", filepath.Join(cfg.Dir, "chasquid.log"), "-testing__outgoing_smtp_port", sinkPort}
	if err := c.daemon.start(filepath.Join(cfg.Dir, "chasquid.out"), cfg.Dir, nil, "unshare", args...); err != nil {
		return err
	}
	return waitPeer(&c.daemon, "chasquid", cfg, filepath.Join(cfg.Dir, "chasquid.log"))
}

// Pids implements System: chasquid is one process.
func (c *Chasquid) Pids() []int { return c.daemon.pids() }

// QueueEmpty implements System: no file in data/queue.
func (c *Chasquid) QueueEmpty() bool { return dirEmpty(filepath.Join(c.cfg.Dir, "data", "queue")) }

// Stop implements System.
func (c *Chasquid) Stop() { c.daemon.stop(10 * time.Second) }

// ---- Haraka ---------------------------------------------------------------

// Haraka is Haraka from npm, run with node: plugins relay (its ACL:
// 127.0.0.0/8 relays), tls (in STARTTLS cells, with the certificate and
// DH parameters the harness gives it: without them Haraka runs `openssl
// dhparam 2048` at start-up, seconds of CPU) and queue/smtp_forward with
// enable_outbound=false, so that relayed mail goes into Haraka's durable
// outbound queue (files in queue/), whose get_mx hook smtp_forward
// answers with the sink for sink.bench. nodes=cpus (one worker process
// per CPU, Haraka's Performance-Tuning advice; with the default of one
// process Haraka uses one core of two). The plugins Haraka's own
// skeleton enables for a public MX (mail_from.is_resolvable,
// rcpt_to.in_host_list) are not: the clients are trusted. Log level
// Haraka's default (info).
type Haraka struct {
	Bin      string // node_modules/Haraka/bin/haraka
	DHParam  string
	Template string // a skeleton made once with haraka -i

	cfg       SystemConfig
	templated bool
	daemon
}

// Name implements System.
func (h *Haraka) Name() string { return "haraka" }

// Version implements System: the package's version and node's.
func (h *Haraka) Version() string {
	v := "Haraka (version unknown)"
	var pkg struct{ Version string }
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(h.Bin)), "package.json")); err == nil && json.Unmarshal(b, &pkg) == nil && pkg.Version != "" {
		v = "Haraka " + pkg.Version
	}
	if out, err := exec.Command("node", "--version").Output(); err == nil {
		v += " on node " + firstLine(out)
	}
	return v
}

var harakaFiles = map[string]string{
	"plugins":          "relay\n{{if .TLS}}tls\n{{end}}queue/smtp_forward\n",
	"smtp.ini":         "listen=127.0.0.1:{{.Port}}\nnodes=cpus\n",
	"me":               "haraka.bench\n",
	"relay.ini":        "[relay]\nacl=true\n",
	"relay_acl_allow":  "127.0.0.0/8\n",
	"tls.ini":          "[main]\nkey=tls_key.pem\ncert=tls_cert.pem\ndhparam=dhparams.pem\n",
	"outbound.ini":     "{{if not .TLS}}enable_tls=false\n{{end}}",
	"smtp_forward.ini": "[main]\nenable_outbound=false\nhost=127.0.0.1\nport={{.SinkPort}}\n\n[sink.bench]\nhost=127.0.0.1\nport={{.SinkPort}}\n",
}

// Start implements System.
func (h *Haraka) Start(cfg SystemConfig) error {
	h.cfg = cfg
	if !h.templated {
		os.RemoveAll(h.Template)
		if out, err := exec.Command(h.Bin, "-i", h.Template).CombinedOutput(); err != nil {
			return fmt.Errorf("haraka -i: %v: %s", err, out)
		}
		h.templated = true
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Dir), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", h.Template, cfg.Dir).CombinedOutput(); err != nil {
		return fmt.Errorf("copying the haraka skeleton: %v: %s", err, out)
	}
	conf := filepath.Join(cfg.Dir, "config")
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "queue"), 0o755); err != nil {
		return err
	}
	for name, text := range harakaFiles {
		if err := writeText(filepath.Join(conf, name), text, cfg); err != nil {
			return err
		}
	}
	if cfg.TLS {
		for src, dst := range map[string]string{cfg.Cert: "tls_cert.pem", cfg.Key: "tls_key.pem", h.DHParam: "dhparams.pem"} {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(conf, dst), b, 0o600); err != nil {
				return err
			}
		}
	}
	if err := h.daemon.start(filepath.Join(cfg.Dir, "haraka.out"), cfg.Dir, []string{"HARAKA=" + cfg.Dir}, h.Bin, "-c", cfg.Dir); err != nil {
		return err
	}
	if err := waitPeer(&h.daemon, "haraka", cfg, filepath.Join(cfg.Dir, "haraka.out")); err != nil {
		return err
	}
	// nodes=cpus: the master forks the workers, which listen; wait for
	// all of them, so that the warm-up does not land on one.
	waitUntil(20*time.Second, h.daemon.alive, func() bool { return len(h.workers()) >= runtime.NumCPU() })
	return nil
}

// workers are the master's children.
func (h *Haraka) workers() []int {
	p := h.daemon.pids()
	if len(p) == 0 {
		return nil
	}
	return p[1:]
}

// Pids implements System: the master and its workers.
func (h *Haraka) Pids() []int { return h.daemon.pids() }

// QueueEmpty implements System: no file in queue/ (its temporary files
// start with a dot and count: a message being written).
func (h *Haraka) QueueEmpty() bool { return dirEmpty(filepath.Join(h.cfg.Dir, "queue")) }

// Stop implements System.
func (h *Haraka) Stop() { h.daemon.stop(15 * time.Second) }

// harakaLogErrors returns Haraka's CRIT and ERROR lines (at most 5).
func harakaLogErrors(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "haraka.out"))
	if err != nil {
		return nil
	}
	re := regexp.MustCompile(`\[(CRIT|ERROR|EMERG|ALERT)\]`)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if re.MatchString(l) && len(out) < 5 {
			out = append(out, l)
		}
	}
	return out
}
