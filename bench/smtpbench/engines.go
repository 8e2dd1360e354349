package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Engine is a content-check engine the harness runs for the gateway's
// checks (issue 14): Debian's rspamd or clamd, with a private config in
// a directory of its own, on loopback, offline. It is started once for
// the run (its start-up is seconds of CPU and it keeps no state between
// messages that matters here), before the first cell, and stopped at the
// end. The configuration follows internal/smtptest (StartRspamd,
// StartClamd); those take a testing.TB, pick their own ports and do not
// hand out the process, which the harness needs for its CPU, so the
// harness writes the same kind of config itself.
type Engine struct {
	Name  string // "rspamd" or "clamd"
	Check string // the gateway's Caddyfile line, e.g. "check rspamd http://127.0.0.1:2955"
	Dir   string
	Note  string // how it is configured, for the report

	daemon
}

// Pids lists the engine's processes: the main one and its workers.
func (e *Engine) Pids() []int {
	if e == nil {
		return nil
	}
	return e.daemon.pids()
}

// Stop stops the engine's process group (daemon.stop).
func (e *Engine) Stop() {
	if e != nil {
		e.daemon.stop(10 * time.Second)
	}
}

// Version is the engine's version, for the report.
func (e *Engine) Version() string {
	var out []byte
	switch e.Name {
	case "rspamd":
		out, _ = exec.Command("rspamd", "--version").Output()
	case "clamd":
		out, _ = exec.Command(clamdBin(), "--version").Output()
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return e.Name + " (version unknown)"
	}
	return v
}

func (e *Engine) start(bin string, args []string) error {
	return e.daemon.start(filepath.Join(e.Dir, e.Name+".out"), e.Dir, nil, bin, args...)
}

// daemon is a process the harness runs, with its children: an engine, or
// a peer MTA. It has a process group of its own (rspamd and Haraka fork
// workers), stopped whole.
type daemon struct {
	cmd    *exec.Cmd
	out    *os.File
	exited chan struct{} // closed when the process has been waited for
}

// start runs bin with args in dir, its output to outFile, env added to
// the harness's environment.
func (d *daemon) start(outFile, dir string, env []string, bin string, args ...string) error {
	out, err := os.Create(outFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return err
	}
	d.cmd, d.out, d.exited = cmd, out, make(chan struct{})
	go func() { cmd.Wait(); close(d.exited) }()
	return nil
}

func (d *daemon) alive() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// pids is the main process and everything below it.
func (d *daemon) pids() []int {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	return descendants(d.cmd.Process.Pid)
}

// stop sends SIGTERM to the process group, SIGKILL after timeout, and
// waits for the workers left behind by a main process that died first.
func (d *daemon) stop(timeout time.Duration) {
	if d.cmd == nil {
		return
	}
	pgid := d.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(timeout):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-d.exited
	}
	waitGone(descendantsByScan(pgid), 5*time.Second)
	d.out.Close()
	d.cmd = nil
}

// waitQuiet waits until the engine's processes use (almost) no CPU for
// a second: rspamd compiles its regular expressions (hyperscan) in a
// helper process after it answers /ping, and a cell must not measure
// that.
func (e *Engine) waitQuiet(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	ticks := func() int64 {
		var t int64
		for _, pid := range e.Pids() {
			if st, ok := readStat(pid); ok {
				t += st.cpuTicks
			}
		}
		return t
	}
	quiet, last := 0, ticks()
	for quiet < 2 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		now := ticks()
		if now-last <= 2 { // 20 ms of CPU in 500 ms
			quiet++
		} else {
			quiet = 0
		}
		last = now
	}
}

