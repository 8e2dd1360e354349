package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RunConfig is the configuration of "smtpbench run".
type RunConfig struct {
	Caddy     string // the caddy binary built from this repository
	Baseline  string // optional: another caddy binary, run as system "baseline"
	Work      string // a directory for everything the run writes
	Cert, Key string // ECDSA P-256 certificate and key (PEM)
	PortBase  int    // ports PortBase+1 .. +8 on 127.0.0.1

	PerConn int     // messages per connection
	N4k1    int     // messages per run: 4 KiB at c=1
	N4k50   int     // 4 KiB at c=50
	N100k1  int     // 100 KiB at c=1
	N100k50 int     // 100 KiB at c=50
	Scale   float64 // multiplies the four counts
	Conc    int     // the high concurrency (50)

	CrossCheck   bool    // smtp-source / smtp-sink runs for the plaintext cells
	CrossScale   float64 // their message counts, relative to the cell's
	Strace       bool    // count syscalls per message with strace
	StraceN      int     // messages of the strace run
	StraceOrderN int     // messages sent one at a time for the fsyncs before the 250
	X25519       bool    // load generator and sink offer X25519 only
	Only         string  // run only cells whose id contains this
	Systems      string  // "gateway,postfix,gateway+rspamd,gateway+clamav"

	CheckCells    string // the systems with a content check run only in cells whose id contains this
	RspamdWorkers int    // rspamd's normal worker count; 0: rspamd's default

	// The peers (issue 16): their installations (bench/run.sh makes
	// them; empty: left out), the cells they run in and the extra cell.
	Maddy     string // the maddy binary
	Chasquid  string // the chasquid binary (usr/bin/chasquid of the unpacked package)
	Haraka    string // node_modules/Haraka/bin/haraka
	DHParam   string // DH parameters for Haraka's TLS (PEM)
	DNSAddr   string // the loopback DNS stub chasquid resolves through (port 53)
	PeerCells string // comma-separated: peers run in the cells whose id contains one of these
	N4kK1     int    // messages of the STARTTLS 4 KiB cell with 1 message per connection (0: no such cell)
	ConcK1    int    // its concurrency

	WaitTimeout time.Duration // for the sink to get everything, after the load
	LoadTimeout time.Duration // for one load run
}

// Cell is one combination of the benchmark's parameters.
type Cell struct {
	TLS     bool
	Size    int
	Conc    int
	N       int
	PerConn int // messages per connection; 0: the run's -k
}

// Name is the cell as the table shows it ("STARTTLS 4 KiB c=20 ×1"; no
// "×k" for the run's -k).
func (c Cell) Name() string {
	mode := "plaintext"
	if c.TLS {
		mode = "STARTTLS"
	}
	n := fmt.Sprintf("%s %s c=%d", mode, sizeName(c.Size), c.Conc)
	if c.PerConn > 0 {
		n += fmt.Sprintf(" ×%d", c.PerConn)
	}
	return n
}

// ID is the cell as a file name ("tls-4k-c20-k1").
func (c Cell) ID() string {
	mode := "plain"
	if c.TLS {
		mode = "tls"
	}
	id := fmt.Sprintf("%s-%dk-c%d", mode, c.Size/1024, c.Conc)
	if c.PerConn > 0 {
		id += fmt.Sprintf("-k%d", c.PerConn)
	}
	return id
}

// perConn is the cell's messages per connection.
func (c Cell) perConn(def int) int {
	if c.PerConn > 0 {
		return c.PerConn
	}
	return def
}

func sizeName(n int) string { return fmt.Sprintf("%d KiB", n/1024) }

// Result is one system's measurements in one cell.
type Result struct {
	System     string
	Cell       string
	CellID     string
	Asked      int
	Accepted   int
	Arrived    int
	Errors     int
	FirstError string `json:",omitempty"`
	Conns      int

	AcceptRate  float64 // accepted msgs/s: first dial to last 250
	E2ERate     float64 // msgs/s: first dial to last arrival at the sink
	AcceptP50ms float64 // end of DATA to 250
	AcceptP99ms float64
	E2EP50ms    float64 // end of DATA to arrival at the sink
	E2EP99ms    float64
	Seconds     float64 // first dial to last arrival
	StartSec    float64 // starting the system
	WarmSec     float64 // the warm-up
	StopSec     float64 // stopping it

	Usage       Usage
	CPUmsPerMsg float64
	// The content-check engine of gateway+rspamd and gateway+clamav:
	// its processes sampled as the system's are (Usage and CPUmsPerMsg
	// are the gateway's alone), and the gateway's check log lines over
	// the cell (warm-up included).
	Engine            string         `json:",omitempty"`
	EngineUsage       Usage          `json:",omitempty"`
	EngineCPUmsPerMsg float64        `json:",omitempty"`
	CheckLog          map[string]int `json:",omitempty"`

	DiskFsyncs float64 // fsyncs/s of one writer just before the cell (harness-alone row)

	InTLS       string // what the load generator negotiated
	OutTLS      string // what the sink saw
	OutTLSMsgs  int
	OutPlain    int
	OutConns    int // outbound connections the sink took during the measured run
	Duplicates  int
	Complete    bool
	Note        string   `json:",omitempty"`
	LogProblems []string `json:",omitempty"`
}

// CrossResult is one system in one plaintext cell driven by Postfix's
// smtp-source and relaying to Postfix's smtp-sink.
type CrossResult struct {
	System     string
	CellID     string
	AcceptRate float64 // messages / smtp-source's run time
	E2ERate    float64 // messages / (smtp-source start to smtp-sink's exit after the last message)
	Complete   bool
	Note       string `json:",omitempty"`
}

// StraceResult counts the syscalls of one system for a run of messages.
type StraceResult struct {
	System   string
	Messages int
	Calls    map[string]int64
	Seconds  map[string]float64 // wall time in the call (strace -w)
	Err      string             `json:",omitempty"`
	// Before250 is, for messages sent one at a time (each after the
	// last was delivered), the fsyncs (fsync, fdatasync) any of the
	// system's processes started between its 354 reply and its 250
	// (strace -f of those calls and of the replies' writes).
	Before250 []int `json:",omitempty"`
	// Before250Dir counts those of a directory (strace -y names the
	// fd's file): the rename or link that makes a queue file durable.
	Before250Dir []int  `json:",omitempty"`
	OrderErr     string `json:",omitempty"`
}

// Report is everything a run measured.
type Report struct {
	Date        time.Time
	Machine     map[string]string
	Versions    map[string]string
	LoadStart   string
	LoadEnd     string
	Ceilings    *Ceilings // at the start
	CeilingsEnd *Ceilings // at the end, for how much they moved
	Config      RunConfig
	Results     []Result
	Cross       []CrossResult
	Strace      []StraceResult
	Engines     []EngineInfo `json:",omitempty"`
	Skipped     []string     `json:",omitempty"` // peers left out, and why
	Peers       []string     `json:",omitempty"` // the peers that ran
	Duration    float64
	HarnessCPU  float64
}

// EngineInfo is a content-check engine as the run started it.
type EngineInfo struct {
	Name     string
	Version  string
	Note     string
	StartSec float64 // to /ping (PING) and quiet
	Err      string  `json:",omitempty"`
}

type runner struct {
	cfg     RunConfig
	groups  []tls.CurveID // key exchanges the load generator and the sink offer
	cert    tls.Certificate
	sink    *Sink
	systems []System
	engines []*Engine
	start   time.Time
}

// engineOf is the content-check engine of a system, or nil.
func engineOf(sys System) *Engine {
	if g, ok := sys.(*Gateway); ok {
		return g.Engine
	}
	return nil
}

// joins says whether sys runs in cell: a system with a content check
// only in the cells -check-cells names, a peer only in those -peer-cells
// names.
func (r *runner) joins(sys System, cell Cell) bool {
	if isPeer(sys) {
		for _, c := range strings.Split(r.cfg.PeerCells, ",") {
			if c = strings.TrimSpace(c); c != "" && strings.Contains(cell.ID(), c) {
				return true
			}
		}
		return false
	}
	return engineOf(sys) == nil || strings.Contains(cell.ID(), r.cfg.CheckCells)
}

// isPeer says whether sys is one of maddy, chasquid and Haraka.
func isPeer(sys System) bool {
	switch sys.(type) {
	case *Maddy, *Chasquid, *Haraka:
		return true
	}
	return false
}

// peerNames are the peers in the report's order.
var peerNames = []string{"maddy", "chasquid", "haraka"}

// rcptOf is the recipient the load generator uses for sys ("": the
// default, bench@sink.bench).
func rcptOf(sys System) string {
	if r, ok := sys.(interface{ Recipient() string }); ok {
		return r.Recipient()
	}
	return ""
}

