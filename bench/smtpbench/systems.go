package main

import (
	"bufio"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/emersion/go-smtp"
)

//go:embed templates/*.tmpl
var templates embed.FS

// SystemConfig is what a system under test is started with for a cell.
type SystemConfig struct {
	Dir       string   // a fresh directory of its own: config, queue, logs
	Port      int      // where it listens for the load generator
	SinkPort  int      // where it relays sink.bench to
	TLS       bool     // level may in and out; otherwise none in and out
	Cert, Key string   // the ECDSA P-256 certificate both systems serve
	Checks    []string // the gateway's content checks, Caddyfile lines ("check rspamd URL")
}

// System is a mail system under test: the gateway or Postfix.
type System interface {
	Name() string
	// Start writes the system's config into cfg.Dir, starts it and
	// waits until it greets (and, with TLS, completes a STARTTLS).
	Start(cfg SystemConfig) error
	// Pids lists the system's processes now.
	Pids() []int
	// QueueEmpty says whether the system's queue holds no message.
	QueueEmpty() bool
	// Stop stops the system and waits until its processes are gone.
	Stop()
	// Version is the system's version, for the report.
	Version() string
}

func writeTemplate(name, dst string, data any) error {
	t, err := template.ParseFS(templates, "templates/"+name)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := t.Execute(f, data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// waitReady waits until addr greets with 220 and, with useTLS, accepts
// STARTTLS.
func waitReady(addr string, useTLS bool, alive func() bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if !alive() {
			return errors.New("the process exited")
		}
		last = probe(addr, useTLS)
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s: %v", timeout, last)
}

func probe(addr string, useTLS bool) error {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var c *smtp.Client
	if useTLS {
		c, err = smtp.NewClientStartTLS(conn, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			conn.Close()
			return err
		}
	} else {
		c = smtp.NewClient(conn)
		if err := c.Noop(); err != nil { // reads the greeting, EHLO, NOOP
			c.Close()
			return err
		}
	}
	c.Quit() // and closes
	return nil
}

// waitGone waits until none of pids exists, then kills what is left.
func waitGone(pids []int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		alive := pids[:0:0]
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				if st, ok := readStat(pid); ok && st.state != "Z" {
					alive = append(alive, pid)
				}
			}
		}
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range alive {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- the gateway ----------------------------------------------------------

// Gateway is caddy-smtp, a Caddy binary built from this repository.
type Gateway struct {
	Bin string
	// Label names the system in the report; empty means "gateway".
	Label string
	// Engine, if set, is a content-check engine the harness runs: the
	// gateway checks every message with it (Engine.Check) before the
	// 250.
	Engine *Engine
	cfg    SystemConfig
	cmd    *exec.Cmd
	out    *os.File
	// exited is closed when the process has been waited for.
	exited chan struct{}
}

// Name implements System.
func (g *Gateway) Name() string {
	if g.Label != "" {
		return g.Label
	}
	return "gateway"
}

// Version implements System.
func (g *Gateway) Version() string {
	out, err := exec.Command(g.Bin, "version").Output()
	if err != nil {
		return "caddy (version unknown)"
	}
	v := "caddy " + strings.TrimSpace(string(out))
	if g.Engine != nil {
		v += " with " + g.Engine.Version()
	}
	return v
}

// Start implements System.
func (g *Gateway) Start(cfg SystemConfig) error {
	if g.Engine != nil {
		cfg.Checks = []string{g.Engine.Check}
	}
	g.cfg = cfg
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return err
	}
	conf := filepath.Join(cfg.Dir, "Caddyfile")
	if err := writeTemplate("Caddyfile.tmpl", conf, cfg); err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(cfg.Dir, "caddy.out"))
	if err != nil {
		return err
	}
	cmd := exec.Command(g.Bin, "run", "--config", conf, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+cfg.Dir+"/data", "XDG_CONFIG_HOME="+cfg.Dir+"/config", "HOME="+cfg.Dir)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = cfg.Dir
	if err := cmd.Start(); err != nil {
		out.Close()
		return err
	}
	g.cmd, g.out, g.exited = cmd, out, make(chan struct{})
	go func() { cmd.Wait(); close(g.exited) }()
	alive := func() bool {
		select {
		case <-g.exited:
			return false
		default:
			return true
		}
	}
	if err := waitReady(fmt.Sprintf("127.0.0.1:%d", cfg.Port), cfg.TLS, alive, 30*time.Second); err != nil {
		g.Stop()
		return fmt.Errorf("gateway: %w (see %s)", err, out.Name())
	}
	return nil
}

// Pids implements System: Caddy is one process.
func (g *Gateway) Pids() []int {
	if g.cmd == nil || g.cmd.Process == nil {
		return nil
	}
	return []int{g.cmd.Process.Pid}
}

// QueueEmpty implements System: no record (*.rec) in the spool.
func (g *Gateway) QueueEmpty() bool {
	entries, err := os.ReadDir(filepath.Join(g.cfg.Dir, "queue"))
	if err != nil {
		return false
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".rec") && !strings.HasPrefix(e.Name(), ".") {
			return false
		}
	}
	return true
}

