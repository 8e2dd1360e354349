package main

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat;
// 100 on every Linux architecture Go runs on.
const clockTicks = 100

// procStat is what one look at /proc/PID gives.
type procStat struct {
	ppid     int
	state    string // R, S, D, Z, ...
	cpuTicks int64  // utime + stime
	comm     string
}

// readStat parses /proc/PID/stat.
func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// pid (comm) state ppid ... ; comm may hold spaces and parentheses.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, false
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] state, f[1] ppid, ..., f[11] utime, f[12] stime
	if len(f) < 13 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return procStat{ppid: ppid, state: f[0], cpuTicks: ut + st, comm: string(b[open+1 : end])}, true
}

// readKB returns the kB value of the first line of file that starts with
// key (e.g. "VmRSS:" in /proc/PID/status, "Pss:" in smaps_rollup).
func readKB(file, key string) int64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			fs := strings.Fields(line[len(key):])
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// descendants returns root and every process below it, from the
// children lists of /proc/PID/task/TID/children, or (kernels without
// them) by scanning /proc.
func descendants(root int) []int {
	out := []int{root}
	for i := 0; i < len(out); i++ {
		kids, ok := childrenOf(out[i])
		if !ok {
			return descendantsByScan(root)
		}
		out = append(out, kids...)
	}
	return out
}

// childrenOf lists the children of pid's threads; ok is false if the
// kernel does not offer the lists.
func childrenOf(pid int) ([]int, bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, true // gone
	}
	var kids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			if os.IsNotExist(err) {
				if _, err := os.Stat(dir + "/" + t.Name()); err == nil {
					return nil, false // the task exists, its list does not
				}
			}
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				kids = append(kids, n)
			}
		}
	}
	return kids, true
}

// descendantsByScan is descendants by reading every /proc/PID/stat.
func descendantsByScan(root int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := make(map[int][]int)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// Usage is what a Sampler saw of a system's processes over a cell.
type Usage struct {
	PeakRSSKB int64   // the largest sum of VmRSS over the processes at one sample
	PeakPSSKB int64   // the same for Pss (shared pages divided among sharers)
	CPUSec    float64 // user + system CPU of the processes over the sampling
	MaxProcs  int     // the most processes seen at once
	Samples   int
}

// Sampler polls the processes of one system (as given by pids, called
// at every sample) every interval, summing their memory and counting
// their CPU time.
type Sampler struct {
	pids     func() []int
	interval time.Duration

	mu    sync.Mutex
	base  map[int]int64 // CPU ticks at the first sight of a process seen at start
	last  map[int]int64 // CPU ticks at the last sight
	usage Usage
	stop  chan struct{}
	done  chan struct{}
}

// StartSampler takes a first sample (the CPU baseline of the processes
// already running) and samples in the background until Stop.
func StartSampler(pids func() []int, interval time.Duration) *Sampler {
	s := &Sampler{pids: pids, interval: interval, base: make(map[int]int64), last: make(map[int]int64),
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, pid := range pids() {
		if st, ok := readStat(pid); ok {
			s.base[pid] = st.cpuTicks
			s.last[pid] = st.cpuTicks
		}
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				s.sample()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *Sampler) sample() {
	pids := s.pids()
	var rss, pss int64
	n := 0
	for _, pid := range pids {
		st, ok := readStat(pid)
		if !ok {
			continue
		}
		n++
		dir := "/proc/" + strconv.Itoa(pid)
		rss += readKB(dir+"/status", "VmRSS:")
		pss += readKB(dir+"/smaps_rollup", "Pss:")
		s.mu.Lock()
		s.last[pid] = st.cpuTicks
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.usage.Samples++
	if rss > s.usage.PeakRSSKB {
		s.usage.PeakRSSKB = rss
	}
	if pss > s.usage.PeakPSSKB {
		s.usage.PeakPSSKB = pss
	}
	if n > s.usage.MaxProcs {
		s.usage.MaxProcs = n
	}
}

// Stop takes a last sample and returns the usage. A process that exited
// between two samples loses its CPU time since the earlier one (Postfix
// daemons live for max_idle 100s, longer than a cell).
func (s *Sampler) Stop() Usage {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var ticks int64
	for pid, t := range s.last {
		ticks += t - s.base[pid] // a process born during the cell has base 0
	}
	s.usage.CPUSec = float64(ticks) / clockTicks
	return s.usage
}

// selfCPU is this process's CPU time so far.
func selfCPU() float64 {
	st, _ := readStat(os.Getpid())
	return float64(st.cpuTicks) / clockTicks
}