// logProblems are the error lines of a system's logs after a cell.
func logProblems(sys System) []string {
	switch s := sys.(type) {
	case *Postfix:
		return postfixLogErrors(s.cfg.Dir)
	case *Haraka:
		return harakaLogErrors(s.cfg.Dir)
	case *Maddy:
		return grepLines(filepath.Join(s.cfg.Dir, "maddy.log"), `(?i)error|failed`, "", 5)
	case *Chasquid:
		return grepLines(filepath.Join(s.cfg.Dir, "chasquid.log"), `^\S+ \S+ (E|☠) `, `submission|systemd`, 5)
	}
	return nil
}

// grepLines returns up to n lines of file that match re and not skip.
func grepLines(file, re, skip string, n int) []string {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	m, sk := regexp.MustCompile(re), regexp.MustCompile("^$")
	if skip != "" {
		sk = regexp.MustCompile(skip)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if len(out) < n && m.MatchString(l) && !sk.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%4.0fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *runner) port(i int) int { return r.cfg.PortBase + i }

func (r *runner) systemConfig(sys System, cell Cell, dir string, sinkPort int) SystemConfig {
	port := r.port(1)
	switch sys.Name() {
	case "postfix":
		port = r.port(2)
	case "maddy":
		port = r.port(9)
	case "chasquid":
		port = r.port(10)
	case "haraka":
		port = r.port(11)
	}
	return SystemConfig{Dir: dir, Port: port, SinkPort: sinkPort, TLS: cell.TLS, Cert: r.cfg.Cert, Key: r.cfg.Key}
}

// warmup sends a few messages (one per connection, cell.Conc at once)
// so that the measured run does not pay for process start-up, and waits
// until they are through the system.
func (r *runner) warmup(sys System, cell Cell, addr, prefix string, arrived func(n int) bool) error {
	n := cell.Conc
	if n < 10 {
		n = 10
	}
	w := Load(LoadConfig{Groups: r.groups, Addr: addr, TLS: cell.TLS, Messages: n, Concurrency: cell.Conc, PerConn: 1,
		Size: cell.Size, Prefix: prefix, Rcpt: rcptOf(sys), Timeout: r.cfg.LoadTimeout})
	if w.Accepted == 0 {
		return fmt.Errorf("warm-up: nothing accepted (%s)", w.FirstError)
	}
	deadline := time.Now().Add(r.cfg.WaitTimeout)
	for !(arrived(w.Accepted) && sys.QueueEmpty()) {
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up: %d messages not through after %s", w.Accepted, r.cfg.WaitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// runCell measures one system in one cell.
func (r *runner) runCell(sys System, cell Cell) (res Result) {
	res = Result{System: sys.Name(), Cell: cell.Name(), CellID: cell.ID(), Asked: cell.N}
	dir := filepath.Join(r.cfg.Work, "cells", cell.ID()+"-"+sys.Name())
	scfg := r.systemConfig(sys, cell, dir, r.port(3))
	t0 := time.Now()
	if err := sys.Start(scfg); err != nil {
		res.Note = "start failed: " + err.Error()
		return res
	}
	res.StartSec = time.Since(t0).Seconds()
	defer func() {
		res.LogProblems = logProblems(sys)
		t := time.Now()
		sys.Stop()
		res.StopSec = time.Since(t).Seconds()
		if engineOf(sys) != nil {
			res.CheckLog = checkLog(filepath.Join(dir, "caddy.log"))
		}
	}()
	addr := fmt.Sprintf("127.0.0.1:%d", scfg.Port)
	r.sink.Reset()
	wp := fmt.Sprintf("w-%s-%s-", cell.ID(), sys.Name())
	if err := r.warmup(sys, cell, addr, wp, func(n int) bool { return r.sink.Count(wp) >= n }); err != nil {
		res.Note = err.Error()
		return res
	}
	res.WarmSec = time.Since(t0).Seconds() - res.StartSec
	r.sink.Reset()

	e := engineOf(sys)
	r.measure(&res, cell, addr, fmt.Sprintf("m-%s-%s-", cell.ID(), sys.Name()), rcptOf(sys), sys.Pids, e.Pids)
	if e != nil {
		res.Engine = e.Name
		if res.Accepted > 0 {
			res.EngineCPUmsPerMsg = res.EngineUsage.CPUSec * 1000 / float64(res.Accepted)
		}
	}
	return res
}

// measure runs the cell's load against addr, waits for its messages at
// the sink, samples the memory and CPU of the processes pids names (and
// of enginePids, a content-check engine's, if not nil), and fills res
// in.
func (r *runner) measure(res *Result, cell Cell, addr, prefix, rcpt string, pids func() []int, enginePids func() []int) {
	sampler := StartSampler(pids, 100*time.Millisecond)
	var engine *Sampler
	if enginePids != nil && len(enginePids()) > 0 {
		engine = StartSampler(enginePids, 100*time.Millisecond)
	}
	load := Load(LoadConfig{Groups: r.groups, Addr: addr, TLS: cell.TLS, Messages: cell.N, Concurrency: cell.Conc,
		PerConn: cell.perConn(r.cfg.PerConn), Size: cell.Size, Prefix: prefix, Rcpt: rcpt, Timeout: r.cfg.LoadTimeout})
	res.Complete = r.sink.Wait(prefix, load.Accepted, r.cfg.WaitTimeout)
	res.Usage = sampler.Stop()
	if engine != nil {
		res.EngineUsage = engine.Stop()
	}
	res.fill(load, r.sink, prefix)
}

// runAlone measures the harness alone in a cell: the load generator
// sending straight to the sink, no system in between. It is what the
// harness can do at most on this machine, and its CPU per message is
// spent in every system's run too.
func (r *runner) runAlone(cell Cell) Result {
	res := Result{System: "harness alone", Cell: cell.Name(), CellID: cell.ID(), Asked: cell.N}
	addr := fmt.Sprintf("127.0.0.1:%d", r.port(3))
	r.sink.Reset()
	self := os.Getpid()
	r.measure(&res, cell, addr, fmt.Sprintf("a-%s-", cell.ID()), "", func() []int { return []int{self} }, nil)
	return res
}

// fill computes a result's numbers from a load run and the sink.
func (res *Result) fill(load *LoadResult, sink *Sink, prefix string) {
	res.Accepted, res.Errors, res.FirstError, res.Conns = load.Accepted, load.Errors, load.FirstError, load.Conns
	res.AcceptRate = load.Rate()
	lat := sortDurations(load.Accept)
	res.AcceptP50ms = msf(percentile(lat, 50))
	res.AcceptP99ms = msf(percentile(lat, 99))
	res.InTLS = load.TLSInfo
	var e2e []time.Duration
	var last time.Time
	for i, end := range load.DataEnd {
		if end.IsZero() {
			continue
		}
		at, ok := sink.Arrival(IDFor(prefix, i))
		if !ok {
			continue
		}
		e2e = append(e2e, at.Sub(end))
		if at.After(last) {
			last = at
		}
	}
	res.Arrived = len(e2e)
	if res.Arrived > 0 {
		res.Seconds = last.Sub(load.Start).Seconds()
		res.E2ERate = float64(res.Arrived) / res.Seconds
		e2e = sortDurations(e2e)
		res.E2EP50ms = msf(percentile(e2e, 50))
		res.E2EP99ms = msf(percentile(e2e, 99))
	}
	if res.Accepted > 0 {
		res.CPUmsPerMsg = res.Usage.CPUSec * 1000 / float64(res.Accepted)
	}
	res.Duplicates, res.OutTLSMsgs, res.OutPlain, res.OutTLS = sink.Stats()
	res.OutConns = sink.Sessions()
	if res.Accepted < res.Asked {
		res.Note = fmt.Sprintf("%d of %d accepted", res.Accepted, res.Asked)
	}
	if !res.Complete {
		res.Note = strings.TrimPrefix(res.Note+fmt.Sprintf("; %d of %d arrived in time", res.Arrived, res.Accepted), "; ")
	}
}

// runCross drives one system in a plaintext cell with smtp-source and
// makes it relay to smtp-sink, which exits after the last message.
func (r *runner) runCross(sys System, cell Cell) CrossResult {
	res := CrossResult{System: sys.Name(), CellID: cell.ID()}
	dir := filepath.Join(r.cfg.Work, "cross", cell.ID()+"-"+sys.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		res.Note = err.Error()
		return res
	}
	warmN := cell.Conc
	if warmN < 10 {
		warmN = 10
	}
	sinkAddr := fmt.Sprintf("127.0.0.1:%d", r.port(4))
	sinkOut, _ := os.Create(filepath.Join(dir, "smtp-sink.out"))
	defer sinkOut.Close()
	sinkCmd := exec.Command("smtp-sink", "-u", "postfix", "-M", strconv.Itoa(warmN+cell.N), sinkAddr, "256")
	sinkCmd.Stdout, sinkCmd.Stderr = sinkOut, sinkOut
	if err := sinkCmd.Start(); err != nil {
		res.Note = "smtp-sink: " + err.Error()
		return res
	}
	sinkDone := make(chan time.Time, 1)
	go func() { sinkCmd.Wait(); sinkDone <- time.Now() }()
	defer func() {
		select {
		case <-sinkDone:
		default:
			sinkCmd.Process.Kill()
			<-sinkDone
		}
	}()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", sinkAddr); err == nil {
			c.Close() // smtp-sink counts sessions, not this
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	scfg := r.systemConfig(sys, cell, dir, r.port(4))
	if err := sys.Start(scfg); err != nil {
		res.Note = "start failed: " + err.Error()
		return res
	}
	defer sys.Stop()
	addr := fmt.Sprintf("127.0.0.1:%d", scfg.Port)
	if err := r.warmup(sys, cell, addr, fmt.Sprintf("xw-%s-%s-", cell.ID(), sys.Name()), func(int) bool { return true }); err != nil {
		res.Note = err.Error()
		return res
	}

	// smtp-source -l is the payload without its own headers (about 150
	// bytes: From, To, Date, Message-Id).
	rcpt := rcptOf(sys)
	if rcpt == "" {
		rcpt = "bench@sink.bench"
	}
	args := []string{"-4", "-d", "-s", strconv.Itoa(cell.Conc), "-m", strconv.Itoa(cell.N),
		"-l", strconv.Itoa(cell.Size - 150), "-f", "smtp-source@load.bench", "-t", rcpt,
		"-M", "load.bench", addr}
	src := exec.Command("smtp-source", args...)
	t0 := time.Now()
	out, err := src.CombinedOutput()
	t1 := time.Now()
	os.WriteFile(filepath.Join(dir, "smtp-source.out"), out, 0o644)
	if err != nil {
		res.Note = fmt.Sprintf("smtp-source: %v: %s", err, strings.TrimSpace(string(out)))
		return res
	}
	res.AcceptRate = float64(cell.N) / t1.Sub(t0).Seconds()
	select {
	case t2 := <-sinkDone:
		sinkDone <- t2
		res.E2ERate = float64(cell.N) / t2.Sub(t0).Seconds()
		res.Complete = true
	case <-time.After(r.cfg.WaitTimeout):
		res.Note = "smtp-sink did not get every message within " + r.cfg.WaitTimeout.String()
	}
	return res
}

// runStrace counts one system's syscalls, all processes, for a run of
// plaintext 4 KiB messages at c=1.
func (r *runner) runStrace(sys System) StraceResult {
	cell := Cell{Size: 4096, Conc: 1, N: r.cfg.StraceN}
	res := StraceResult{System: sys.Name(), Messages: cell.N}
	dir := filepath.Join(r.cfg.Work, "strace", sys.Name())
	scfg := r.systemConfig(sys, cell, dir, r.port(3))
	if err := sys.Start(scfg); err != nil {
		res.Err = "start failed: " + err.Error()
		return res
	}
	defer sys.Stop()
	addr := fmt.Sprintf("127.0.0.1:%d", scfg.Port)
	r.sink.Reset()
	wp := "sw-" + sys.Name() + "-"
	if err := r.warmup(sys, cell, addr, wp, func(n int) bool { return r.sink.Count(wp) >= n }); err != nil {
		res.Err = err.Error()
		return res
	}
	out := filepath.Join(dir, "strace.txt")
	args := []string{"-f", "-c", "-w", "-o", out}
	pids := sys.Pids()
	for _, pid := range pids {
		args = append(args, "-p", strconv.Itoa(pid))
	}
	var stderr bytes.Buffer
	st := exec.Command("strace", args...)
	st.Stderr = &stderr
	if err := st.Start(); err != nil {
		res.Err = "strace: " + err.Error()
		return res
	}
	// strace says "Process N attached" for each process and thread.
	for i := 0; i < 60 && strings.Count(stderr.String(), "attached") < len(pids); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	r.logf("  started, warmed up, strace attached to %d processes", len(pids))
	r.sink.Reset()
	prefix := "s-" + sys.Name() + "-"
	load := Load(LoadConfig{Groups: r.groups, Addr: addr, Messages: cell.N, Concurrency: 1, PerConn: r.cfg.PerConn,
		Size: cell.Size, Prefix: prefix, Rcpt: rcptOf(sys), Timeout: r.cfg.LoadTimeout})
	r.sink.Wait(prefix, load.Accepted, r.cfg.WaitTimeout)
	deadline := time.Now().Add(10 * time.Second)
	for !sys.QueueEmpty() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // removals after the queue file is gone
	r.logf("  %d messages through; detaching", load.Accepted)
	st.Process.Signal(syscall.SIGINT)
	st.Wait()
	r.logf("  detached")
	res.Messages = load.Accepted
	res.Calls, res.Seconds = parseStraceSummary(out)
	if len(res.Calls) == 0 {
		res.Err = "no strace summary: " + strings.TrimSpace(stderr.String())
		return res
	}
	res.Before250, res.Before250Dir, res.OrderErr = r.straceOrder(sys, addr, dir, r.cfg.StraceOrderN)
	if res.OrderErr != "" {
		r.logf("  fsyncs before the 250: %s", res.OrderErr)
	} else {
		lo, hi := minMax(res.Before250)
		r.logf("  fsyncs between the 354 and the 250, %d messages one at a time: %d to %d", len(res.Before250), lo, hi)
	}
	return res
}

// straceOrder sends n plaintext messages to a running system, one at a
// time (each after the last has arrived at the sink and left the queue),
// under strace -f tracing only fsync, fdatasync and the writes of
// replies, and counts for each message the fsyncs started between its
// 354 and its 250: with each message alone, nothing else of the system
// runs in that window.
func (r *runner) straceOrder(sys System, addr, dir string, n int) (all, dirs []int, _ string) {
	if n <= 0 {
		return nil, nil, ""
	}
	out := filepath.Join(dir, "strace-order.txt")
	pids := sys.Pids()
	args := []string{"-f", "-y", "-s", "16", "-e", "trace=fsync,fdatasync,write,writev,sendto,sendmsg", "-o", out}
	for _, pid := range pids {
		args = append(args, "-p", strconv.Itoa(pid))
	}
	var stderr bytes.Buffer
	st := exec.Command("strace", args...)
	st.Stderr = &stderr
	if err := st.Start(); err != nil {
		return nil, nil, "strace: " + err.Error()
	}
	for i := 0; i < 60 && strings.Count(stderr.String(), "attached") < len(pids); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	var fail string
	for i := 0; i < n && fail == ""; i++ {
		prefix := fmt.Sprintf("so-%s-%d-", sys.Name(), i)
		l := Load(LoadConfig{Groups: r.groups, Addr: addr, Messages: 1, Concurrency: 1, PerConn: 1, Size: 4096,
			Prefix: prefix, Rcpt: rcptOf(sys), Timeout: time.Minute})
		if l.Accepted != 1 {
			fail = fmt.Sprintf("message %d not accepted: %s", i, l.FirstError)
			break
		}
		if !r.sink.Wait(prefix, 1, 30*time.Second) {
			fail = fmt.Sprintf("message %d did not arrive", i)
			break
		}
		for deadline := time.Now().Add(10 * time.Second); !sys.QueueEmpty() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(150 * time.Millisecond) // removals after the queue file is gone
	}
	st.Process.Signal(syscall.SIGINT)
	st.Wait()
	if fail != "" {
		return nil, nil, fail
	}
	all, dirs = parseStraceOrder(out)
	if len(all) != n {
		return all, dirs, fmt.Sprintf("found %d 354-to-250 windows for %d messages (see %s)", len(all), n, out)
	}
	return all, dirs, ""
}

var (
	// "PID write(FD<TCP:[...]>, "250 ..." (-y names the fd; no quote in
	// between).
	straceReply = regexp.MustCompile(`^\d+\s+(?:write|writev|sendto|sendmsg)\(\d+[^"]*"(\d{3})[ -]`)
	// "PID fsync(FD</path>) = 0" or "... <unfinished ...>".
	straceFsync = regexp.MustCompile(`^\d+\s+(?:fsync|fdatasync)\(\d+(?:<(.*?)>)?(?:\)| <unfinished)`)
)

// parseStraceOrder reads strace -f -y output (lines "PID call(args...")
// and returns, for each 354 reply written, the fsync and fdatasync calls
// started after it and before the next 250 reply, and how many of those
// were of a directory.
func parseStraceOrder(file string) (all, dirs []int) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil
	}
	isDir := map[string]bool{}
	in, n, nd := false, 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		if m := straceReply.FindStringSubmatch(l); m != nil {
			switch {
			case m[1] == "354":
				in, n, nd = true, 0, 0
			case m[1] == "250" && in:
				all, dirs = append(all, n), append(dirs, nd)
				in = false
			}
			continue
		}
		if m := straceFsync.FindStringSubmatch(l); in && m != nil {
			n++
			path := m[1]
			d, seen := isDir[path]
			if !seen && path != "" {
				fi, err := os.Stat(path)
				d = err == nil && fi.IsDir()
				isDir[path] = d
			}
			if d {
				nd++
			}
		}
	}
	return all, dirs
}