// Stop implements System: SIGTERM, and SIGKILL after 10 s.
func (g *Gateway) Stop() {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-g.exited
	}
	g.out.Close()
	g.cmd = nil
}

// ---- Postfix --------------------------------------------------------------

// Postfix is a private instance of the system's Postfix, run with
// `postfix -c DIR/etc` from a directory of its own.
//
// `postfix check` (which creates the queue's subdirectories) and the
// checks `postfix start` runs take seconds of CPU, so they run once, for
// a template instance in Template; each cell's instance gets a copy of
// the template's empty queue and starts with the queue's quick-start
// flag, which skips the checks (postfix-script).
type Postfix struct {
	Template string // directory of the template instance; made on first Start

	cfg       SystemConfig
	master    int
	templated bool
}

// Name implements System.
func (p *Postfix) Name() string { return "postfix" }

// Version implements System.
func (p *Postfix) Version() string {
	out, err := exec.Command("postconf", "-d", "-h", "mail_version").Output()
	if err != nil {
		return "postfix (version unknown)"
	}
	return "postfix " + strings.TrimSpace(string(out))
}

func postfixCmd(dir string, args ...string) error {
	cmd := exec.Command("postfix", append([]string{"-c", filepath.Join(dir, "etc")}, args...)...)
	out, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, "postfix-"+args[0]+".log"), out, 0o644)
	if err != nil {
		return fmt.Errorf("postfix %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeInstance makes the directories and config of an instance in
// cfg.Dir. Postfix's daemons run as the postfix user: the directory (and
// the certificate) must be reachable by it; run makes its work directory
// mode 0755.
func writeInstance(cfg SystemConfig, withQueue bool) error {
	dirs := []string{"etc", "data"}
	if withQueue {
		dirs = append(dirs, "queue")
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return err
		}
	}
	u, err := user.Lookup("postfix")
	if err != nil {
		return fmt.Errorf("postfix user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(filepath.Join(cfg.Dir, "data"), uid, gid); err != nil {
		return err
	}
	if err := writeTemplate("main.cf.tmpl", filepath.Join(cfg.Dir, "etc", "main.cf"), cfg); err != nil {
		return err
	}
	return writeTemplate("master.cf.tmpl", filepath.Join(cfg.Dir, "etc", "master.cf"), cfg)
}

// Start implements System.
func (p *Postfix) Start(cfg SystemConfig) error {
	p.cfg, p.master = cfg, 0
	if !p.templated {
		tcfg := cfg
		tcfg.Dir = p.Template
		if err := writeInstance(tcfg, true); err != nil {
			return err
		}
		// "check" creates the queue's subdirectories.
		if err := postfixCmd(p.Template, "check"); err != nil {
			return err
		}
		p.templated = true
	}
	if err := writeInstance(cfg, false); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(p.Template, "queue"), filepath.Join(cfg.Dir, "queue")).CombinedOutput(); err != nil {
		return fmt.Errorf("copying the template queue: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "queue", "quick-start"), nil, 0o644); err != nil {
		return err
	}
	if err := postfixCmd(cfg.Dir, "start"); err != nil {
		return err
	}
	alive := func() bool {
		pid := p.masterPid()
		return pid == 0 || syscall.Kill(pid, 0) == nil
	}
	if err := waitReady(fmt.Sprintf("127.0.0.1:%d", cfg.Port), cfg.TLS, alive, 30*time.Second); err != nil {
		p.Stop()
		return fmt.Errorf("postfix: %w (see %s/maillog)", err, cfg.Dir)
	}
	p.master = p.masterPid()
	if p.master == 0 {
		return errors.New("postfix: no master.pid")
	}
	return nil
}

func (p *Postfix) masterPid() int {
	b, err := os.ReadFile(filepath.Join(p.cfg.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// Pids implements System: the master and everything below it.
func (p *Postfix) Pids() []int {
	if p.master == 0 {
		return nil
	}
	return descendants(p.master)
}

// QueueEmpty implements System: no file in the queues a message passes
// through.
func (p *Postfix) QueueEmpty() bool {
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		empty := true
		filepath.WalkDir(filepath.Join(p.cfg.Dir, "queue", q), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				empty = false
				return fs.SkipAll
			}
			return nil
		})
		if !empty {
			return false
		}
	}
	return true
}

// Stop implements System: "postfix abort" (the queue is drained by then),
// then waits for every process of the instance to exit.
func (p *Postfix) Stop() {
	pids := p.Pids()
	if pid := p.masterPid(); len(pids) == 0 && pid != 0 {
		pids = descendants(pid)
	}
	postfixCmd(p.cfg.Dir, "abort")
	waitGone(pids, 10*time.Second)
	p.master = 0
}

// postfixLogErrors returns the fatal/panic/error lines of an instance's
// maillog (at most 5).
func postfixLogErrors(dir string) []string {
	f, err := os.Open(filepath.Join(dir, "maillog"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() && len(out) < 5 {
		l := sc.Text()
		if strings.Contains(l, ": fatal:") || strings.Contains(l, ": panic:") || strings.Contains(l, ": error:") {
			out = append(out, l)
		}
	}
	return out
}
