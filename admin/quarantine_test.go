package admin_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
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

// signature is what clamd calls EICAR with the test harness's database
// (its own, not clamav's: "unofficial").
const signature = "Eicar-Test-Signature.UNOFFICIAL"

// virusMail is a message in DATA form with payload in a base64
// attachment, as a mail client sends a file.
func virusMail(subject, payload string) string {
	return "From: sender@remote.test\r\nSubject: " + subject + "\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(payload)) + "\r\n--b--\r\n.\r\n"
}

// maildirFiles lists the messages delivered to a maildir folder.
func maildirFiles(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "new", "*"))
	return files
}

// TestQuarantineAPI: a server whose clamav check (a real clamd)
// quarantines answers 250 to two messages with EICAR attached; neither
// is queued nor delivered, both are listed in the quarantine (check,
// signature, decoded subject, filters, pages) and shown with their
// headers; a released one is delivered to its maildir and leaves the
// quarantine, a deleted one is gone; both are logged; the metrics follow;
// errors are JSON with their status.
func TestQuarantineAPI(t *testing.T) {
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
	api := apiClient{base: "http://" + e.Admin}

	send := func(from, to, body string) string {
		t.Helper()
		c := st.Dial(t, addr)
		c.Expect("250", "EHLO client.test")
		got := c.Send(from, to, body)
		id, ok := strings.CutPrefix(got, "250 2.0.0 OK: queued as ")
		if !ok {
			t.Fatalf("DATA: %s", got)
		}
		return id
	}
	// a clean message goes through: the route delivers
	clean := send("carol@remote.test", "carol@example.test", virusMail("clean", "harmless"))
	st.WaitFor(t, "the clean message in its maildir", func() bool { return len(maildirFiles(filepath.Join(mail, "carol"))) == 1 })
	waitLog(t, e, "delivery sent", clean)

	ids := []string{send("alice@remote.test", "bob@example.test", virusMail("invoice one", st.EICAR))}
	time.Sleep(2 * time.Millisecond) // queue ids order by the millisecond: the second is listed second
	ids = append(ids, send("dave@remote.test", "erin@example.test", virusMail("=?UTF-8?Q?f=C3=BCr?= you", st.EICAR)))
	if ids[0] > ids[1] {
		t.Fatalf("queue ids out of order: %v", ids) // the listing is by id
	}
	for _, id := range ids {
		if l := logsOf(e, "message quarantined", id); len(l) != 1 || l[0]["check"] != "clamav" ||
			l[0]["reason"] != signature {
			t.Errorf("quarantine line of %s: %v", id, l)
		}
	}

	t.Run("not-queued", func(t *testing.T) {
		if l := e.ListQueue(t); l.Total != 0 {
			t.Errorf("queue: %+v", l)
		}
		for _, rcpt := range []string{"bob", "erin"} {
			if f := maildirFiles(filepath.Join(mail, rcpt)); len(f) != 0 {
				t.Errorf("quarantined mail delivered to %s: %v", rcpt, f)
			}
		}
	})

	t.Run("list", func(t *testing.T) {
		var raw map[string]any
		api.json(t, http.MethodGet, "/smtp/quarantine", nil, http.StatusOK, &raw)
		msgs, _ := raw["messages"].([]any)
		if raw["total"] != 2.0 || len(msgs) != 2 {
			t.Fatalf("listing: %v", raw)
		}
		for _, key := range []string{"id", "server", "from", "to", "subject", "check", "reason", "reasons",
			"size", "received", "quarantined_at", "client"} {
			if _, ok := msgs[0].(map[string]any)[key]; !ok {
				t.Errorf("entry has no %q: %v", key, msgs[0])
			}
		}

		var list admin.QuarantineListResponse
		api.json(t, http.MethodGet, "/smtp/quarantine", nil, http.StatusOK, &list)
		if got := quarantinedIDs(list); !slices.Equal(got, ids) {
			t.Fatalf("ids %v, want %v", got, ids)
		}
		for i, subject := range []string{"invoice one", "für you"} {
			m := list.Messages[i]
			if m.Check != "clamav" || m.Reason != signature || len(m.Reasons) != 0 || m.Subject != subject ||
				m.Server != "mx" || m.Size < 200 || m.Client.IP != "127.0.0.1" || time.Since(m.QuarantinedAt) > time.Minute ||
				m.QuarantinedAt.Before(m.Received) {
				t.Errorf("entry %d: %+v", i, m)
			}
		}
		if m := list.Messages[0]; m.From != "alice@remote.test" || !slices.Equal(m.To, []string{"bob@example.test"}) {
			t.Errorf("envelope: %+v", m)
		}
	})

	t.Run("filters", func(t *testing.T) {
		for _, c := range []struct {
			query string
			want  []string
			total int
		}{
			{"sender=Dave@Remote.test", ids[1:], 1},
			{"recipient=bob@example.test", ids[:1], 1},
			{"domain=EXAMPLE.TEST", ids, 2},
			{"domain=example.test&sender=alice@remote.test", ids[:1], 1},
			{"domain=nowhere.test", nil, 0},
			{"limit=1", ids[:1], 2},
			{"limit=1&offset=1", ids[1:], 2},
			{"offset=2", nil, 2},
		} {
			var list admin.QuarantineListResponse
			body := api.json(t, http.MethodGet, "/smtp/quarantine?"+c.query, nil, http.StatusOK, &list)
			if got := quarantinedIDs(list); !slices.Equal(got, c.want) || list.Total != c.total {
				t.Errorf("%s: total %d, ids %v; want %d, %v", c.query, list.Total, got, c.total, c.want)
			}
			if len(c.want) == 0 && !bytes.Contains(body, []byte(`"messages":[]`)) {
				t.Errorf("%s: an empty page is not []: %s", c.query, body)
			}
		}
	})

	t.Run("show", func(t *testing.T) {
		var m admin.QuarantineMessageResponse
		api.json(t, http.MethodGet, "/smtp/quarantine/"+ids[1], nil, http.StatusOK, &m)
		if m.ID != ids[1] || m.From != "dave@remote.test" || m.Check != "clamav" || m.Reason != signature ||
			m.Subject != "für you" {
			t.Errorf("entry: %+v", m.QuarantineEntry)
		}
		if !strings.HasPrefix(m.Headers, "Received: from client.test") ||
			!strings.Contains(m.Headers, "\r\nSubject: =?UTF-8?Q?f=C3=BCr?= you\r\n") ||
			strings.Contains(m.Headers, "see attached") {
			t.Errorf("headers:\n%s", m.Headers)
		}
	})

	t.Run("metrics-quarantined", func(t *testing.T) {
		m := scrape(t, e.Admin)
		expect(t, m, "caddy_smtp_quarantine_messages", nil, 2)
		expect(t, m, "caddy_smtp_quarantined_total", labels{"check": "clamav", "server": "mx"}, 2)
		expect(t, m, "caddy_smtp_messages_total", labels{"server": "mx", "result": "quarantined"}, 2)
		expect(t, m, "caddy_smtp_messages_total", labels{"server": "mx", "result": "accepted"}, 1)
	})

	t.Run("release", func(t *testing.T) {
		var r admin.ReleaseResponse
		api.json(t, http.MethodPost, "/smtp/quarantine/"+ids[0]+"/release", nil, http.StatusOK, &r)
		if r.Released != ids[0] {
			t.Errorf("release: %+v", r)
		}
		box := filepath.Join(mail, "bob")
		st.WaitFor(t, "the released message in bob's maildir", func() bool { return len(maildirFiles(box)) == 1 })
		got, err := os.ReadFile(maildirFiles(box)[0])
		if err != nil {
			t.Fatal(err)
		}
		st.ExpectContains(t, "the released message", got, "Delivered-To: bob@example.test", "Subject: invoice one",
			base64.StdEncoding.EncodeToString([]byte(st.EICAR)))
		if l := waitLog(t, e, "delivery sent", ids[0]); l["to"] != "bob@example.test" {
			t.Errorf("delivery: %v", l)
		}
		if len(logsOf(e, "released from the quarantine by administrator", ids[0])) != 1 {
			t.Error("no release logged")
		}
		api.json(t, http.MethodGet, "/smtp/quarantine/"+ids[0], nil, http.StatusNotFound, nil)
		api.json(t, http.MethodPost, "/smtp/quarantine/"+ids[0]+"/release", nil, http.StatusNotFound, nil)
		var list admin.QuarantineListResponse
		api.json(t, http.MethodGet, "/smtp/quarantine", nil, http.StatusOK, &list)
		if got := quarantinedIDs(list); !slices.Equal(got, ids[1:]) || list.Total != 1 {
			t.Errorf("after release: %v", got)
		}
		e.WaitQueue(t, "an empty queue", func(l st.QueueListing) bool { return l.Total == 0 })
		expect(t, scrape(t, e.Admin), "caddy_smtp_quarantine_messages", nil, 1)
	})

	t.Run("delete", func(t *testing.T) {
		var r admin.DeleteResponse
		api.json(t, http.MethodDelete, "/smtp/quarantine/"+ids[1], nil, http.StatusOK, &r)
		if !slices.Equal(r.Deleted, ids[1:]) {
			t.Errorf("delete: %+v", r)
		}
		if len(logsOf(e, "removed from the quarantine by administrator", ids[1])) != 1 {
			t.Error("no removal logged")
		}
		api.json(t, http.MethodGet, "/smtp/quarantine/"+ids[1], nil, http.StatusNotFound, nil)
		api.json(t, http.MethodDelete, "/smtp/quarantine/"+ids[1], nil, http.StatusNotFound, nil)
		var list admin.QuarantineListResponse
		body := api.json(t, http.MethodGet, "/smtp/quarantine", nil, http.StatusOK, &list)
		if list.Total != 0 || !bytes.Contains(body, []byte(`"messages":[]`)) {
			t.Errorf("after delete: %s", body)
		}
		if f := maildirFiles(filepath.Join(mail, "erin")); len(f) != 0 {
			t.Errorf("deleted mail delivered: %v", f)
		}
		m := scrape(t, e.Admin)
		expect(t, m, "caddy_smtp_quarantine_messages", nil, 0)
		expect(t, m, "caddy_smtp_quarantined_total", labels{"check": "clamav"}, 2)
	})

	t.Run("errors", func(t *testing.T) {
		const unknown = "0000000000000000000"
		for _, c := range []struct {
			method, path   string
			status         int
			allow, message string
		}{
			{"GET", "/smtp/quarantine/" + unknown, 404, "", "no such message in the quarantine: " + unknown},
			{"DELETE", "/smtp/quarantine/" + unknown, 404, "", "no such message in the quarantine"},
			{"POST", "/smtp/quarantine/" + unknown + "/release", 404, "", "no such message in the quarantine"},
			{"GET", "/smtp/quarantine/not!an:id", 404, "", "no such message in the quarantine"},
			{"GET", "/smtp/quarantine/" + unknown + "/resend", 404, "", "resource not found"},
			{"GET", "/smtp/quarantine/" + unknown + "/release/x", 404, "", "resource not found"},
			{"GET", "/smtp/quarantine?limit=abc", 400, "", `invalid limit "abc"`},
			{"GET", "/smtp/quarantine?offset=-1", 400, "", "invalid offset"},
			{"POST", "/smtp/quarantine", 405, "GET", "method not allowed: POST"},
			{"POST", "/smtp/quarantine/" + unknown, 405, "GET, DELETE", "method not allowed"},
			{"GET", "/smtp/quarantine/" + unknown + "/release", 405, "POST", "method not allowed"},
			{"DELETE", "/smtp/quarantine/" + unknown + "/release", 405, "POST", "method not allowed"},
		} {
			status, hdr, body := api.raw(t, c.method, c.path, "")
			var apiErr struct {
				Error string `json:"error"`
			}
			if status != c.status || hdr.Get("Content-Type") != "application/json" ||
				json.Unmarshal(body, &apiErr) != nil || !strings.Contains(apiErr.Error, c.message) {
				t.Errorf("%s %s: %d %s %s; want %d with %q", c.method, c.path, status, hdr.Get("Content-Type"), body, c.status, c.message)
			}
			if c.allow != "" && hdr.Get("Allow") != c.allow {
				t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, hdr.Get("Allow"), c.allow)
			}
		}
	})
}

func quarantinedIDs(l admin.QuarantineListResponse) []string {
	var ids []string
	for _, m := range l.Messages {
		ids = append(ids, m.ID)
	}
	return ids
}
