package smtpapp

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// message4K is a 4 KiB message in DATA form.
var message4K = func() string {
	var b strings.Builder
	b.WriteString("Subject: bench\r\nFrom: <a@remote.test>\r\n\r\n")
	line := strings.Repeat("x", 62) + "\r\n"
	for b.Len() < 4096 {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.String()
}()

// BenchmarkTransaction is one whole SMTP transaction against an
// in-process server, durable write included: connect, EHLO,
// (STARTTLS, EHLO), MAIL, RCPT, DATA of 4 KiB, QUIT. Allocations count
// both the client and the server side.
func BenchmarkTransaction(b *testing.B) {
	for _, starttls := range []bool{false, true} {
		name := "plain"
		if starttls {
			name = "starttls"
		}
		b.Run(name, func(b *testing.B) {
			e := st.NewEnv(b)
			s, addr := st.ServerConfig(b, map[string]any{"max_connections_per_ip": 10000})
			e.Load(st.App(map[string]any{"mx": s}), nil)
			cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(64)}
			if starttls {
				st.WaitTLS(b, addr, cfg)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := st.Dial(b, addr)
				c.Expect("250", "EHLO client.test")
				if starttls {
					if err := c.StartTLS(cfg); err != nil {
						b.Fatal(err)
					}
					c.Expect("250", "EHLO client.test")
				}
				if got := c.Send("a@remote.test", "b@example.test", message4K); !strings.HasPrefix(got, "250") {
					b.Fatal(got)
				}
				c.Expect("221", "QUIT")
				c.Conn.Close()
			}
		})
	}
}

// BenchmarkIdleConnections opens 5,000 idle connections to a real caddy
// binary, after EHLO and after STARTTLS, and reports the server's RSS
// per connection (the goal is under 64 KiB). It measures once, however
// large b.N.
func BenchmarkIdleConnections(b *testing.B) {
	const n = 5000
	bin, err := buildCaddy()
	if err != nil {
		b.Fatal(err)
	}
	for _, starttls := range []bool{false, true} {
		name := "after-ehlo"
		if starttls {
			name = "after-starttls"
		}
		b.Run(name, func(b *testing.B) {
			dir := b.TempDir()
			addr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(b))
			cfg := map[string]any{
				"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
				"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, "storage")},
				"apps": map[string]any{
					"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
					"smtp": map[string]any{
						"queue": map[string]any{"path": filepath.Join(dir, "queue"), "hold": true},
						"servers": map[string]any{"mx": map[string]any{
							"listen": []string{addr}, "hostname": "localhost",
							"max_connections": 2 * n, "max_connections_per_ip": 2 * n,
							"routes": []any{map[string]any{"domains": []string{"*"}, "deliver": map[string]any{"via": "maildir", "path": filepath.Join(dir, "md")}}},
						}},
					}},
			}
			raw, _ := json.Marshal(cfg)
			cfgFile := filepath.Join(dir, "caddy.json")
			os.WriteFile(cfgFile, raw, 0o600)
			cmd := exec.Command(bin, "run", "--config", cfgFile)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			tlsCfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(64)}
			deadline := time.Now().Add(30 * time.Second)
			for {
				c, err := st.NetDial(addr)
				if err == nil {
					cl := &st.Client{T: b, Conn: c, Text: st.NewText(c)}
					cl.Read()
					cl.Expect("250", "EHLO client.test")
					err = cl.StartTLS(tlsCfg)
					c.Close()
					if err == nil {
						break
					}
				}
				if time.Now().After(deadline) {
					b.Fatalf("server not ready: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			// A sleep: the probe connections' memory settles before
			// the baseline is measured.
			time.Sleep(200 * time.Millisecond)
			before := rss(b, cmd.Process.Pid)
			clients := make([]*st.Client, 0, n)
			for i := 0; i < n; i++ {
				c, err := st.NetDial(addr)
				if err != nil {
					b.Fatalf("connection %d: %v", i, err)
				}
				cl := &st.Client{T: b, Conn: c, Text: st.NewText(c)}
				if code, msg := cl.Read(); code != 220 {
					b.Fatalf("connection %d: %d %s", i, code, msg)
				}
				cl.Expect("250", "EHLO client.test")
				if starttls {
					if err := cl.StartTLS(tlsCfg); err != nil {
						b.Fatal(err)
					}
					cl.Expect("250", "EHLO client.test")
				}
				clients = append(clients, cl)
			}
			// A sleep: the sessions' memory settles before it is measured.
			time.Sleep(500 * time.Millisecond)
			after := rss(b, cmd.Process.Pid)
			for _, c := range clients {
				c.Conn.Close()
			}
			perConn := float64(after-before) / n
			b.ReportMetric(perConn/1024, "KiB-RSS/conn")
			b.ReportMetric(float64(after)/(1<<20), "MiB-RSS-total")
			b.Logf("%s: RSS %d KiB before, %d KiB with %d idle connections: %.1f KiB each", name, before>>10, after>>10, n, perConn/1024)
		})
	}
}

// rss reads a process's resident set size in bytes.
func rss(b *testing.B, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
