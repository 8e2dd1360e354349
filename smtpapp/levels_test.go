package smtpapp

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
	"github.com/caddy-smtp/caddy-smtp/message"
)

// TestLevels runs every server TLS level against a plaintext client and a
// STARTTLS client, and checks the exact replies docs/design.md and the
// README give.
func TestLevels(t *testing.T) {
	e := st.NewEnv(t)
	none, noneAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "none"}})
	may, mayAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "may"}})
	def, defAddr := st.ServerConfig(t, nil) // no tls block: may is the default
	enc, encAddr := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt"}})
	e.Load(st.App(map[string]any{"none": none, "may": may, "default": def, "encrypt": enc}), nil)
	st.WaitTLS(t, mayAddr, st.TLSConfig(nil, ""))
	st.WaitTLS(t, defAddr, st.TLSConfig(nil, ""))
	st.WaitTLS(t, encAddr, st.TLSConfig(nil, ""))

	t.Run("none/plaintext", func(t *testing.T) {
		c := st.Dial(t, noneAddr)
		if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
			t.Fatalf("level none advertises STARTTLS: %q", ehlo)
		}
		if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250 2.0.0 OK: queued as ") {
			t.Fatalf("DATA: %q", got)
		}
	})
	t.Run("none/starttls", func(t *testing.T) {
		c := st.Dial(t, noneAddr)
		c.Expect("250", "EHLO client.test")
		c.Expect("502 5.5.1", "STARTTLS")
		// The session goes on in plaintext.
		c.Expect("250", "MAIL FROM:<a@remote.test>")
	})
	for _, addr := range []string{mayAddr, defAddr} {
		t.Run("may/plaintext", func(t *testing.T) {
			c := st.Dial(t, addr)
			if ehlo := c.Expect("250", "EHLO client.test"); !strings.Contains(ehlo, "STARTTLS") {
				t.Fatalf("level may does not advertise STARTTLS: %q", ehlo)
			}
			if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
				t.Fatalf("DATA: %q", got)
			}
		})
		t.Run("may/starttls", func(t *testing.T) {
			c := st.Dial(t, addr)
			c.Expect("250", "EHLO client.test")
			if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
				t.Fatal(err)
			}
			if ehlo := c.Expect("250", "EHLO client.test"); strings.Contains(ehlo, "STARTTLS") {
				t.Fatalf("STARTTLS advertised again inside TLS: %q", ehlo)
			}
			c.Expect("502 5.5.1", "STARTTLS")
			if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
				t.Fatalf("DATA: %q", got)
			}
		})
	}
	t.Run("encrypt/plaintext", func(t *testing.T) {
		c := st.Dial(t, encAddr)
		if ehlo := c.Expect("250", "EHLO client.test"); !strings.Contains(ehlo, "STARTTLS") {
			t.Fatalf("level encrypt does not advertise STARTTLS: %q", ehlo)
		}
		const refused = "530 5.7.0 Must issue a STARTTLS command first"
		c.Expect(refused, "MAIL FROM:<a@remote.test>")
		c.Expect(refused, "RCPT TO:<b@example.test>")
		c.Expect(refused, "DATA")
		c.Expect(refused, "AUTH PLAIN AGFAYg==")
		// RFC 3030: the chunk follows BDAT at once; it is discarded.
		c.Conn.Write([]byte("BDAT 5 LAST\r\nhello"))
		if code, msg := c.Read(); code != 530 {
			t.Fatalf("BDAT: %d %s", code, msg)
		}
		c.Expect("250", "NOOP")
		c.Expect("250", "RSET")
		// STARTTLS still works after refusals.
		if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
			t.Fatal(err)
		}
		c.Expect("250", "EHLO client.test")
		if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
			t.Fatalf("DATA after STARTTLS: %q", got)
		}
	})
	// Issue 11 item 5: before TLS an encrypt-level server offers what
	// starts TLS and nothing that lets a client push a message body
	// (Exim pipelined MAIL, RCPT and a whole BDAT body in cleartext).
	t.Run("encrypt/ehlo-before-tls", func(t *testing.T) {
		c := st.Dial(t, encAddr)
		before := ehloKeywords(c.Expect("250", "EHLO client.test"))
		if strings.Join(before, " ") != "ENHANCEDSTATUSCODES STARTTLS" {
			t.Fatalf("EHLO before TLS offers %v, want ENHANCEDSTATUSCODES STARTTLS", before)
		}
		if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
			t.Fatal(err)
		}
		after := strings.Join(ehloKeywords(c.Expect("250", "EHLO client.test")), " ")
		for _, kw := range []string{"PIPELINING", "CHUNKING", "SIZE", "8BITMIME", "SMTPUTF8", "DSN"} {
			if !strings.Contains(" "+after+" ", " "+kw+" ") {
				t.Fatalf("EHLO after TLS lacks %s: %v", kw, after)
			}
		}
		if strings.Contains(after, "STARTTLS") {
			t.Fatalf("STARTTLS offered inside TLS: %v", after)
		}
	})
	t.Run("may/ehlo-before-tls", func(t *testing.T) {
		c := st.Dial(t, mayAddr)
		before := " " + strings.Join(ehloKeywords(c.Expect("250", "EHLO client.test")), " ") + " "
		for _, kw := range []string{"PIPELINING", "CHUNKING", "SIZE", "STARTTLS"} {
			if !strings.Contains(before, " "+kw+" ") {
				t.Fatalf("level may: EHLO before TLS lacks %s: %v", kw, before)
			}
		}
	})
	t.Run("encrypt/starttls", func(t *testing.T) {
		c := st.Dial(t, encAddr)
		c.Expect("250", "EHLO client.test")
		if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
			t.Fatal(err)
		}
		c.Expect("250", "EHLO client.test")
		if got := c.Send("a@remote.test", "b@example.test", st.Message); !strings.HasPrefix(got, "250") {
			t.Fatalf("DATA: %q", got)
		}
	})
	t.Run("encrypt/too-many-refusals", func(t *testing.T) {
		c := st.Dial(t, encAddr)
		c.Expect("250", "EHLO client.test")
		for i := 0; i < maxGateErrors-1; i++ {
			c.Expect("530", "MAIL FROM:<a@remote.test>")
		}
		c.Expect("530", "MAIL FROM:<a@remote.test>")
		if code, msg := c.Read(); code != 421 {
			t.Fatalf("after %d refusals: %d %s, want 421", maxGateErrors, code, msg)
		}
		if code, _ := c.Read(); code != 0 {
			t.Fatalf("connection still open after 421")
		}
	})
}

