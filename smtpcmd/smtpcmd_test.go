package smtpcmd_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/admin"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// binDir holds the caddy binary the tests build; removed at the end.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildCaddy builds this repository's cmd/caddy (Caddy with the plugin,
// so with this command) once per test binary.
var buildCaddy = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "caddy-smtp-cmd-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/caddy-smtp/caddy-smtp/cmd/caddy").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// cli runs `caddy smtp-queue ...` against an admin address.
type cli struct {
	t     *testing.T
	bin   string
	admin string
}

// run runs the command with --address and returns its stdout, stderr
// and exit status.
func (c cli) run(args ...string) (string, string, int) {
	c.t.Helper()
	return c.runEnv(nil, append(args, "--address", c.admin)...)
}

func (c cli) runEnv(env []string, args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"smtp-queue"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = c.t.TempDir() // no adjacent Caddyfile
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
		code = exitErr.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// in returns the cli for a subtest.
func (c cli) in(t *testing.T) cli {
	c.t = t
	return c
}

// ok runs the command and fails the test unless it succeeds.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("caddy smtp-queue %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// TestSMTPQueueCommand runs the caddy binary's smtp-queue command
// against an in-process Caddy whose queue holds deferred mail.
func TestSMTPQueueCommand(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	e := st.NewEnv(t)
	sink := st.NewUpstream(t, st.UpstreamOpts{})
	deferrer := st.NewUpstream(t, st.UpstreamOpts{RcptErr: st.Greylisted})
	later := st.FreeAddr(t)
	addr := e.LoadRelayGateway(
		st.DomainRelayRoute("later.test", later),
		st.DomainRelayRoute("slow.test", deferrer.Addr),
		st.DomainRelayRoute("*", sink.Addr))
	c := cli{t: t, bin: bin, admin: e.Admin}

	if out := c.ok("list"); out != "Mail queue is empty\n" {
		t.Fatalf("empty queue:\n%s", out)
	}

	var ids []string
	if !t.Run("queue-deferred", func(t *testing.T) {
		st.NewUpstream(t, st.UpstreamOpts{ListenAddr: later, RcptErr: st.Greylisted}) // closed when this subtest ends
		ids = append(ids,
			st.Submit(t, addr, "alice@example.test", "bob@later.test", st.NamedMessage("one")),
			st.Submit(t, addr, "alice@example.test", "carol@later.test", st.NamedMessage("two")),
			// two recipients with the same error: one reason line for both
			st.SubmitToAll(t, addr, "dave@example.test", []string{"erin@slow.test", "frank@slow.test"}, st.NamedMessage("three")))
		e.ExpectDeferred(t, ids...)
		// the deferrals are logged before they are recorded
		e.WaitQueue(t, "every deferral recorded", func(l st.QueueListing) bool {
			return l.Total == 3 && l.AllDeferred(1)
		})
	}) {
		t.FailNow()
	}

	var list admin.QueueListResponse
	t.Run("list-json", func(t *testing.T) {
		c := c.in(t)
		if err := json.Unmarshal([]byte(c.ok("list", "--json")), &list); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range list.Messages {
			got = append(got, m.ID)
		}
		if list.Total != 3 || !slices.Equal(got, ids) {
			t.Fatalf("list --json: total %d, %v; want %v", list.Total, got, ids)
		}
	})
	if len(list.Messages) != 3 {
		t.FailNow()
	}

	t.Run("list", func(t *testing.T) {
		c := c.in(t)
		out := c.ok("list")
		t.Logf("caddy smtp-queue list:\n%s", out)
		var want strings.Builder
		want.WriteString("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n")
		var size int64
		for _, m := range list.Messages {
			size += m.Size
			want.WriteString(idLine(m.ID, m.Size, m.Received, m.Sender))
			reason := m.Recipients[0].LastError
			if !strings.Contains(reason, "451 4.7.1 greylisted, try again later") {
				t.Errorf("last error %q", reason)
			}
			want.WriteString("(" + reason + ")\n")
			for _, r := range m.Recipients {
				want.WriteString(strings.Repeat(" ", 41) + r.Address + "\n")
			}
			want.WriteString("\n")
		}
		fmt.Fprintf(&want, "-- %d Kbytes in 3 Requests.\n", size/1024)
		if out != want.String() {
			t.Errorf("got:\n%s\nwant:\n%s", out, want.String())
		}
	})

	t.Run("list-filters", func(t *testing.T) {
		c := c.in(t)
		out := c.ok("list", "--domain", "later.test")
		if strings.Count(out, "@later.test\n") != 2 || strings.Contains(out, "slow.test") ||
			!strings.HasSuffix(out, " Kbytes in 2 Requests.\n") {
			t.Errorf("--domain later.test:\n%s", out)
		}
		out = c.ok("list", "--sender", "dave@example.test")
		if !strings.Contains(out, ids[2]) || strings.Contains(out, ids[0]) || !strings.HasSuffix(out, " Kbytes in 1 Request.\n") {
			t.Errorf("--sender:\n%s", out)
		}
		out = c.ok("list", "--recipient", "carol@later.test")
		if !strings.Contains(out, ids[1]) || strings.Count(out, "\n\n") != 1 {
			t.Errorf("--recipient:\n%s", out)
		}
		if out := c.ok("list", "--sender", "nobody@example.test"); out != "No matching messages in the queue\n" {
			t.Errorf("no match:\n%s", out)
		}
		out = c.ok("list", "--limit", "1", "--offset", "1")
		if !strings.Contains(out, ids[1]) || strings.Contains(out, ids[0]) || strings.Contains(out, ids[2]) ||
			!strings.Contains(out, "\n-- 1 of 3 Requests shown (offset 1); more with --offset 2\n") ||
			!strings.HasSuffix(out, " Kbytes in 1 Request.\n") {
			t.Errorf("--limit 1 --offset 1:\n%s", out)
		}
		var page admin.QueueListResponse
		if err := json.Unmarshal([]byte(c.ok("list", "--json", "--limit", "2")), &page); err != nil ||
			page.Total != 3 || len(page.Messages) != 2 || page.Limit != 2 {
			t.Errorf("--json --limit 2: %+v %v", page, err)
		}
	})

	t.Run("admin-address", func(t *testing.T) {
		c := c.in(t)
		// from the config file, as caddy stop / reload find it
		cfg := filepath.Join(t.TempDir(), "caddy.json")
		os.WriteFile(cfg, fmt.Appendf(nil, `{"admin": {"listen": %q}}`, e.Admin), 0o600)
		if out, errOut, code := c.runEnv(nil, "list", "--config", cfg); code != 0 || !strings.Contains(out, ids[0]) {
			t.Errorf("--config: exit %d\n%s%s", code, out, errOut)
		}
		// from CADDY_ADMIN, Caddy's default
		if out, errOut, code := c.runEnv([]string{"CADDY_ADMIN=" + e.Admin}, "list"); code != 0 || !strings.Contains(out, ids[0]) {
			t.Errorf("CADDY_ADMIN: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("show", func(t *testing.T) {
		c := c.in(t)
		out := c.ok("show", ids[2])
		t.Logf("caddy smtp-queue show:\n%s", out)
		for _, want := range []string{
			"Queue ID:      " + ids[2] + "\n",
			"Server:        gw\n",
			"Sender:        dave@example.test\n",
			"Client:        127.0.0.1 (helo client.test) ESMTP\n",
			"Attempts:      1\n",
			"Recipients:\n  erin@slow.test  deferred, 1 attempt, next ",
			"\n    (" + list.Messages[2].Recipients[0].LastError + ")\n",
			"\n  frank@slow.test  deferred, 1 attempt",
			"Headers:\nReceived: from client.test",
			"\nSubject: three\n",
			"\nMessage-ID: <three@example.test>\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("show: no %q in\n%s", want, out)
			}
		}
		if strings.Contains(out, "body of three") || strings.Contains(out, "\r") {
			t.Errorf("show: body or CR in\n%s", out)
		}
		var m admin.MessageResponse
		if err := json.Unmarshal([]byte(c.ok("show", "--json", ids[2])), &m); err != nil ||
			m.ID != ids[2] || len(m.Recipients) != 2 || !strings.Contains(m.Headers, "Subject: three\r\n") {
			t.Errorf("show --json: %+v %v", m, err)
		}
		out, errOut, code := c.run("show", "0000000000000000000")
		if code != 1 || out != "" || !strings.Contains(errOut, "HTTP 404") || !strings.Contains(errOut, "no such message in the queue") {
			t.Errorf("show of an unknown id: exit %d\n%s%s", code, out, errOut)
		}
		if _, errOut, code := c.run("show"); code == 0 || !strings.Contains(errOut, "accepts 1 arg(s), received 0") {
			t.Errorf("show without an id: exit %d %s", code, errOut)
		}
	})

	good := st.NewUpstream(t, st.UpstreamOpts{ListenAddr: later})

	t.Run("flush", func(t *testing.T) {
		c := c.in(t)
		if out := c.ok("flush", ids[0]); out != "Flushed: "+ids[0]+"\n" {
			t.Errorf("flush <id>: %q", out)
		}
		good.WaitMessages(t, 1, 10*time.Second)
		e.WaitQueue(t, ids[0]+" gone", func(l st.QueueListing) bool { return l.Total == 2 })
		if out := c.ok("flush"); out != "Flushed: 2 messages\n" {
			t.Errorf("flush: %q", out)
		}
		got := good.WaitMessages(t, 2, 10*time.Second)
		if !slices.Equal(got[0].To, []string{"bob@later.test"}) || !slices.Equal(got[1].To, []string{"carol@later.test"}) {
			t.Errorf("delivered: %v, %v", got[0].To, got[1].To)
		}
		e.WaitQueue(t, "only "+ids[2]+", deferred twice", func(l st.QueueListing) bool {
			return l.Total == 1 && l.AllDeferred(2)
		})
		out := c.ok("list")
		if strings.Contains(out, ids[0]) || strings.Contains(out, ids[1]) || !strings.Contains(out, ids[2]) {
			t.Errorf("after flush:\n%s", out)
		}
		var r admin.FlushResponse
		if err := json.Unmarshal([]byte(c.ok("flush", "--json")), &r); err != nil || r.Flushed != 1 {
			t.Errorf("flush --json: %+v %v", r, err)
		}
		if out, errOut, code := c.run("flush", "0000000000000000000"); code != 1 || out != "" || !strings.Contains(errOut, "HTTP 404") {
			t.Errorf("flush of an unknown id: exit %d\n%s%s", code, out, errOut)
		}
	})

	t.Run("delete", func(t *testing.T) {
		c := c.in(t)
		a := st.Submit(t, addr, "gina@example.test", "h@slow.test", st.NamedMessage("four"))
		b := st.Submit(t, addr, "gina@example.test", "i@slow.test", st.NamedMessage("five"))
		if out := c.ok("delete", a); out != "Deleted: 1 message\n" {
			t.Errorf("delete <id>: %q", out)
		}
		out, errOut, code := c.run("delete", "--json", b, "0000000000000000000")
		var r admin.DeleteResponse
		if code != 1 || json.Unmarshal([]byte(out), &r) != nil ||
			!slices.Equal(r.Deleted, []string{b}) || !slices.Equal(r.NotFound, []string{"0000000000000000000"}) ||
			!strings.Contains(errOut, "no such message in the queue: 0000000000000000000") {
			t.Errorf("delete --json with an unknown id: exit %d\n%s%s", code, out, errOut)
		}
		if out := c.ok("list"); strings.Contains(out, a) || strings.Contains(out, b) {
			t.Errorf("after delete:\n%s", out)
		}
	})

	t.Run("bounce", func(t *testing.T) {
		c := c.in(t)
		if out := c.ok("bounce", ids[2]); out != "Bounced: "+ids[2]+"\n" {
			t.Errorf("bounce: %q", out)
		}
		dsn := sink.WaitBounce(t, "dave@example.test", "<three@example.test>")
		st.ExpectContains(t, "bounce", dsn.Data, "Final-Recipient: rfc822; erin@slow.test", "Final-Recipient: rfc822; frank@slow.test",
			"Status: 5.0.0", "returned to sender by the administrator")
		if out, errOut, code := c.run("bounce", ids[2]); code != 1 || !strings.Contains(errOut, "HTTP 404") {
			t.Errorf("second bounce: exit %d\n%s%s", code, out, errOut)
		}
		st.WaitFor(t, "an empty queue", func() bool {
			out, _, _ := c.run("list")
			return out == "Mail queue is empty\n"
		})
	})

	t.Run("unreachable", func(t *testing.T) {
		c := c.in(t)
		dead := st.FreeAddr(t)
		out, errOut, code := c.runEnv(nil, "list", "--address", dead)
		if code != 1 || out != "" || !strings.Contains(errOut, "connection refused") {
			t.Errorf("no admin API: exit %d\n%s%s", code, out, errOut)
		}
	})
}

// TestHoldMark: a queue on hold is marked as Postfix marks held mail.
func TestHoldMark(t *testing.T) {
	bin, err := buildCaddy()
	if err != nil {
		t.Fatal(err)
	}
	e := st.NewEnv(t)
	addr := e.LoadPlainServer() // its queue is on hold
	id := st.Submit(t, addr, "", "b@example.test", st.NamedMessage("held"))
	out := cli{t: t, bin: bin, admin: e.Admin}.ok("list")
	lines := strings.Split(out, "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[1], id+"! ") || !strings.HasSuffix(lines[1], "  MAILER-DAEMON") ||
		lines[2] != strings.Repeat(" ", 41)+"b@example.test" {
		t.Errorf("held:\n%s", out)
	}
}

func idLine(id string, size int64, received time.Time, sender string) string {
	return fmt.Sprintf("%s  %7d %s  %s\n", id, size, received.Local().Format("Mon Jan _2 15:04:05"), sender)
}