func waitUntil(timeout time.Duration, alive func() bool, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !alive() {
			return false
		}
		if cond() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// StartRspamd runs Debian's rspamd with a private local config (as
// internal/smtptest.StartRspamd): LOCAL_CONFDIR, DBDIR, RUNDIR and
// LOGDIR in dir, the normal worker on 127.0.0.1:port, the controller on
// controllerPort, no proxy worker, no redis (so no greylisting module,
// no Bayes, no ratelimit), DNS at 127.0.0.1:dnsPort, where nothing
// listens (offline; a lookup fails after its timeout). workers > 0 sets
// the normal worker's count (rspamd's default depends on the CPUs: 1 on
// 2 cores). Everything else is rspamd's default, log level included.
func StartRspamd(dir string, port, controllerPort, dnsPort, workers int) (*Engine, error) {
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		return nil, fmt.Errorf("rspamd not found (Debian package rspamd)")
	}
	for _, d := range []string{"local.d", "db", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	normal := fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\n", port)
	if workers > 0 {
		normal += fmt.Sprintf("count = %d;\n", workers)
	}
	files := map[string]string{
		"local.d/worker-normal.inc":     normal,
		"local.d/worker-controller.inc": fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", controllerPort),
		"local.d/worker-proxy.inc":      "enabled = false;\n",
		"local.d/logging.inc":           "type = \"file\";\nfilename = \"" + filepath.Join(dir, "rspamd.log") + "\";\n",
		"local.d/options.inc":           fmt.Sprintf("dns { nameserver = [\"127.0.0.1:%d\"]; timeout = 0.5s; retransmits = 1; }\n", dnsPort),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	args := []string{"-f", "--var", "LOCAL_CONFDIR=" + dir, "--var", "DBDIR=" + filepath.Join(dir, "db"),
		"--var", "RUNDIR=" + filepath.Join(dir, "run"), "--var", "LOGDIR=" + dir}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root", "-g", "root", "--insecure")
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	e := &Engine{Name: "rspamd", Dir: dir, Check: "check rspamd " + url}
	if err := e.start(bin, args); err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: time.Second}
	if !waitUntil(90*time.Second, e.alive, func() bool {
		resp, err := client.Get(url + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		e.Stop()
		return nil, fmt.Errorf("rspamd did not answer /ping within 90s (see %s/rspamd.log)", dir)
	}
	e.waitQuiet(60 * time.Second)
	count := "rspamd's default"
	if workers > 0 {
		count = "-rspamd-workers"
	}
	e.Note = fmt.Sprintf("rspamd's default config with a private local.d: %d normal worker(s) (%s on %d CPUs) on 127.0.0.1:%d, a controller, no proxy worker, no redis, DNS to a closed port",
		e.countProcs("rspamd: normal"), count, runtime.NumCPU(), port)
	return e, nil
}

// countProcs counts the engine's processes whose title (rspamd sets
// it: "rspamd: normal process (ADDR)") starts with prefix.
func (e *Engine) countProcs(prefix string) int {
	n := 0
	for _, pid := range e.Pids() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.HasPrefix(string(b), prefix) {
			n++
		}
	}
	return n
}

func clamdBin() string {
	if p, err := exec.LookPath("clamd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/clamd"); err == nil {
		return "/usr/sbin/clamd"
	}
	return ""
}

// eicar is the EICAR anti-virus test string, assembled at run time (as
// internal/smtptest.EICAR), the one signature of clamd's database.
var eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

// StartClamd runs Debian's clamd with a private config (as
// internal/smtptest.StartClamd) on 127.0.0.1:port, with a database
// holding only the EICAR signature: offline there are no downloaded
// signatures, so this measures the stream and the scanner's fixed work,
// not matching against ClamAV's millions of signatures.
func StartClamd(dir string, port int) (*Engine, error) {
	bin := clamdBin()
	if bin == "" {
		return nil, fmt.Errorf("clamd not found (Debian package clamav-daemon)")
	}
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(db, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(db, "eicar.ndb"), []byte(fmt.Sprintf("Eicar-Test-Signature:0:*:%x\n", eicar)), 0o644); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "clamd.conf")
	text := fmt.Sprintf("Foreground yes\nTCPSocket %d\nTCPAddr 127.0.0.1\nDatabaseDirectory %s\nLogFile %s\nPidFile %s\n",
		port, db, filepath.Join(dir, "clamd.log"), filepath.Join(dir, "clamd.pid"))
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	e := &Engine{Name: "clamd", Dir: dir, Check: fmt.Sprintf("check clamav tcp/127.0.0.1:%d", port),
		Note: fmt.Sprintf("clamd's defaults, TCP 127.0.0.1:%d, database: the EICAR signature only", port)}
	if err := e.start(bin, []string{"-c", conf}); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if !waitUntil(60*time.Second, e.alive, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("zPING\x00"))
		r, _ := bufio.NewReader(c).ReadString(0)
		return strings.HasPrefix(r, "PONG")
	}) {
		e.Stop()
		return nil, fmt.Errorf("clamd did not answer PING within 60s (see %s/clamd.log)", dir)
	}
	return e, nil
}

// checkLog counts the gateway's check lines in its log (caddy.log, JSON):
// "check accept rspamd: no action" and so on, the rspamd action taken
// from the reason (its first words, before the score).
func checkLog(file string) map[string]int {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	counts := map[string]int{}
	score := regexp.MustCompile(`^-?[0-9.]+/[0-9.]+$`)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"check `) {
			continue
		}
		var l struct {
			Msg    string `json:"msg"`
			Check  string `json:"check"`
			Reason string `json:"reason"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || !strings.HasPrefix(l.Msg, "check ") {
			continue
		}
		k := l.Msg + " " + l.Check
		if l.Check == "rspamd" && l.Reason != "" {
			var words []string
			for _, w := range strings.Fields(l.Reason) {
				if score.MatchString(w) {
					break
				}
				words = append(words, w)
			}
			k += ": " + strings.Join(words, " ")
		}
		counts[k]++
	}
	return counts
}

func countsString(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s ×%d", k, m[k]))
	}
	return strings.Join(out, ", ")
}
