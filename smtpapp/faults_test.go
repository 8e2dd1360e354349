package smtpapp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// mountTmpfs mounts a small tmpfs for a spool, so that the test can
// fill it or make it read-only. It needs root (CI runs as root).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	os.MkdirAll(dir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		st.Eventually(5*time.Second, func() bool { return exec.Command("umount", dir).Run() == nil })
	})
	return dir
}

// TestDiskFull: when the spool's disk is full new mail gets 452 4.3.1,
// nothing acknowledged before is damaged, and mail flows again once
// there is room.
func TestDiskFull(t *testing.T) {
	spoolDir := mountTmpfs(t, "512k")
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	e.Load(map[string]any{"queue": map[string]any{"path": spoolDir, "hold": true}, "servers": map[string]any{"mx": s}}, nil)

	first := st.Submit(t, addr, "a@remote.test", "b@example.test", "Subject: before\r\n\r\nkept\r\n.\r\n")
	beforeEnv, before := st.SpoolRecord(t, spoolDir, first)
	// Fill the disk.
	filler, err := os.Create(filepath.Join(spoolDir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			break
		}
	}
	filler.Close()
	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	body := "Subject: full\r\n\r\n" + strings.Repeat("x\r\n", 3000) + ".\r\n"
	if got := c.Send("a@remote.test", "b@example.test", body); !strings.HasPrefix(got, "452 4.3.1") {
		t.Fatalf("disk full: %q, want 452 4.3.1", got)
	}
	c.Expect("250", "RSET") // the session goes on
	afterEnv, after := st.SpoolRecord(t, spoolDir, first)
	if string(after) != string(before) || string(afterEnv) != string(beforeEnv) {
		t.Fatal("acknowledged record damaged")
	}
	if ids, _ := spool.ListIDs(spoolDir); len(ids) != 1 {
		t.Fatalf("a record for the refused message exists: %v", ids)
	}
	// Room again: mail flows.
	os.Remove(filepath.Join(spoolDir, "filler"))
	if got := c.Send("a@remote.test", "b@example.test", body); !strings.HasPrefix(got, "250") {
		t.Fatalf("after freeing space: %q", got)
	}
}

// TestReadOnlySpool: a spool on a read-only file system is a clear
// error at load.
func TestReadOnlySpool(t *testing.T) {
	spoolDir := mountTmpfs(t, "64k")
	if out, err := exec.Command("mount", "-o", "remount,ro", spoolDir).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v: %s", err, out)
	}
	e := st.NewEnv(t)
	s, _ := st.ServerConfig(t, nil)
	err := e.LoadErr(map[string]any{"queue": map[string]any{"path": spoolDir}, "servers": map[string]any{"mx": s}})
	if err == nil || !strings.Contains(err.Error(), "queue.path") || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("read-only spool: %v", err)
	}
}