func minMax(v []int) (int, int) {
	if len(v) == 0 {
		return 0, 0
	}
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// parseStraceSummary reads the table of strace -c: "% time seconds
// usecs/call calls [errors] syscall".
func parseStraceSummary(file string) (map[string]int64, map[string]float64) {
	calls, secs := map[string]int64{}, map[string]float64{}
	f, err := os.Open(file)
	if err != nil {
		return calls, secs
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		if _, err := strconv.ParseFloat(fs[0], 64); err != nil {
			continue
		}
		name := fs[len(fs)-1]
		if name == "total" {
			continue
		}
		n, err := strconv.ParseInt(fs[3], 10, 64)
		if err != nil {
			continue
		}
		s, _ := strconv.ParseFloat(fs[1], 64)
		calls[name], secs[name] = n, s
	}
	return calls, secs
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cells lists the benchmark's cells in the order they run.
func (r *runner) cells() []Cell {
	scale := func(n int) int {
		n = int(float64(n)*r.cfg.Scale + 0.5)
		if n < 1 {
			n = 1
		}
		return n
	}
	var out []Cell
	for _, t := range []bool{false, true} {
		for _, size := range []int{4096, 100 * 1024} {
			for _, c := range []int{1, r.cfg.Conc} {
				n := map[[2]int]int{{4096, 1}: r.cfg.N4k1, {4096, r.cfg.Conc}: r.cfg.N4k50,
					{100 * 1024, 1}: r.cfg.N100k1, {100 * 1024, r.cfg.Conc}: r.cfg.N100k50}[[2]int{size, c}]
				cell := Cell{TLS: t, Size: size, Conc: c, N: scale(n)}
				if r.cfg.Only == "" || strings.Contains(cell.ID(), r.cfg.Only) {
					out = append(out, cell)
				}
			}
			// The peers' headline cell: a new connection, so a full
			// handshake, per message.
			if t && size == 4096 && r.cfg.N4kK1 > 0 {
				cell := Cell{TLS: t, Size: size, Conc: r.cfg.ConcK1, N: scale(r.cfg.N4kK1), PerConn: 1}
				if r.cfg.Only == "" || strings.Contains(cell.ID(), r.cfg.Only) {
					out = append(out, cell)
				}
			}
		}
	}
	return out
}

// cmdRun is "smtpbench run".
func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var cfg RunConfig
	fs.StringVar(&cfg.Caddy, "caddy", "", "caddy binary built from this repository (required)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "another caddy binary (e.g. built from an earlier commit), run as system \"baseline\" in every cell beside the others, to measure a change side by side")
	fs.StringVar(&cfg.Work, "work", "", "work directory, reachable by the postfix user (required)")
	fs.StringVar(&cfg.Cert, "cert", "", "ECDSA P-256 certificate, PEM (required)")
	fs.StringVar(&cfg.Key, "key", "", "its key, PEM (required)")
	fs.IntVar(&cfg.PortBase, "ports", 2950, "use 127.0.0.1 ports `base`+1 (gateway), +2 (Postfix), +3 (sink), +4 (smtp-sink), +5 (rspamd's normal worker), +6 (rspamd's controller), +7 (clamd), +8 (rspamd's DNS server: nothing may listen there), +9 (maddy), +10 (chasquid), +11 (Haraka)")
	fs.IntVar(&cfg.PerConn, "k", 10, "messages per connection")
	fs.IntVar(&cfg.Conc, "c", 50, "the high concurrency")
	fs.IntVar(&cfg.N4k1, "n4k1", 200, "messages per run, 4 KiB at c=1")
	fs.IntVar(&cfg.N4k50, "n4k50", 2000, "messages per run, 4 KiB at the high concurrency")
	fs.IntVar(&cfg.N100k1, "n100k1", 100, "messages per run, 100 KiB at c=1")
	fs.IntVar(&cfg.N100k50, "n100k50", 1000, "messages per run, 100 KiB at the high concurrency")
	fs.Float64Var(&cfg.Scale, "scale", 1, "multiply every message count by this")
	fs.BoolVar(&cfg.CrossCheck, "crosscheck", true, "cross-check the plaintext cells with smtp-source and smtp-sink")
	fs.Float64Var(&cfg.CrossScale, "cross-scale", 0.5, "message counts of the cross-check runs, relative to the cell's")
	fs.BoolVar(&cfg.Strace, "strace", true, "count syscalls per message with strace (plaintext 4 KiB c=1)")
	fs.IntVar(&cfg.StraceN, "strace-n", 50, "messages of the strace run")
	fs.IntVar(&cfg.StraceOrderN, "strace-order-n", 10, "after the strace count, messages sent one at a time under strace of fsyncs and replies: the fsyncs between each one's 354 and 250 (0: none)")
	fs.BoolVar(&cfg.X25519, "x25519", false, "load generator and sink offer only X25519 (as OpenSSL 3.0 does), not Go's default X25519MLKEM768 first")
	fs.StringVar(&cfg.Only, "only", "", "run only cells whose id (e.g. tls-100k-c50) contains this")
	fs.StringVar(&cfg.Systems, "systems", "gateway,postfix,maddy,chasquid,haraka,gateway+rspamd,gateway+clamav", "systems to run: gateway, postfix, maddy, chasquid, haraka (the peers: only in -peer-cells; each needs its flag below, and is left out, with a line saying so, without it), gateway+rspamd (the gateway with the rspamd check, against an rspamd the harness runs), gateway+clamav (the same with clamd); a check system whose engine is not installed is left out, with a line saying so")
	fs.StringVar(&cfg.CheckCells, "check-cells", "tls-4k", "gateway+rspamd and gateway+clamav run only in cells whose id contains this (\"\": every cell)")
	fs.IntVar(&cfg.RspamdWorkers, "rspamd-workers", 0, "rspamd's normal worker count (0: rspamd's default, which depends on the CPUs)")
	fs.StringVar(&cfg.Maddy, "maddy", "", "the maddy binary (system maddy)")
	fs.StringVar(&cfg.Chasquid, "chasquid", "", "the chasquid binary (system chasquid; run under unshare -m, with its resolv.conf bind-mounted)")
	fs.StringVar(&cfg.Haraka, "haraka", "", "Haraka's bin/haraka in its node_modules (system haraka)")
	fs.StringVar(&cfg.DHParam, "dhparam", "", "DH parameters (PEM) for Haraka's TLS (without: Haraka makes them at start-up, seconds of CPU per cell)")
	fs.StringVar(&cfg.DNSAddr, "dns", "127.0.29.53:53", "the loopback DNS stub chasquid resolves through (`host:53`: a resolv.conf cannot name a port)")
	fs.StringVar(&cfg.PeerCells, "peer-cells", "tls-4k-c20-k1,tls-4k-c50", "maddy, chasquid and haraka run only in cells whose id contains one of these (comma-separated)")
	fs.IntVar(&cfg.N4kK1, "n4kk1", 1000, "messages of the STARTTLS 4 KiB cell with one message per connection (tls-4k-cC-k1; 0: no such cell)")
	fs.IntVar(&cfg.ConcK1, "ck1", 20, "the concurrency of that cell")
	fs.DurationVar(&cfg.WaitTimeout, "wait", 90*time.Second, "how long the sink may wait for the last message")
	fs.DurationVar(&cfg.LoadTimeout, "load-timeout", 3*time.Minute, "how long one load run may take")
	fs.Parse(args)
	if cfg.Caddy == "" || cfg.Work == "" || cfg.Cert == "" || cfg.Key == "" {
		fs.Usage()
		return errors.New("-caddy, -work, -cert and -key are required")
	}
	// The systems run in directories of their own.
	for _, f := range []*string{&cfg.Cert, &cfg.Key, &cfg.Caddy, &cfg.Work} {
		if abs, err := filepath.Abs(*f); err == nil {
			*f = abs
		}
	}
	cert, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		return err
	}
	r := &runner{cfg: cfg, cert: cert, start: time.Now()}
	if cfg.X25519 {
		r.groups = []tls.CurveID{tls.X25519}
	}
	var missing []string // check systems left out: their engine is not installed
	var skipped []string // peers left out, and why
	for _, name := range strings.Split(cfg.Systems, ",") {
		switch name = strings.TrimSpace(name); name {
		case "gateway":
			r.systems = append(r.systems, &Gateway{Bin: cfg.Caddy})
			if cfg.Baseline != "" {
				r.systems = append(r.systems, &Gateway{Bin: cfg.Baseline, Label: "baseline"})
			}
		case "postfix":
			r.systems = append(r.systems, &Postfix{Template: filepath.Join(cfg.Work, "postfix-template")})
		case "maddy", "chasquid", "haraka":
			path := map[string]string{"maddy": cfg.Maddy, "chasquid": cfg.Chasquid, "haraka": cfg.Haraka}[name]
			if err := peerProbe(name, path); err != nil {
				skipped = append(skipped, err.Error())
				continue
			}
			switch name {
			case "maddy":
				r.systems = append(r.systems, &Maddy{Bin: path})
			case "chasquid":
				r.systems = append(r.systems, &Chasquid{Bin: path, DNSAddr: cfg.DNSAddr})
			case "haraka":
				if cfg.DHParam == "" {
					r.logf("haraka: no -dhparam: it makes DH parameters at every start")
				}
				r.systems = append(r.systems, &Haraka{Bin: path, DHParam: cfg.DHParam, Template: filepath.Join(cfg.Work, "haraka-template")})
			}
		case "gateway+rspamd", "gateway+clamav":
			var found bool
			if name == "gateway+rspamd" {
				_, err := exec.LookPath("rspamd")
				found = err == nil
			} else {
				found = clamdBin() != ""
			}
			if !found {
				missing = append(missing, name)
				continue
			}
			// The engine is started after the ceilings, below.
			r.systems = append(r.systems, &Gateway{Bin: cfg.Caddy, Label: name, Engine: &Engine{}})
		case "":
		default:
			return fmt.Errorf("unknown system %q", name)
		}
	}
	if len(r.systems) == 0 {
		return errors.New("no system to run")
	}
	for _, name := range missing {
		engine := map[string]string{"gateway+rspamd": "rspamd (Debian package rspamd)", "gateway+clamav": "clamd (Debian package clamav-daemon)"}[name]
		r.logf("%s not installed: leaving out %s", engine, name)
	}
	r.sink, err = StartSink(fmt.Sprintf("127.0.0.1:%d", r.port(3)), &cert, r.groups, nil)
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	defer r.sink.Close()
	// chasquid's DNS: the stub, for the whole run.
	for i, s := range r.systems {
		if _, ok := s.(*Chasquid); !ok {
			continue
		}
		stub, err := StartDNSStub(cfg.DNSAddr, "sink.bench")
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("chasquid: its DNS stub on %s: %v", cfg.DNSAddr, err))
			r.systems = append(r.systems[:i:i], r.systems[i+1:]...)
		} else {
			defer stub.Close()
		}
		break
	}
	for _, s := range skipped {
		r.logf("leaving out %s", s)
	}

	rep := &Report{Date: time.Now(), Config: cfg, Machine: machineInfo(cfg.Work), Versions: map[string]string{}, Skipped: skipped}
	for _, s := range r.systems {
		if isPeer(s) {
			rep.Peers = append(rep.Peers, s.Name())
		}
	}
	rep.LoadStart = loadavg()
	for _, name := range missing {
		rep.Engines = append(rep.Engines, EngineInfo{Name: name, Err: "not installed: left out"})
	}
	for _, s := range r.systems {
		if engineOf(s) == nil {
			rep.Versions[s.Name()] = s.Version()
		}
	}
	rep.Versions["go (harness)"] = runtime.Version()
	if out, err := exec.Command("openssl", "version").Output(); err == nil {
		rep.Versions["openssl"] = strings.TrimSpace(string(out))
	}

	r.logf("ceilings: fsync rate of %s's disk, TLS handshake rate", cfg.Work)
	ceilDir := filepath.Join(cfg.Work, "ceiling")
	os.MkdirAll(ceilDir, 0o755)
	if rep.Ceilings, err = MeasureCeilings(ceilDir, cert, runtime.NumCPU()); err != nil {
		return err
	}
	r.logf("  fsync %.0f/s (1 writer), %.0f/s (16 writers); TLS %.0f/s serial, %.0f/s x%d",
		rep.Ceilings.FsyncSerial, rep.Ceilings.FsyncParallel, rep.Ceilings.TLSSerial, rep.Ceilings.TLSParallel, rep.Ceilings.TLSStreams)

	// The content-check engines, once for the run, stopped at the end
	// (also when the run fails).
	defer func() {
		for _, e := range r.engines {
			e.Stop()
		}
	}()
	kept := r.systems[:0:0]
	for _, s := range r.systems {
		g, ok := s.(*Gateway)
		if !ok || g.Engine == nil {
			kept = append(kept, s)
			continue
		}
		t0 := time.Now()
		var e *Engine
		var err error
		dir := filepath.Join(cfg.Work, "engines", g.Label)
		if err = os.MkdirAll(dir, 0o755); err == nil {
			if g.Label == "gateway+rspamd" {
				r.logf("starting rspamd for gateway+rspamd (private config in %s)", dir)
				e, err = StartRspamd(dir, r.port(5), r.port(6), r.port(8), cfg.RspamdWorkers)
			} else {
				r.logf("starting clamd for gateway+clamav (private config in %s)", dir)
				e, err = StartClamd(dir, r.port(7))
			}
		}
		info := EngineInfo{Name: g.Label, StartSec: time.Since(t0).Seconds()}
		if err != nil {
			info.Err = err.Error()
			r.logf("  %v: leaving out %s", err, g.Label)
			rep.Engines = append(rep.Engines, info)
			continue
		}
		info.Version, info.Note = e.Version(), e.Note
		r.logf("  %s up in %.1fs: %d processes", e.Name, info.StartSec, len(e.Pids()))
		rep.Engines = append(rep.Engines, info)
		r.engines = append(r.engines, e)
		g.Engine = e
		rep.Versions[g.Label] = g.Version()
		kept = append(kept, s)
	}
	r.systems = kept

	if cfg.Strace {
		if _, err := exec.LookPath("strace"); err != nil {
			r.logf("strace not found; skipping the syscall count")
		} else {
			for _, s := range r.systems {
				if engineOf(s) != nil {
					continue // the same gateway; its engine is not straced
				}
				r.logf("strace: %s, %d plaintext 4 KiB messages at c=1", s.Name(), cfg.StraceN)
				st := r.runStrace(s)
				if st.Err != "" {
					r.logf("  %s", st.Err)
				} else {
					r.logf("  fsync+fdatasync per message: %.2f", float64(st.Calls["fsync"]+st.Calls["fdatasync"])/float64(max(st.Messages, 1)))
				}
				rep.Strace = append(rep.Strace, st)
			}
		}
	}

	crossOK := cfg.CrossCheck
	if crossOK {
		_, e1 := exec.LookPath("smtp-source")
		_, e2 := exec.LookPath("smtp-sink")
		if e1 != nil || e2 != nil {
			r.logf("smtp-source/smtp-sink not found; skipping the cross-check")
			crossOK = false
		}
	}
	for i, cell := range r.cells() {
		var order []System
		for _, s := range r.systems {
			if r.joins(s, cell) {
				order = append(order, s)
			}
		}
		if i%2 == 1 { // alternate who goes first, against drift
			for a, b := 0, len(order)-1; a < b; a, b = a+1, b-1 {
				order[a], order[b] = order[b], order[a]
			}
		}
		for _, s := range order {
			r.logf("%s: %s, %d messages", cell.Name(), s.Name(), cell.N)
			res := r.runCell(s, cell)
			r.logf("  accepted %d (%.1f/s, p50 %.1fms p99 %.1fms), arrived %d (%.1f/s), CPU %.2f ms/msg, peak RSS %.1f MiB; start %.1fs, warm-up %.1fs, run %.1fs%s",
				res.Accepted, res.AcceptRate, res.AcceptP50ms, res.AcceptP99ms, res.Arrived, res.E2ERate,
				res.CPUmsPerMsg, float64(res.Usage.PeakRSSKB)/1024, res.StartSec, res.WarmSec, res.Seconds, notePart(res.Note))
			if res.Engine != "" {
				r.logf("  %s: CPU %.2f ms/msg, peak PSS %.1f MiB, %d processes; %s", res.Engine, res.EngineCPUmsPerMsg,
					float64(res.EngineUsage.PeakPSSKB)/1024, res.EngineUsage.MaxProcs, countsString(res.CheckLog))
			}
			rep.Results = append(rep.Results, res)
		}
		r.logf("%s: harness alone (load generator -> sink), %d messages", cell.Name(), cell.N)
		alone := r.runAlone(cell)
		alone.DiskFsyncs, _ = fsyncRate(filepath.Join(cfg.Work, "ceiling"), 1, 500*time.Millisecond)
		r.logf("  %.1f msgs/s, p50 %.1fms, harness CPU %.2f ms/msg%s", alone.AcceptRate, alone.AcceptP50ms, alone.CPUmsPerMsg, notePart(alone.Note))
		rep.Results = append(rep.Results, alone)
		// The cross-check runs right after the cell, so that both see
		// the same background load.
		if crossOK && !cell.TLS {
			xcell := cell
			xcell.N = max(1, int(float64(cell.N)*cfg.CrossScale+0.5))
			for _, s := range order {
				if engineOf(s) != nil {
					continue
				}
				r.logf("cross-check %s: %s with smtp-source -> smtp-sink, %d messages", cell.Name(), s.Name(), xcell.N)
				x := r.runCross(s, xcell)
				r.logf("  accepted %.1f/s, end to end %.1f/s%s", x.AcceptRate, x.E2ERate, notePart(x.Note))
				rep.Cross = append(rep.Cross, x)
			}
		}
	}

	for _, e := range r.engines {
		r.logf("stopping %s", e.Name)
		e.Stop()
	}
	r.engines = nil

	r.logf("ceilings again, at the end")
	if rep.CeilingsEnd, err = MeasureCeilings(ceilDir, cert, runtime.NumCPU()); err != nil {
		return err
	}
	rep.LoadEnd = loadavg()
	rep.Duration = time.Since(r.start).Seconds()
	rep.HarnessCPU = selfCPU()
	if b, err := json.MarshalIndent(rep, "", "  "); err == nil {
		os.WriteFile(filepath.Join(cfg.Work, "results.json"), b, 0o644)
	}
	var md bytes.Buffer
	writeReport(&md, rep)
	os.WriteFile(filepath.Join(cfg.Work, "report.md"), md.Bytes(), 0o644)
	os.Stdout.Write(md.Bytes())
	return nil
}

