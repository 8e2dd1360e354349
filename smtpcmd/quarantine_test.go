package smtpcmd_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/admin"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"

	_ "github.com/caddy-smtp/caddy-smtp/checks/clamav"
	_ "github.com/caddy-smtp/caddy-smtp/delivery/maildir"
)

// TestQuarantineCommand runs `caddy smtp-queue quarantine` against an
// in-process Caddy whose clamav check (a real clamd) quarantined two
// messages with EICAR attached: list (mailq's format, filters, --json),
// show, release (the message reaches its maildir), delete, and the
// errors of an unknown id.
func TestQuarantineCommand(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	clamd := st.StartClamd(t)
	e := st.NewEnv(t)
	mail := t.TempDir()
	srv, addr := st.ServerConfig(t, map[string]any{
		"tls":    map[string]any{"level": "none"},
		"checks": []any{map[string]any{"check": "clamav", "address": "tcp/" + clamd, "action": "quarantine"}},
		"routes": []any{map[string]any{"domains": []string{"*"},
			"deliver": map[string]any{"via": "maildir", "path": filepath.Join(mail, "{local}")}}},
	})
	e.Load(e.DeliveringApp(map[string]any{"mx": srv}, nil), nil)
	c := cli{t: t, bin: bin, admin: e.Admin}

	if out := c.ok("quarantine", "list"); out != "Quarantine is empty\n" {
		t.Fatalf("empty quarantine:\n%s", out)
	}
	virus := func(subject string) string {
		return "Subject: " + subject + "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
			"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			base64.StdEncoding.EncodeToString([]byte(st.EICAR)) + "\r\n--b--\r\n.\r\n"
	}
	ids := []string{st.Submit(t, addr, "alice@remote.test", "bob@example.test", virus("one"))}
	time.Sleep(2 * time.Millisecond) // queue ids order by the millisecond: the second is listed second
	ids = append(ids, st.SubmitToAll(t, addr, "dave@remote.test", []string{"erin@example.test", "frank@example.test"},
		virus("=?UTF-8?Q?zw=C3=B6lf?=")))

	var list admin.QuarantineListResponse
	t.Run("list-json", func(t *testing.T) {
		c := c.in(t)
		if err := json.Unmarshal([]byte(c.ok("quarantine", "list", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range list.Messages {
			got = append(got, m.ID)
		}
		if list.Total != 2 || !slices.Equal(got, ids) {
			t.Fatalf("quarantine list --json: total %d, %v; want %v", list.Total, got, ids)
		}
	})
	if len(list.Messages) != 2 {
		t.FailNow()
	}

	t.Run("list", func(t *testing.T) {
		c := c.in(t)
		out := c.ok("quarantine", "list")
		t.Logf("caddy smtp-queue quarantine list:\n%s", out)
		m0, m1 := list.Messages[0], list.Messages[1]
		want := "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n" +
			idLine(m0.ID, m0.Size, m0.Received, "alice@remote.test") +
			"(clamav: Eicar-Test-Signature.UNOFFICIAL)\nSubject: one\n" + strings.Repeat(" ", 41) + "bob@example.test\n\n" +
			idLine(m1.ID, m1.Size, m1.Received, "dave@remote.test") +
			"(clamav: Eicar-Test-Signature.UNOFFICIAL)\nSubject: zwölf\n" +
			strings.Repeat(" ", 41) + "erin@example.test\n" + strings.Repeat(" ", 41) + "frank@example.test\n\n" +
			fmt.Sprintf("-- %d Kbytes in 2 Requests.\n", (m0.Size+m1.Size)/1024)
		if out != want {
			t.Errorf("got:\n%s\nwant:\n%s", out, want)
		}
	})

	t.Run("list-filters", func(t *testing.T) {
		c := c.in(t)
		if out := c.ok("quarantine", "list", "--recipient", "frank@example.test"); !strings.Contains(out, ids[1]) ||
			strings.Contains(out, ids[0]) || !strings.HasSuffix(out, " Kbytes in 1 Request.\n") {
			t.Errorf("--recipient:\n%s", out)
		}
		if out := c.ok("quarantine", "list", "--sender", "alice@remote.test"); !strings.Contains(out, ids[0]) || strings.Contains(out, ids[1]) {
			t.Errorf("--sender:\n%s", out)
		}
		if out := c.ok("quarantine", "list", "--domain", "nowhere.test"); out != "No matching messages in the quarantine\n" {
			t.Errorf("no match:\n%s", out)
		}
		out := c.ok("quarantine", "list", "--limit", "1")
		if !strings.Contains(out, ids[0]) || strings.Contains(out, ids[1]) ||
			!strings.Contains(out, "\n-- 1 of 2 Requests shown (offset 0); more with --offset 1\n") {
			t.Errorf("--limit 1:\n%s", out)
		}
	})

	t.Run("show", func(t *testing.T) {
		c := c.in(t)
		out := c.ok("quarantine", "show", ids[1])
		t.Logf("caddy smtp-queue quarantine show:\n%s", out)
		for _, want := range []string{
			"Queue ID:      " + ids[1] + "\n",
			"Server:        mx\n",
			"Sender:        dave@remote.test\n",
			"Subject:       zwölf\n",
			" ago) by clamav\n",
			"Reason:        Eicar-Test-Signature.UNOFFICIAL\n",
			"Client:        127.0.0.1 (helo client.test) ESMTP\n",
			"Recipients:\n  erin@example.test\n  frank@example.test\n",
			"Headers:\nReceived: from client.test",
			"\nSubject: =?UTF-8?Q?zw=C3=B6lf?=\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("show: no %q in\n%s", want, out)
			}
		}
		if strings.Contains(out, "Content-Transfer-Encoding") || strings.Contains(out, "\r") {
			t.Errorf("show: body or CR in\n%s", out)
		}
		var m admin.QuarantineMessageResponse
		if err := json.Unmarshal([]byte(c.ok("quarantine", "show", "--json", ids[1])), &m); err != nil ||
			m.ID != ids[1] || m.Check != "clamav" || !strings.Contains(m.Headers, "Subject: =?UTF-8?Q?zw=C3=B6lf?=\r\n") {
			t.Errorf("show --json: %+v %v", m, err)
		}
		out, errOut, code := c.run("quarantine", "show", "0000000000000000000")
		if code != 1 || out != "" || !strings.Contains(errOut, "HTTP 404") || !strings.Contains(errOut, "no such message in the quarantine") {
			t.Errorf("show of an unknown id: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("release", func(t *testing.T) {
		c := c.in(t)
		if out := c.ok("quarantine", "release", ids[0]); out != "Released: "+ids[0]+"\n" {
			t.Errorf("release: %q", out)
		}
		st.WaitFor(t, "the released message in bob's maildir", func() bool {
			files, _ := filepath.Glob(filepath.Join(mail, "bob", "new", "*"))
			return len(files) == 1
		})
		out, errOut, code := c.run("quarantine", "release", ids[0], "0000000000000000000")
		if code != 1 || out != "" || strings.Count(errOut, "HTTP 404") != 2 {
			t.Errorf("release of ids no longer quarantined: exit %d\n%s%s", code, out, errOut)
		}
		if out := c.ok("quarantine", "list"); strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) {
			t.Errorf("after release:\n%s", out)
		}
	})

	t.Run("delete", func(t *testing.T) {
		c := c.in(t)
		out, errOut, code := c.run("quarantine", "delete", "--json", ids[1], "0000000000000000000")
		var r admin.DeleteResponse
		if code != 1 || json.Unmarshal([]byte(out), &r) != nil || !slices.Equal(r.Deleted, ids[1:]) ||
			!strings.Contains(errOut, "0000000000000000000: caddy responded with error: HTTP 404") {
			t.Errorf("delete --json with an unknown id: exit %d\n%s%s", code, out, errOut)
		}
		if out := c.ok("quarantine", "list"); out != "Quarantine is empty\n" {
			t.Errorf("after delete:\n%s", out)
		}
		if out, errOut, code := c.run("quarantine", "delete"); code == 0 || !strings.Contains(errOut, "requires at least 1 arg(s)") {
			t.Errorf("delete without an id: exit %d\n%s%s", code, out, errOut)
		}
	})
}
