package l4smtp_test

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	_ "github.com/caddy-smtp/caddy-smtp/l4smtp"
	_ "github.com/mholt/caddy-l4"
)

// proxyV1 is a PROXY protocol v1 header for a TCP4 client.
func proxyV1(src, dst string) []byte {
	return []byte(fmt.Sprintf("PROXY TCP4 %s %s 40000 25\r\n", src, dst))
}

// proxyV2 is a PROXY protocol v2 header (binary) for a TCP4 client.
func proxyV2(src, dst string) []byte {
	h := []byte("\r\n\r\n\x00\r\nQUIT\n")
	h = append(h, 0x21, 0x11, 0, 12) // v2 PROXY, TCP over IPv4, 12 bytes of addresses
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	h = append(h, s[:]...)
	h = append(h, d[:]...)
	h = binary.BigEndian.AppendUint16(h, 40000)
	h = binary.BigEndian.AppendUint16(h, 25)
	return h
}

// dialWith connects, sends a header, and reads the greeting.
func dialWith(t *testing.T, addr string, header []byte) *st.Client {
	t.Helper()
	conn, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write(header); err != nil {
		t.Fatal(err)
	}
	c := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
	if code, msg := c.Read(); code != 220 {
		t.Fatalf("greeting after PROXY header: %d %s", code, msg)
	}
	return c
}

// waitProxiedTLS waits until the certificate is served (it is obtained
// right after start).
func waitProxiedTLS(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c := dialWith(t, addr, proxyV1("192.0.2.1", "127.0.0.1"))
		c.Expect("250", "EHLO client.test")
		err := c.StartTLS(st.TLSConfig(nil, "localhost"))
		c.Conn.Close()
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no TLS through layer4 within 30s")
}

func l4Server(listen string, routes ...any) map[string]any {
	return map[string]any{"listen": []string{listen}, "routes": routes}
}

func handle(handlers ...map[string]any) map[string]any {
	return map[string]any{"handle": handlers}
}

var (
	proxyProtocol = map[string]any{"handler": "proxy_protocol", "allow": []string{"127.0.0.0/8"}}
	smtpGW        = map[string]any{"handler": "smtp", "server": "gw"}
	smtpInner     = map[string]any{"handler": "smtp", "server": "inner"}
)

// TestPROXYProtocol: PROXY v1 and v2 in front of an SMTP session with
// STARTTLS; relay decisions, logs, the spool record and the Received:
// header use the proxied client address, both ways round.
func TestPROXYProtocol(t *testing.T) {
	e := st.NewEnv(t)
	// gw: relays for 192.0.2.0/24 only (the real peer, 127.0.0.1, is
	// outside); inner: relays for loopback only (the real peer is inside).
	gw, _ := st.ServerConfig(t, map[string]any{"relay_networks": []string{"192.0.2.0/24"}})
	inner, _ := st.ServerConfig(t, map[string]any{"relay_networks": []string{"127.0.0.0/8"}})
	delete(gw, "listen") // reached only through layer4
	delete(inner, "listen")
	gwAddr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	innerAddr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	e.Load(st.App(map[string]any{"gw": gw, "inner": inner}), map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"gw":    l4Server(gwAddr, handle(proxyProtocol, smtpGW)),
		"inner": l4Server(innerAddr, handle(proxyProtocol, smtpInner)),
	}}})
	for _, v := range []struct {
		name   string
		header func(src, dst string) []byte
	}{{"v1", proxyV1}, {"v2", proxyV2}} {
		t.Run(v.name+"/allowed-by-proxied-address", func(t *testing.T) {
			waitProxiedTLS(t, gwAddr)
			c := dialWith(t, gwAddr, v.header("192.0.2.10", "127.0.0.1"))
			c.Expect("250", "EHLO client.test")
			if err := c.StartTLS(st.TLSConfig(nil, "localhost")); err != nil {
				t.Fatal(err)
			}
			c.Expect("250", "EHLO client.test")
			got := c.Send("a@remote.test", "anyone@elsewhere.test", st.Message)
			if !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
				t.Fatalf("relay from a proxied address in relay_networks: %s", got)
			}
			id := strings.TrimPrefix(got, "250 2.0.0 OK: queued as ")
			raw, data := e.SpoolRecord(id)
			var env struct {
				Client struct {
					IP       string `json:"ip"`
					Protocol string `json:"protocol"`
				} `json:"client"`
			}
			json.Unmarshal(raw, &env)
			if env.Client.IP != "192.0.2.10" || env.Client.Protocol != "ESMTPS" {
				t.Fatalf("record client: %s", raw)
			}
			if !strings.HasPrefix(string(data), "Received: from client.test ([192.0.2.10])") {
				t.Fatalf("Received header: %q", data[:80])
			}
		})
		t.Run(v.name+"/refused-by-proxied-address", func(t *testing.T) {
			c := dialWith(t, innerAddr, v.header("203.0.113.5", "127.0.0.1"))
			c.Expect("250", "EHLO client.test")
			if err := c.StartTLS(st.TLSConfig(nil, "localhost")); err != nil {
				t.Fatal(err)
			}
			c.Expect("250", "EHLO client.test")
			c.Expect("250", "MAIL FROM:<a@remote.test>")
			c.Expect("554 5.7.1 Relay access denied", "RCPT TO:<anyone@elsewhere.test>")
			c.Expect("250", "RCPT TO:<someone@example.test>") // accept_domains still work
		})
	}
	// The refusal was logged with the proxied address.
	found := false
	for _, l := range e.LogLines("recipient refused: relay access denied") {
		if l["remote_ip"] == "203.0.113.5" {
			found = true
		}
	}
	if !found {
		t.Error("relay refusal not logged with the proxied address")
	}
}

