package smtpapp

// The relay matrix (GitHub issue 6, item 4): every combination of
// sender (local, remote, null, source-routed) × recipient (local,
// remote, and tricky forms of each) × client (inside or outside
// relay_networks) × AUTH (none; attempted in plaintext; attempted
// inside TLS). The server has no inbound AUTH, so an attempt must fail
// and change nothing. A recipient is accepted exactly when its domain
// is in accept_domains or the client is in relay_networks.

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

func TestRelayMatrix(t *testing.T) {
	e := st.NewEnv(t)
	s, addr := st.ServerConfig(t, map[string]any{
		"tls":            map[string]any{"level": "may"},
		"accept_domains": []string{"example.test"},
		"relay_networks": []string{"127.0.0.2/32"},
	})
	e.Load(st.App(map[string]any{"mx": s}), nil)
	st.WaitTLS(t, addr, st.TLSConfig(nil, ""))

	type class int
	const (
		local      class = iota // the mailbox's domain is accepted
		remote                  // it is not
		invalid                 // not an address: refused by syntax
		routed                  // local domain, but %/! routing in the local part
		unquotable              // a local part that would need quotes (an @)
	)
	classNames := map[class]string{local: "local", remote: "remote", invalid: "invalid", routed: "routed", unquotable: "unquotable"}

	clients := []struct {
		name, ip string
		in       bool
	}{
		{"out", "127.0.0.1", false},
		{"in", "127.0.0.2", true},
	}
	auths := []string{"none", "AUTH-plain", "AUTH-TLS"}
	senders := []string{"s@example.test", "s@remote.test", "", "@x.test:s@remote.test"}
	recipients := []struct {
		addr string
		cls  class
	}{
		{"u@example.test", local},
		{"u@EXAMPLE.TEST", local},
		{"u@example.test.", local},
		{"@x.test:u@example.test", local},
		{"@a.test,@b.test:u@example.test", local},
		{"u%remote.test@example.test", routed},
		{"remote.test!u@example.test", routed},
		{`"u.v"@example.test`, local},
		{"u@remote.test", remote},
		{"u@remote.test.", remote},
		{"u@[192.0.2.1]", remote},
		{"u@[127.0.0.1]", remote},
		{"u@[IPv6:2001:db8::1]", remote},
		{"@example.test:u@remote.test", remote},
		{"u%example.test@remote.test", remote},
		{"example.test!u@remote.test", remote},
		{`"u@example.test"@remote.test`, unquotable},
		{"u@example.test@remote.test", unquotable},
		{"u@sub.example.test", remote},
		{"u@example.test.remote.test", remote},
		{"u@notexample.test", remote},
		{"u@example.tes", remote},
		{"example.test!u", invalid},
		{"u@", invalid},
		{"", invalid},
	}

	const (
		denied    = "554 5.7.1 Relay access denied"
		badSyntax = "501 5.5.2 Was expecting RCPT arg syntax of TO:<address>"
		accepted  = "250 2.0.0 I'll make sure <"
	)
	plain := base64.StdEncoding.EncodeToString([]byte("\x00user\x00password"))

	// got[client][auth][sender][recipient] = reply
	type key struct{ client, auth, sender, rcpt string }
	got := make(map[key]string)
	for _, cl := range clients {
		for _, auth := range auths {
			for _, sender := range senders {
				c, code, msg := hostileDialFrom(t, addr, cl.ip)
				if code != 220 {
					t.Fatalf("greeting from %s: %d %s", cl.ip, code, msg)
				}
				ehlo := c.Expect("250", "EHLO client.test")
				switch auth {
				case "AUTH-plain":
					if g := hostileReply(c, "AUTH PLAIN "+plain); g != "523 5.7.10 TLS is required" {
						t.Fatalf("AUTH in plaintext: %q", g)
					}
				case "AUTH-TLS":
					if err := c.StartTLS(st.TLSConfig(nil, "")); err != nil {
						t.Fatal(err)
					}
					ehlo = c.Expect("250", "EHLO client.test")
					if g := hostileReply(c, "AUTH PLAIN "+plain); g != "504 5.7.4 Unsupported authentication mechanism" {
						t.Fatalf("AUTH in TLS: %q", g)
					}
				}
				if strings.Contains(ehlo, "AUTH") {
					t.Fatalf("AUTH advertised: %q", ehlo)
				}
				for _, r := range recipients {
					c.Expect("250", "RSET")
					c.Expect("250", "MAIL FROM:<%s>", sender)
					got[key{cl.name, auth, sender, r.addr}] = hostileReply(c, "RCPT TO:<"+r.addr+">")
				}
				c.Cmd("QUIT")
			}
		}
	}

	// The table, then the check of each cell.
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "sender\trecipient\tclass")
	for _, cl := range clients {
		for _, auth := range auths {
			fmt.Fprintf(tw, "\t%s/%s", cl.name, auth)
		}
	}
	fmt.Fprintln(tw)
	cells, acceptedCells := 0, 0
	for _, sender := range senders {
		for _, r := range recipients {
			fmt.Fprintf(tw, "<%s>\t<%s>\t%s", sender, r.addr, classNames[r.cls])
			for _, cl := range clients {
				for _, auth := range auths {
					reply := got[key{cl.name, auth, sender, r.addr}]
					var want string
					switch {
					case r.cls == invalid:
						want = badSyntax
					case r.cls == unquotable:
						// An @ in the local part cannot be sent on without
						// quotes: refused as bad syntax, from anyone.
						want = "501 5.1.3 Bad recipient address syntax"
					case r.cls == routed && !cl.in:
						// Sender-specified routing (%, !) only from
						// clients that may relay (Postfix's
						// allow_untrusted_routing = no).
						want = denied
					case r.cls == local || r.cls == routed || cl.in:
						want = accepted
					default:
						want = denied
					}
					cells++
					mark := reply[:3]
					if strings.HasPrefix(reply, "250") {
						acceptedCells++
					}
					if !strings.HasPrefix(reply, want) {
						mark += "!"
						t.Errorf("client %s (%s), %s, MAIL FROM:<%s>, RCPT TO:<%s> (%s): got %q, want %q",
							cl.name, cl.ip, auth, sender, r.addr, classNames[r.cls], reply, want)
						if strings.HasPrefix(reply, "2") && !cl.in && r.cls != local {
							t.Errorf("OPEN RELAY: the cell above accepted a remote recipient from outside relay_networks")
						}
					}
					fmt.Fprintf(tw, "\t%s", mark)
				}
			}
			fmt.Fprintln(tw)
		}
	}
	tw.Flush()
	t.Logf("relay matrix: accept_domains example.test, relay_networks 127.0.0.2/32; out = 127.0.0.1, in = 127.0.0.2; "+
		"AUTH-plain: AUTH PLAIN before STARTTLS (523 5.7.10), AUTH-TLS: after (504 5.7.4, no AUTH offered); "+
		"250 accepted, 554 5.7.1 Relay access denied, 501 5.5.2 syntax; ! marks a cell that is wrong\n%s", b.String())
	t.Logf("%d cells, %d accepted", cells, acceptedCells)
}