// TestReloadUnderLoad: 100 config reloads through the admin API while
// four senders keep sending: no connection refused, no acknowledged
// message lost, open sessions finish.
func TestReloadUnderLoad(t *testing.T) {
	e := st.NewEnv(t)
	sink := st.NewUpstream(t, st.UpstreamOpts{})
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":            map[string]any{"level": "none"},
		"relay_networks": []string{"127.0.0.1"},
		"routes":         st.RelayRoute(sink.Addr, map[string]any{"level": "none"}),
	})
	cfg := func(i int) map[string]any {
		s2 := map[string]any{}
		for k, v := range s {
			s2[k] = v
		}
		s2["max_recipients"] = 10 + i%2 // a real change each time
		return e.DeliveringApp(map[string]any{"gw": s2}, map[string]any{"min_retry_interval": "200ms", "max_retry_interval": "1s"})
	}
	e.Load(cfg(0), nil)

	var stop atomic.Bool
	var sent, refused, resetAtConnect atomic.Int64
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 5000; i++ {
				subject := fmt.Sprintf("reload-%d-%d", w, i)
				ok, err := sendOnce(addr, subject)
				sent.Add(1)
				var dialErr *net.OpError
				switch {
				case err != nil && errors.As(err, &dialErr) && dialErr.Op == "dial" && errors.Is(err, syscall.ECONNRESET):
					// The kernel reset the SYN: it reached the old socket
					// in the instant it closed (a race of SO_REUSEPORT that
					// tcp_migrate_req does not cover). A client retries.
					resetAtConnect.Add(1)
					t.Logf("%s: %v", subject, err)
				case err != nil:
					refused.Add(1)
					t.Logf("%s: %v", subject, err)
				}
				if ok {
					mu.Lock()
					acked[subject] = true
					mu.Unlock()
				}
			}
		}()
	}
	const reloads = 100
	for i := 1; i <= reloads; i++ {
		e.PostLoad(cfg(i), nil)
		// A sleep: the pace of the reloads, under the senders' load.
		time.Sleep(20 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()

	missing, duplicates := -1, 0
	st.Eventually(60*time.Second, func() bool {
		got := map[string]int{}
		for _, m := range sink.Received() {
			if s := subjectOf(m.Data); s != "" {
				got[s]++
			}
		}
		missing, duplicates = 0, 0
		for s := range acked {
			if got[s] == 0 {
				missing++
			}
		}
		for _, n := range got {
			duplicates += n - 1
		}
		return missing == 0
	}) // on timeout, missing says how many
	// Deliveries under way at a reload finish under the old config
	// (queue.stop_grace), so nothing is sent twice.
	t.Logf("%d reloads; %d transactions, %d acknowledged, %d failed, %d reset at connect, %d lost, %d duplicates",
		reloads, sent.Load(), len(acked), refused.Load(), resetAtConnect.Load(), missing, duplicates)
	if missing != 0 {
		t.Fatalf("%d acknowledged messages lost across reloads", missing)
	}
	if duplicates != 0 {
		t.Fatalf("%d messages delivered twice across reloads", duplicates)
	}
	if n := len(e.LogLines("delivery cut at config unload")); n != 0 {
		t.Fatalf("%d deliveries cut at a reload with a healthy next hop", n)
	}
	if n := refused.Load(); n != 0 {
		if migrateReqEnabled() {
			t.Fatalf("%d transactions failed during reloads", n)
		}
		t.Logf("net.ipv4.tcp_migrate_req is off: %d transactions failed during reloads", n)
	}
	// Measured: one reset at connect in about ten runs of some 3,000
	// transactions each; more than two in one run is not that race.
	if n := resetAtConnect.Load(); n > 2 && migrateReqEnabled() {
		t.Fatalf("%d connections reset at connect during reloads", n)
	}
}

// sendOnce runs one transaction; ok means it got 250 after DATA; err is
// set when the server refused or broke the connection.
func sendOnce(addr, subject string) (ok bool, err error) {
	c, err := st.NetDial(addr)
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	text := st.NewText(c)
	expect := func(code int) error {
		got, msg, err := text.ReadResponse(code)
		if err != nil {
			return fmt.Errorf("want %d, got %d %s: %w", code, got, msg, err)
		}
		return nil
	}
	if err := expect(220); err != nil {
		return false, err
	}
	for _, cmd := range []string{"EHLO client.test", "MAIL FROM:<a@remote.test>", "RCPT TO:<b@example.test>"} {
		text.PrintfLine("%s", cmd)
		if err := expect(250); err != nil {
			return false, err
		}
	}
	text.PrintfLine("DATA")
	if err := expect(354); err != nil {
		return false, err
	}
	fmt.Fprintf(c, "Subject: %s\r\n\r\nbody\r\n.\r\n", subject)
	if err := expect(250); err != nil {
		return false, err
	}
	text.PrintfLine("QUIT")
	return true, nil
}

var subjectRe = regexp.MustCompile(`Subject: (\S+)`)

func subjectOf(data []byte) string {
	if m := subjectRe.FindSubmatch(data); m != nil {
		return string(m[1])
	}
	return ""
}

// TestCrashLoop SIGKILLs a real caddy binary at random moments, 20
// times, under steady load from several senders, with the upstream
// going away and coming back half-way; at the end every message that
// got a 250 has reached the upstream. Duplicates are counted, not
// forbidden (delivery is at least once). CRASH_LOOP_MESSAGES scales it.
func TestCrashLoop(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	total := 3000
	if v := os.Getenv("CRASH_LOOP_MESSAGES"); v != "" {
		fmt.Sscan(v, &total)
	}
	const kills, senders = 20, 4
	dir := t.TempDir()
	sinkAddr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	sink := st.NewUpstream(t, st.UpstreamOpts{ListenAddr: sinkAddr, DataWait: 5 * time.Millisecond})
	var sinkMu sync.Mutex
	sinks := []*st.Upstream{sink}
	addr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, "storage")},
		"apps": map[string]any{"smtp": map[string]any{
			"queue": map[string]any{"path": filepath.Join(dir, "queue"),
				"min_retry_interval": "100ms", "max_retry_interval": "300ms"},
			"servers": map[string]any{"gw": map[string]any{
				"listen": []string{addr}, "hostname": "gw.example.test",
				"tls":            map[string]any{"level": "none"},
				"relay_networks": []string{"127.0.0.1"},
				"routes":         st.RelayRoute(sinkAddr, map[string]any{"level": "none"}),
			}},
		}},
	}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "caddy.json")
	os.WriteFile(cfgFile, raw, 0o600)
	p := &caddyProcess{t: t, bin: bin, cfg: cfgFile, log: filepath.Join(dir, "caddy.log"), addr: addr}
	p.start()
	defer func() { p.kill() }()

	var next atomic.Int64
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for w := 0; w < senders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(total) {
					return
				}
				subject := fmt.Sprintf("loop-%05d", i)
				for try := 0; try < 50; try++ { // a real client retries
					if ok, _ := sendOnce(addr, subject); ok {
						mu.Lock()
						acked[subject] = true
						mu.Unlock()
						break
					}
					time.Sleep(50 * time.Millisecond) // a sleep: the client's pause before it retries
				}
			}
		}()
	}
	for k := 0; k < kills; k++ {
		// A sleep: the kills land at random moments, by design.
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		p.kill()
		if k == kills/2 {
			// The upstream goes away for a while, then comes back.
			sink.Close()
		}
		if k == kills/2+3 {
			up := st.NewUpstream(t, st.UpstreamOpts{ListenAddr: sinkAddr})
			sinkMu.Lock()
			sinks = append(sinks, up)
			sinkMu.Unlock()
		}
		p.start()
	}
	wg.Wait()

	arrived := func() map[string]int {
		seen := map[string]int{}
		sinkMu.Lock()
		defer sinkMu.Unlock()
		for _, u := range sinks {
			for _, m := range u.Received() {
				if s := subjectOf(m.Data); s != "" {
					seen[s]++
				}
			}
		}
		return seen
	}
	var seen map[string]int
	var lost []string
	st.Eventually(90*time.Second, func() bool {
		seen, lost = arrived(), nil
		for s := range acked {
			if seen[s] == 0 {
				lost = append(lost, s)
			}
		}
		return len(lost) == 0
	}) // on timeout, the lost ones are reported below
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("crash loop: %d sent, %d acknowledged, %d delivered, %d duplicates, %d lost over %d SIGKILLs (upstream away for 3 of them)",
		total, len(acked), len(seen), dups, len(lost), kills)
	if len(lost) > 0 {
		f, _ := os.Open(p.log)
		tail, _ := io.ReadAll(f)
		t.Fatalf("acknowledged messages lost: %v\n%s", lost, tail[max(0, len(tail)-4000):])
	}
	if len(acked) < total*9/10 {
		t.Fatalf("only %d of %d acknowledged", len(acked), total)
	}
}