func notePart(n string) string {
	if n == "" {
		return ""
	}
	return " [" + n + "]"
}

// machineInfo is nproc, CPU model, kernel, and the queue disk.
func machineInfo(work string) map[string]string {
	m := map[string]string{"nproc": strconv.Itoa(runtime.NumCPU())}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				m["memory"] = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
			}
		}
	}
	// The mount holding the work directory: longest matching prefix.
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		best := ""
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) < 4 {
				continue
			}
			if (work == f[1] || strings.HasPrefix(work, strings.TrimSuffix(f[1], "/")+"/")) && len(f[1]) >= len(best) {
				best = f[1]
				m["queue disk"] = fmt.Sprintf("%s on %s (%s, %s)", f[0], f[1], f[2], f[3])
			}
		}
	}
	return m
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ---- the report -----------------------------------------------------------

func writeReport(w *bytes.Buffer, rep *Report) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	c := rep.Ceilings
	title := "Postfix"
	if len(rep.Peers) > 0 {
		title = "Postfix and its peers"
	}
	p("# caddy-smtp gateway vs %s: relay benchmark\n\n", title)
	p("- date: %s; run took %.0f s\n", rep.Date.Format("2006-01-02 15:04:05 MST"), rep.Duration)
	p("- machine: %s CPUs, %s, kernel %s, %s RAM\n", rep.Machine["nproc"], rep.Machine["cpu"], rep.Machine["kernel"], rep.Machine["memory"])
	p("- queues on: %s\n", rep.Machine["queue disk"])
	p("- load average (1/5/15 min) at start %s, at end %s: other work on the machine shows in the numbers\n", rep.LoadStart, rep.LoadEnd)
	var vs []string
	for k, v := range rep.Versions {
		vs = append(vs, k+": "+v)
	}
	sort.Strings(vs)
	p("- versions: %s\n", strings.Join(vs, "; "))
	p("- load: %d messages per connection (a cell named ×k: k); STARTTLS cells do a full handshake per connection; the harness (load generator and sink) used %.1f s CPU\n\n",
		rep.Config.PerConn, rep.HarnessCPU)

	p("## Physical ceilings\n\n")
	ce := rep.CeilingsEnd
	if ce == nil {
		ce = c
	}
	p("Measured before the first cell and after the last (the spread is the machine's other work); the harness-alone rows below also give the disk's rate just before each cell.\n\n")
	p("| ceiling | at start | at end |\n|---|--:|--:|\n")
	p("| disk: 4 KiB append + fsync, 1 writer, fsyncs/s | %.0f | %.0f |\n", c.FsyncSerial, ce.FsyncSerial)
	p("| disk: the same, %d writers at once (journal commits shared), fsyncs/s | %.0f | %.0f |\n", c.FsyncWriters, c.FsyncParallel, ce.FsyncParallel)
	p("| TLS: full handshakes/s (ECDSA P-256, %s), client and server on this machine, 1 at a time | %.0f | %.0f |\n", c.TLSDefaultGroup, c.TLSSerial, ce.TLSSerial)
	p("| TLS: the same, %d at once | %.0f | %.0f |\n", c.TLSStreams, c.TLSParallel, ce.TLSParallel)
	p("| TLS: the same, %d at once, X25519 (what OpenSSL 3.0 negotiates) | %.0f | %.0f |\n", c.TLSStreams, c.TLSParallelX, ce.TLSParallelX)
	k := float64(rep.Config.PerConn)
	// gatewayReuse is delivery.PoolMaxUses, the messages one outbound
	// session of the gateway carries at most.
	const gatewayReuse = 100
	p("\nA STARTTLS message costs 1/%d inbound handshake plus, for Postfix, one outbound (its smtp_tls_connection_reuse is off by default), so Postfix's CPU ceiling for STARTTLS end to end is about %.0f msgs/s (%d at once, X25519) before any mail work. The gateway reuses its outbound sessions (up to %d messages each), so its ceiling from handshakes is about %.0f msgs/s.\n",
		rep.Config.PerConn, c.TLSParallelX/(1+1/k), c.TLSStreams, gatewayReuse, c.TLSParallelX/(1/k+1/float64(gatewayReuse)))
	for _, st := range rep.Strace {
		if st.Err != "" || st.Messages == 0 {
			continue
		}
		f := float64(st.Calls["fsync"]+st.Calls["fdatasync"]) / float64(st.Messages)
		if f > 0 {
			p("%s: %.2f fsyncs per message (strace) → disk ceiling at c=1 about %.0f msgs/s.\n", st.System, f, c.FsyncSerial/f)
		}
	}

	byCell := map[string]map[string]Result{}
	var order []string
	for _, res := range rep.Results {
		if byCell[res.Cell] == nil {
			byCell[res.Cell] = map[string]Result{}
			order = append(order, res.Cell)
		}
		byCell[res.Cell][res.System] = res
	}
	writePeers(w, rep, byCell, order)

	p("\n## Results\n\n")
	p("Accepted msgs/s: first connection to last 250. End-to-end msgs/s: first connection to last arrival at the sink. Accept latency: end of DATA to 250. E2E delay: end of DATA to arrival at the sink. Peak RSS/PSS: the largest sum over the system's processes (sampled every 100 ms). CPU: user+system of the system's processes per accepted message. Ratio: gateway/Postfix (throughput: >1 is the gateway faster; latency, memory, CPU: >1 is the gateway higher); gateway+rspamd/gateway and gateway+clamav/gateway: the same against the plain gateway, their RSS, PSS and CPU being the gateway process's alone (the engine's are in the content checks section).\n\n")
	p("| cell | system | accepted msgs/s | e2e msgs/s | accept p50 ms | accept p99 ms | e2e p99 ms | peak RSS MiB | peak PSS MiB | CPU ms/msg | notes |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	row := func(res Result) []float64 {
		return []float64{res.AcceptRate, res.E2ERate, res.AcceptP50ms, res.AcceptP99ms, res.E2EP99ms,
			float64(res.Usage.PeakRSSKB) / 1024, float64(res.Usage.PeakPSSKB) / 1024, res.CPUmsPerMsg}
	}
	for _, cell := range order {
		for _, sys := range []string{"gateway", "baseline", "postfix", "maddy", "chasquid", "haraka", "gateway+rspamd", "gateway+clamav"} {
			res, ok := byCell[cell][sys]
			if !ok {
				continue
			}
			v := row(res)
			note := res.Note
			if res.Engine != "" {
				note = strings.TrimPrefix(note+fmt.Sprintf("; CPU is the gateway's; %s: %.2f ms/msg more", res.Engine, res.EngineCPUmsPerMsg), "; ")
			}
			if len(res.LogProblems) > 0 {
				note = strings.TrimPrefix(note+"; maillog: "+res.LogProblems[0], "; ")
			}
			if res.Errors > 0 {
				note = strings.TrimPrefix(note+fmt.Sprintf("; %d errors: %s", res.Errors, res.FirstError), "; ")
			}
			p("| %s | %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f | %s |\n",
				cell, sys, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], strings.ReplaceAll(note, "|", "/"))
		}
		for _, pair := range [][2]string{{"gateway", "postfix"}, {"baseline", "postfix"}, {"gateway", "baseline"},
			{"gateway", "maddy"}, {"gateway", "chasquid"}, {"gateway", "haraka"},
			{"gateway+rspamd", "gateway"}, {"gateway+clamav", "gateway"}} {
			g, okg := byCell[cell][pair[0]]
			pf, okp := byCell[cell][pair[1]]
			if !okg || !okp {
				continue
			}
			a, b := row(g), row(pf)
			var cells []string
			for i := range a {
				if b[i] > 0 {
					cells = append(cells, fmt.Sprintf("**%.2f×**", a[i]/b[i]))
				} else {
					cells = append(cells, "–")
				}
			}
			p("| %s | %s/%s | %s | |\n", cell, pair[0], pair[1], strings.Join(cells, " | "))
		}
		if a, ok := byCell[cell]["harness alone"]; ok {
			v := row(a)
			p("| %s | *harness alone* | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f | %.1f | %.2f | load generator straight to the sink (the harness's limit; RSS/PSS/CPU are the harness's); disk just before the cell: %.0f fsyncs/s%s |\n",
				cell, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], a.DiskFsyncs, notePart(a.Note))
		}
	}

	writeChecks(w, rep, byCell, order)

	// What the TLS cells negotiated, and that outbound TLS happened.
	offer := "Go's default key exchanges (X25519MLKEM768, X25519, ...)"
	if rep.Config.X25519 {
		offer = "X25519 only (-x25519)"
	}
	p("\nTLS as negotiated (inbound: load generator ↔ system; outbound: system ↔ sink; the load generator and the sink offer %s):\n\n", offer)
	seen := map[string]bool{}
	for _, res := range rep.Results {
		if !strings.HasPrefix(res.Cell, "STARTTLS") || seen[res.System] || res.Accepted == 0 {
			continue
		}
		seen[res.System] = true
		p("- %s: inbound %s; outbound %s (%d of %d messages arrived over TLS)\n",
			res.System, res.InTLS, res.OutTLS, res.OutTLSMsgs, res.OutTLSMsgs+res.OutPlain)
	}
	for _, res := range rep.Results {
		if !strings.HasPrefix(res.Cell, "plaintext") && res.OutTLSMsgs+res.OutPlain > 0 && res.OutPlain > 0 {
			p("- WARNING %s %s: %d messages arrived at the sink in plaintext\n", res.Cell, res.System, res.OutPlain)
		}
		if res.Duplicates > 0 {
			p("- %s %s: %d messages arrived twice\n", res.Cell, res.System, res.Duplicates)
		}
	}

	if len(rep.Cross) > 0 {
		p("\n## Cross-check: plaintext cells driven by Postfix's smtp-source, relayed to Postfix's smtp-sink\n\n")
		p("Right after each plaintext cell, each system again, now driven by `smtp-source -d -s C -m N -l SIZE` (HELO, not EHLO; all of a session's messages over one connection; no pipelining; N = %.2f × the cell's count) and relaying to `smtp-sink -M` (which exits after the last message). Accepted = N / smtp-source's run time; end to end = N / (smtp-source's start to smtp-sink's exit). Beside them, the harness's own numbers for the same cell.\n\n", rep.Config.CrossScale)
		p("| cell | system | accepted msgs/s: smtp-source | harness load | e2e msgs/s: smtp-source→smtp-sink | harness | notes |\n|---|---|--:|--:|--:|--:|---|\n")
		ratio := map[string]map[string][2]float64{}
		for _, x := range rep.Cross {
			var own Result
			for _, res := range rep.Results {
				if res.CellID == x.CellID && res.System == x.System {
					own = res
				}
			}
			p("| %s | %s | %.1f | %.1f | %.1f | %.1f | %s |\n", own.Cell, x.System, x.AcceptRate, own.AcceptRate, x.E2ERate, own.E2ERate, x.Note)
			if ratio[own.Cell] == nil {
				ratio[own.Cell] = map[string][2]float64{}
			}
			ratio[own.Cell][x.System] = [2]float64{x.AcceptRate, x.E2ERate}
		}
		p("\nRatio gateway/Postfix, smtp-source vs harness:\n\n| cell | accepted: smtp-source | harness | e2e: smtp-sink | harness |\n|---|--:|--:|--:|--:|\n")
		for _, cell := range order {
			xr, ok := ratio[cell]
			if !ok {
				continue
			}
			g, pf := byCell[cell]["gateway"], byCell[cell]["postfix"]
			p("| %s | %s | %s | %s | %s |\n", cell, ratioStr(xr["gateway"][0], xr["postfix"][0]), ratioStr(g.AcceptRate, pf.AcceptRate),
				ratioStr(xr["gateway"][1], xr["postfix"][1]), ratioStr(g.E2ERate, pf.E2ERate))
		}
	}

	if len(rep.Strace) > 0 {
		p("\n## Syscalls per message (strace -f -c -w, every process of the system, plaintext 4 KiB c=1, %d messages, accept and delivery)\n\n", rep.Config.StraceN)
		names := map[string]bool{}
		for _, st := range rep.Strace {
			for n := range st.Calls {
				names[n] = true
			}
		}
		type kv struct {
			name string
			max  float64
		}
		var list []kv
		for n := range names {
			m := 0.0
			for _, st := range rep.Strace {
				if st.Messages > 0 {
					m = max(m, float64(st.Calls[n])/float64(st.Messages))
				}
			}
			list = append(list, kv{n, m})
		}
		sort.Slice(list, func(i, j int) bool { return list[i].max > list[j].max })
		p("| syscall |")
		for _, st := range rep.Strace {
			p(" %s calls/msg | %s ms/msg in call |", st.System, st.System)
		}
		p("\n|---|")
		for range rep.Strace {
			p("--:|--:|")
		}
		p("\n")
		shown := 0
		for _, e := range list {
			important := e.name == "fsync" || e.name == "fdatasync" || e.name == "rename" || e.name == "renameat" || e.name == "openat" || e.name == "unlink" || e.name == "unlinkat"
			if shown >= 16 && !important {
				continue
			}
			shown++
			p("| %s |", e.name)
			for _, st := range rep.Strace {
				if st.Messages == 0 || st.Err != "" {
					p(" – | – |")
					continue
				}
				p(" %.2f | %.3f |", float64(st.Calls[e.name])/float64(st.Messages), st.Seconds[e.name]*1000/float64(st.Messages))
			}
			p("\n")
		}
		p("| **all syscalls** |")
		for _, st := range rep.Strace {
			var t int64
			for _, n := range st.Calls {
				t += n
			}
			p(" %.1f | |", float64(t)/float64(max(st.Messages, 1)))
		}
		p("\n")
		for _, st := range rep.Strace {
			if st.Err != "" {
				p("\n%s: %s\n", st.System, st.Err)
			}
		}
		p("\n(ms/msg in call is wall time inside the call summed over threads: blocking waits such as epoll_wait or futex count while idle.)\n")
		p("\nfsyncs before the 250: right after the count above, %d messages sent one at a time (each after the last had arrived at the sink and left the queue) under `strace -f -e trace=fsync,fdatasync,write,writev,sendto,sendmsg`; for each, the fsync and fdatasync calls any of the system's processes started between its 354 reply and its 250:\n\n", rep.Config.StraceOrderN)
		for _, st := range rep.Strace {
			p("- %s: %s\n", st.System, before250(st))
		}

	}
}