// TestEncryptOnPort25Warns checks the RFC 3207 warning.
func TestEncryptOnPort25Warns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding port 25 needs root")
	}
	e := st.NewEnv(t)
	s, _ := st.ServerConfig(t, map[string]any{"tls": map[string]any{"level": "encrypt"}})
	s["listen"] = []string{"127.0.0.1:25"}
	e.Load(st.App(map[string]any{"mx": s}), nil)
	w := e.WaitLog("tls level encrypt on port 25: RFC 3207 says a publicly referenced MX must not require TLS; senders without STARTTLS will not reach you")
	if w["level"] != "warn" {
		t.Fatalf("logged at %v, want warn", w["level"])
	}
}

// TestSpoolRecord checks the record on disk after 250: envelope facts,
// and the Received: header with ESMTPS and the TLS version and cipher.
func TestSpoolRecord(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{"hostname": "mx.localhost"})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))

	c := st.Dial(t, addr)
	c.Expect("250", "EHLO client.test")
	if err := c.StartTLS(st.TLSConfig(nil, "mx.localhost")); err != nil {
		t.Fatal(err)
	}
	cs := c.Conn.(*tls.Conn).ConnectionState()
	c.Expect("250", "EHLO client.test")
	c.Expect("250", "MAIL FROM:<sender@remote.test> SIZE=100 ENVID=abc123 RET=HDRS")
	c.Expect("250", "RCPT TO:<one@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;one@example.test")
	c.Expect("250", "RCPT TO:<two@example.test>")
	c.Expect("354", "DATA")
	c.Conn.Write([]byte(st.Message))
	code, msg := c.Read()
	if code != 250 || !strings.HasPrefix(msg, "2.0.0 OK: queued as ") {
		t.Fatalf("DATA: %d %s", code, msg)
	}
	id := strings.TrimPrefix(msg, "2.0.0 OK: queued as ")

	raw, data := e.SpoolRecord(id)
	var env struct {
		ID         string `json:"id"`
		Server     string `json:"server"`
		From       string `json:"from"`
		EnvID      string `json:"envid"`
		Ret        string `json:"ret"`
		Recipients []struct {
			Address string   `json:"address"`
			Notify  []string `json:"notify"`
			ORcpt   string   `json:"orcpt"`
			Status  string   `json:"status"`
		} `json:"recipients"`
		Client struct {
			IP       string `json:"ip"`
			Helo     string `json:"helo"`
			Protocol string `json:"protocol"`
			TLS      *struct {
				Version string `json:"version"`
				Cipher  string `json:"cipher"`
				SNI     string `json:"server_name"`
			} `json:"tls"`
		} `json:"client"`
		Size int64 `json:"size"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	switch {
	case env.ID != id, env.Server != "mx", env.From != "sender@remote.test", env.EnvID != "abc123", env.Ret != "HDRS":
		t.Fatalf("envelope: %s", raw)
	case len(env.Recipients) != 2 || env.Recipients[0].Address != "one@example.test" ||
		strings.Join(env.Recipients[0].Notify, ",") != "SUCCESS,FAILURE" ||
		env.Recipients[0].ORcpt != "RFC822;one@example.test" || env.Recipients[1].Status != "queued":
		t.Fatalf("envelope recipients: %s", raw)
	case env.Client.IP != "127.0.0.1" || env.Client.Helo != "client.test" || env.Client.Protocol != "ESMTPS":
		t.Fatalf("envelope client: %s", raw)
	case env.Client.TLS == nil || env.Client.TLS.Version != tls.VersionName(cs.Version) ||
		env.Client.TLS.Cipher != tls.CipherSuiteName(cs.CipherSuite) || env.Client.TLS.SNI != "mx.localhost":
		t.Fatalf("envelope tls: %s", raw)
	}

	if int64(len(data)) != env.Size {
		t.Fatalf("size %d in envelope, %d on disk", env.Size, len(data))
	}
	hdr, body, _ := strings.Cut(string(data), "Subject: test")
	for _, want := range []string{
		"Received: from client.test ([127.0.0.1])\r\n",
		"\t(using " + message.TLSVersionName(cs.Version) + " with cipher " + tls.CipherSuiteName(cs.CipherSuite) + ")\r\n",
		"\tby mx.localhost (caddy-smtp) with ESMTPS id " + id + ";\r\n",
	} {
		if !strings.Contains(hdr, want) {
			t.Errorf("Received header lacks %q:\n%s", want, hdr)
		}
	}
	if body != "\r\nFrom: <sender@remote.test>\r\n\r\nHello.\r\n" {
		t.Errorf("message body changed: %q", body)
	}

	// The accepted-message log line carries the facts.
	l := e.WaitLog("message accepted")
	if l["queue_id"] != id || l["from"] != "sender@remote.test" || l["tls_version"] != tls.VersionName(cs.Version) {
		t.Errorf("log line: %v", l)
	}
	port := c.Conn.LocalAddr().(*net.TCPAddr).Port
	c.Expect("221", "QUIT")
	var cl map[string]any
	st.Eventually(5*time.Second, func() bool {
		for _, l := range e.LogLines("connection closed") {
			if l["remote_port"] == float64(port) {
				cl = l
			}
		}
		return cl != nil
	}) // on timeout, cl is nil and fails the check below
	if cl["tls"] != true || cl["tls_cipher"] != tls.CipherSuiteName(cs.CipherSuite) || cl["tls_server_name"] != "mx.localhost" {
		t.Errorf("connection log line: %v", cl)
	}
}

// ehloKeywords returns the extension keywords of an EHLO reply's text
// (its lines after the first), in order.
func ehloKeywords(reply string) []string {
	var kws []string
	lines := strings.Split(reply, "\n")
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		kws = append(kws, kw)
	}
	return kws
}