// TestImplicitTLSThroughLayer4: layer4's tls handler then smtp is
// implicit TLS on its own port, with the certificate from the tls app.
func TestImplicitTLSThroughLayer4(t *testing.T) {
	e := st.NewEnv(t)
	gw, plainAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt"}})
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	e.Load(st.App(map[string]any{"gw": gw}), map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"submissions": l4Server(tlsAddr, handle(map[string]any{"handler": "tls"}, smtpGW)),
	}}})
	st.WaitTLS(t, plainAddr, st.TLSConfig(nil, "")) // the certificate is there
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsAddr,
		&tls.Config{RootCAs: e.LocalCARoot(), ServerName: "localhost"})
	if err != nil {
		t.Fatalf("implicit TLS through layer4: %v", err)
	}
	defer conn.Close()
	c := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
	if code, _ := c.Read(); code != 220 {
		t.Fatal("no greeting")
	}
	if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("STARTTLS offered inside implicit TLS: %q", ehlo)
	}
	// Level encrypt is satisfied by the implicit TLS session.
	got := c.Send("a@remote.test", "someone@example.test", st.Message)
	if !strings.HasPrefix(got, "250") {
		t.Fatalf("DATA: %s", got)
	}
	id := strings.TrimPrefix(got, "250 2.0.0 OK: queued as ")
	_, data := e.SpoolRecord(id)
	if !strings.Contains(string(data), "with ESMTPS id "+id) || !strings.Contains(string(data), "(using TLSv1.3 with cipher") {
		t.Fatalf("Received header does not show TLS: %q", data)
	}
}

// TestRemoteIPMatcher: unknown networks go to layer4's close handler,
// known ones to the smtp server.
func TestRemoteIPMatcher(t *testing.T) {
	e := st.NewEnv(t)
	gw, _ := st.ServerConfig(t, nil)
	delete(gw, "listen")
	known := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	unknown := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	route := func(ranges string) []any {
		return []any{
			map[string]any{"match": []any{map[string]any{"remote_ip": map[string]any{"ranges": []string{ranges}}}}, "handle": []any{smtpGW}},
			map[string]any{"handle": []any{map[string]any{"handler": "close"}}},
		}
	}
	e.Load(st.App(map[string]any{"gw": gw}), map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"known":   map[string]any{"listen": []string{known}, "routes": route("127.0.0.0/8")},
		"unknown": map[string]any{"listen": []string{unknown}, "routes": route("192.0.2.0/24")},
	}}})
	st.Dial(t, known).Expect("250", "EHLO client.test")
	conn, err := st.NetDial(unknown)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("unknown network got %q instead of a closed connection", buf[:n])
	}
}

// TestLayer4Reload reloads the layer4 config while a session is open:
// the session finishes, and the new config serves new connections.
func TestLayer4Reload(t *testing.T) {
	e := st.NewEnv(t)
	gw, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	delete(gw, "listen")
	addr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	l4 := func(proxy bool) map[string]any {
		h := []map[string]any{smtpGW}
		if proxy {
			h = []map[string]any{proxyProtocol, smtpGW}
		}
		return map[string]any{"layer4": map[string]any{"servers": map[string]any{"gw": l4Server(addr, handle(h...))}}}
	}
	e.Load(st.App(map[string]any{"gw": gw}), l4(false))
	open := st.Dial(t, addr)
	open.Expect("250", "EHLO client.test")
	open.Expect("250", "MAIL FROM:<a@remote.test>")
	e.PostLoad(st.App(map[string]any{"gw": gw}), l4(true))
	open.Expect("250", "RCPT TO:<b@example.test>")
	open.Expect("354", "DATA")
	open.Conn.Write([]byte(st.Message))
	if code, msg := open.Read(); code != 250 {
		t.Fatalf("session across a layer4 reload: %d %s", code, msg)
	}
	// The new config expects a PROXY header.
	c := dialWith(t, addr, proxyV1("192.0.2.44", "127.0.0.1"))
	c.Expect("250", "EHLO client.test")
}

// TestPerIPCountsIPv6Slash64: max_connections_per_ip counts an IPv6
// client per /64, so that a client cannot walk through its /64 to get
// past the limit; another /64 is another client. The addresses come
// from PROXY headers, as the only way to have several IPv6 sources here.
func TestPerIPCountsIPv6Slash64(t *testing.T) {
	e := st.NewEnv(t)
	gw, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}, "max_connections_per_ip": 2})
	delete(gw, "listen")
	addr := fmt.Sprintf("127.0.0.1:%d", st.FreePort(t))
	e.Load(st.App(map[string]any{"gw": gw}), map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"gw": l4Server(addr, handle(proxyProtocol, smtpGW))}}})
	v6 := func(src string) []byte {
		return []byte(fmt.Sprintf("PROXY TCP6 %s 2001:db8:ffff::1 40000 25\r\n", src))
	}
	dialWith(t, addr, v6("2001:db8:1:1::1")).Expect("250", "EHLO a.test")
	dialWith(t, addr, v6("2001:db8:1:1:ffff::2")).Expect("250", "EHLO b.test")
	conn, err := st.NetDial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(v6("2001:db8:1:1:abcd::3"))
	third := &st.Client{T: t, Conn: conn, Text: st.NewText(conn)}
	if code, msg := third.Read(); code != 421 || !strings.Contains(msg, "Too many connections from your address") {
		t.Fatalf("third connection from one /64: %d %s", code, msg)
	}
	dialWith(t, addr, v6("2001:db8:1:2::1")).Expect("250", "EHLO other.test")
}