func ratioStr(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// writeChecks is the section on the gateway with a content check: what
// a check costs per message, beside the plain gateway of the same cell.
func writeChecks(w *bytes.Buffer, rep *Report, byCell map[string]map[string]Result, order []string) {
	if len(rep.Engines) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("\n## Content checks: the gateway with rspamd or ClamAV\n\n")
	for _, e := range rep.Engines {
		if e.Err != "" {
			p("- %s: %s\n", e.Name, e.Err)
			continue
		}
		p("- %s: %s; %s; started once for the run (%.1f s to answering and idle), stopped at the end\n", e.Name, e.Version, e.Note, e.StartSec)
	}
	p("\nThe same gateway and load as the cell's plain gateway row, plus one check (`check rspamd URL` or `check clamav tcp/ADDR`) before every 250 (defaults: on_error tempfail, max_concurrent 16). ")
	for _, e := range rep.Engines {
		if e.Name == "gateway+rspamd" && e.Err == "" {
			p("rspamd gets the client's IP, 127.0.0.1, which it takes for a local network: it skips SPF, DKIM, DMARC, the RBLs, once_received and the hostname checks (its log says so), so no DNS lookup is made and no message reaches its greylist score; this is its content scan (regular expressions, MIME, Lua rules), what relayed mail costs, a lower bound for mail from outside. ")
		}
	}
	p("Ratios are to the plain gateway of the same cell. CPU per accepted message: the gateway's process, the engine's processes (main and workers, sampled as the systems' are), and the extra over the plain gateway (gateway + engine − plain gateway). Check log: the gateway's check lines over the cell, warm-up included (rspamd: its action).\n\n")
	p("| cell | system | accepted msgs/s | × gateway | e2e msgs/s | × gateway | accept p50 ms | accept p99 ms | × gateway (p99) | gateway CPU ms/msg | engine CPU ms/msg | extra CPU ms/msg | engine peak PSS MiB (processes) | check log |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, cell := range order {
		g, okg := byCell[cell]["gateway"]
		for _, sys := range []string{"gateway+rspamd", "gateway+clamav"} {
			c, ok := byCell[cell][sys]
			if !ok {
				continue
			}
			if !okg {
				g = Result{}
			}
			extra := "–"
			if okg && g.Accepted > 0 {
				extra = fmt.Sprintf("%.2f", c.CPUmsPerMsg+c.EngineCPUmsPerMsg-g.CPUmsPerMsg)
			}
			log := countsString(c.CheckLog)
			if c.Note != "" {
				log = strings.TrimPrefix(c.Note+"; "+log, "; ")
			}
			if c.Errors > 0 {
				log = strings.TrimPrefix(log+fmt.Sprintf("; %d errors: %s", c.Errors, c.FirstError), "; ")
			}
			p("| %s | %s | %.1f | %s | %.1f | %s | %.2f | %.2f | %s | %.2f | %.2f | %s | %.1f (%d) | %s |\n",
				cell, sys, c.AcceptRate, ratioStr(c.AcceptRate, g.AcceptRate), c.E2ERate, ratioStr(c.E2ERate, g.E2ERate),
				c.AcceptP50ms, c.AcceptP99ms, ratioStr(c.AcceptP99ms, g.AcceptP99ms), c.CPUmsPerMsg, c.EngineCPUmsPerMsg, extra,
				float64(c.EngineUsage.PeakPSSKB)/1024, c.EngineUsage.MaxProcs, strings.ReplaceAll(log, "|", "/"))
		}
	}
}

// before250 says how many fsyncs came between the 354 and the 250.
func before250(st StraceResult) string {
	if st.OrderErr != "" {
		return "not measured: " + st.OrderErr
	}
	if len(st.Before250) == 0 {
		return "not measured"
	}
	lo, hi := minMax(st.Before250)
	dlo, dhi := minMax(st.Before250Dir)
	verdict := fmt.Sprintf("every message had at least one fsync before its 250, of a directory %d to %d", dlo, dhi)
	if hi == 0 {
		verdict = "no fsync before any 250"
	} else if lo == 0 {
		verdict = "some messages had none"
	}
	span := fmt.Sprintf("%d", lo)
	if hi != lo {
		span = fmt.Sprintf("%d to %d", lo, hi)
	}
	return fmt.Sprintf("%s per message (%d messages): %s", span, len(st.Before250), verdict)
}

// peerSetup is how each system of the peers' table is set up, in short.
var peerSetup = map[string]string{
	"gateway":  "templates/Caddyfile.tmpl: relay to the sink, spool fsync before 250, queue defaults (16 workers), outbound sessions reused (up to 100 messages, 5 s idle)",
	"postfix":  "templates/main.cf.tmpl: relayhost the sink, otherwise Postfix's defaults (smtp_tls_connection_reuse off, so no reuse of TLS sessions to the sink)",
	"maddy":    "templates/maddy.conf.tmpl: smtp endpoint → target.queue (defaults: 16 deliveries at once) → target.smtp to the sink, starttls yes (verified: SSL_CERT_FILE is the harness's certificate); dmarc no (trusted clients)",
	"chasquid": "Debian's package unpacked (dpkg -x), templates/chasquid.conf.tmpl: local domain peer.bench aliased to bench@sink.bench (the load's recipient is bench@peer.bench), sink.bench's MX 127.0.0.1 from the harness's DNS stub (resolv.conf bind-mounted in a mount namespace of chasquid's), -testing__outgoing_smtp_port the sink's; no hooks",
	"haraka":   "npm package, config in peers.go: relay (ACL 127.0.0.0/8), tls (with DH parameters given), queue/smtp_forward with enable_outbound=false: relayed mail goes to Haraka's outbound queue, smtp_forward's get_mx routes sink.bench to the sink; nodes=cpus",
}

// writePeers is the peers' table (issue 16): each system in the peer
// cells, with ratios to the gateway of the same cell.
func writePeers(w *bytes.Buffer, rep *Report, byCell map[string]map[string]Result, order []string) {
	if len(rep.Peers) == 0 && len(rep.Skipped) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("\n## Peers: the gateway beside Postfix, maddy, chasquid and Haraka\n\n")
	for _, s := range rep.Skipped {
		p("- **left out** %s\n", s)
	}
	straceOf := map[string]StraceResult{}
	for _, st := range rep.Strace {
		straceOf[st.System] = st
	}
	for _, name := range append([]string{"gateway", "postfix"}, peerNames...) {
		if v, ok := rep.Versions[name]; ok {
			p("- %s: %s; %s\n", name, v, peerSetup[name])
		}
	}
	p("\nThe same load as every system's (see Results), each system fresh for the cell and warmed up; the peers run only in the cells `-peer-cells` names. e2e: first connection to the last arrival at the sink; ÷ gateway: the system's e2e over the gateway's of the same cell (the gateway's ×: its inverse); CPU: user+system of the system's processes per accepted message; refused: messages the load generator did not get a 250 for (first error in the notes); msgs/outbound conn: messages that arrived at the sink over the connections it took during the measured run (1: no reuse); fsync/msg: fsync+fdatasync per message over accept and delivery (strace, plaintext c=1); before 250: fsyncs between the 354 and the 250 of a message sent alone (strace, see Syscalls).\n\n")
	p("| cell | system | e2e msgs/s | ÷ gateway | gateway × | accepted msgs/s | CPU ms/msg | CPU ÷ gateway | accept p50 ms | accept p99 ms | refused | msgs/outbound conn | fsync/msg | fsyncs before 250 | notes |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, cell := range order {
		hasPeer := false
		for _, name := range peerNames {
			if _, ok := byCell[cell][name]; ok {
				hasPeer = true
			}
		}
		if !hasPeer {
			continue
		}
		g := byCell[cell]["gateway"]
		for _, name := range append([]string{"gateway", "postfix"}, peerNames...) {
			res, ok := byCell[cell][name]
			if !ok {
				continue
			}
			perConn := "–"
			if res.OutConns == 0 && res.Arrived > 0 {
				perConn = "all over the warm-up's"
			}
			if res.OutConns > 0 {
				perConn = fmt.Sprintf("%.1f", float64(res.Arrived)/float64(res.OutConns))
			}
			fs, b250 := "–", "–"
			if st, ok := straceOf[name]; ok && st.Err == "" && st.Messages > 0 {
				fs = fmt.Sprintf("%.2f", float64(st.Calls["fsync"]+st.Calls["fdatasync"])/float64(st.Messages))
				if len(st.Before250) > 0 {
					lo, hi := minMax(st.Before250)
					b250 = fmt.Sprint(lo)
					if hi != lo {
						b250 = fmt.Sprintf("%d–%d", lo, hi)
					}
					if dlo, dhi := minMax(st.Before250Dir); dhi > 0 {
						b250 += fmt.Sprintf(" (dir %d", dlo)
						if dhi != dlo {
							b250 += fmt.Sprintf("–%d", dhi)
						}
						b250 += ")"
					}
				}
			}
			note := res.Note
			if len(res.LogProblems) > 0 {
				note = strings.TrimPrefix(note+"; log: "+res.LogProblems[0], "; ")
			}
			if res.Errors > 0 {
				note = strings.TrimPrefix(note+fmt.Sprintf("; %d errors, first: %s", res.Errors, res.FirstError), "; ")
			}
			if len(note) > 300 {
				note = note[:300] + "…"
			}
			p("| %s | %s | %.1f | %s | %s | %.1f | %.2f | %s | %.2f | %.2f | %d | %s | %s | %s | %s |\n",
				cell, name, res.E2ERate, ratioStr(res.E2ERate, g.E2ERate), ratioStr(g.E2ERate, res.E2ERate), res.AcceptRate,
				res.CPUmsPerMsg, ratioStr(res.CPUmsPerMsg, g.CPUmsPerMsg), res.AcceptP50ms, res.AcceptP99ms, res.Asked-res.Accepted,
				perConn, fs, b250, strings.ReplaceAll(note, "|", "/"))
		}
	}
}
