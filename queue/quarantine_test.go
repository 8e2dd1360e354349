package queue

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// quarantine opens a quarantine beside the rig's spool, as the app does.
func (g *rig) quarantine(t *testing.T) *spool.Spool {
	t.Helper()
	q, err := spool.Open(filepath.Join(g.sp.Dir(), "quarantine"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// quarantined commits a message into q as a check's quarantine verdict
// does, accepted at received.
func quarantined(t *testing.T, q *spool.Spool, from string, rcpts []string, header string, received time.Time) string {
	t.Helper()
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, "Received: from client.test\r\n\tby mx.example.test\r\n"+header+"\r\nbody\r\n")
	env := &spool.Envelope{Server: "mx", From: from, Received: received.UTC(),
		Client:     spool.Client{IP: "192.0.2.1", Helo: "client.test", Protocol: "ESMTP"},
		Quarantine: &spool.Quarantine{Check: "clamav", Reason: "Eicar-Test-Signature", At: received.UTC()}}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, &spool.Recipient{Address: r, Status: spool.StatusQueued})
	}
	if err := d.CommitTo(q, env); err != nil {
		t.Fatal(err)
	}
	return env.ID
}

// TestQuarantineAdmin: quarantined messages are listed (fields, decoded
// subjects, filters, pages) and shown with their header; a release
// moves one into the queue with its quarantine record cleared and its
// arrival time reset, so that one quarantined for longer than max_age
// is delivered rather than bounced as expired; a delete removes one;
// both are logged, and an id not quarantined is ErrNoSuchMessage.
func TestQuarantineAdmin(t *testing.T) {
	g := newRig(t, func(n int, rcpts []string) []delivery.Result { return sent(len(rcpts)) }, Options{MaxAge: time.Hour})
	g.start(t)
	q := g.quarantine(t)
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)

	old := time.Now().Add(-2 * time.Hour) // older than max_age
	a := quarantined(t, q, "a@remote.test", []string{"b@example.test", "c@example.org"},
		"Subject: =?UTF-8?Q?Rechnung_f=C3=BCr?=\r\n =?UTF-8?B?U2llIQ==?=\r\n", old)
	time.Sleep(2 * time.Millisecond) // queue ids order by the millisecond: b is listed after a
	b := quarantined(t, q, "d@remote.test", []string{"e@example.test"}, "subject:  plain\r\n\t text \r\n", time.Now())

	entries, total, err := QuarantineList(q, Filter{}, 0, 0)
	if err != nil || total != 2 || len(entries) != 2 {
		t.Fatalf("list: %d %+v %v", total, entries, err)
	}
	e := entries[0]
	if e.ID != a || e.From != "a@remote.test" || !slices.Equal(e.To, []string{"b@example.test", "c@example.org"}) ||
		e.Subject != "Rechnung fürSie!" || e.Check != "clamav" || e.Reason != "Eicar-Test-Signature" ||
		e.Reasons == nil || e.Server != "mx" || e.Size == 0 || !e.QuarantinedAt.Equal(old.UTC()) ||
		!e.Received.Equal(old.UTC()) || e.Client.IP != "192.0.2.1" {
		t.Errorf("entry: %+v", e)
	}
	if entries[1].ID != b || entries[1].Subject != "plain text" {
		t.Errorf("second entry: %+v", entries[1])
	}
	for _, c := range []struct {
		filter        Filter
		offset, limit int
		want          []string
		total         int
	}{
		{Filter{Sender: "D@Remote.test"}, 0, 0, []string{b}, 1},
		{Filter{Recipient: "c@example.org"}, 0, 0, []string{a}, 1},
		{Filter{Domain: "EXAMPLE.test"}, 0, 0, []string{a, b}, 2},
		{Filter{Domain: "example.org"}, 0, 0, []string{a}, 1},
		{Filter{Domain: "nowhere.test"}, 0, 0, nil, 0},
		{Filter{}, 1, 1, []string{b}, 2},
		{Filter{}, 0, 1, []string{a}, 2},
		{Filter{}, 2, 0, nil, 2},
	} {
		entries, total, err := QuarantineList(q, c.filter, c.offset, c.limit)
		var got []string
		for _, e := range entries {
			got = append(got, e.ID)
		}
		if err != nil || total != c.total || !slices.Equal(got, c.want) {
			t.Errorf("%+v offset %d limit %d: %d %v %v; want %d %v", c.filter, c.offset, c.limit, total, got, err, c.total, c.want)
		}
	}

	e, hdr, err := QuarantineShow(q, a)
	if err != nil || e.ID != a || e.Subject != "Rechnung fürSie!" ||
		!strings.HasPrefix(hdr, "Received: from client.test\r\n\tby mx.example.test\r\nSubject: =?UTF-8?Q?") ||
		strings.Contains(hdr, "body") {
		t.Errorf("show: %+v %q %v", e, hdr, err)
	}
	if _, _, err := QuarantineShow(q, "0000000000000000000"); !errors.Is(err, ErrNoSuchMessage) {
		t.Errorf("show of an unknown id: %v", err)
	}

	if err := QuarantineRelease(q, g.sp, a, log); err != nil {
		t.Fatal(err)
	}
	env, err := g.sp.Load(a)
	if err != nil || env.Quarantine != nil || time.Since(env.Received) > time.Minute || len(env.Recipients) != 2 {
		t.Fatalf("released: %+v %v", env, err)
	}
	if _, err := q.Load(a); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("still quarantined: %v", err)
	}
	g.r.Enqueue(a)
	wait(t, "the released message delivered", func() bool { return g.gone(a) })
	var to []string
	for _, c := range g.t.Calls() {
		if c.id == a {
			to = append(to, c.rcpts...)
		}
	}
	slices.Sort(to)
	if !slices.Equal(to, []string{"b@example.test", "c@example.org"}) {
		t.Errorf("released message delivered to %v, want each recipient once", to)
	}
	if bs := g.bounces(t); len(bs) != 0 {
		t.Errorf("bounces: %v", bs)
	}
	if err := QuarantineRelease(q, g.sp, a, log); !errors.Is(err, ErrNoSuchMessage) {
		t.Errorf("second release: %v", err)
	}

	if err := QuarantineDelete(q, b, log); err != nil {
		t.Fatal(err)
	}
	if err := QuarantineDelete(q, b, log); !errors.Is(err, ErrNoSuchMessage) {
		t.Errorf("second delete: %v", err)
	}
	if err := QuarantineDelete(q, "not an id", log); !errors.Is(err, ErrNoSuchMessage) {
		t.Errorf("delete of an invalid id: %v", err)
	}
	if _, total, err := QuarantineList(q, Filter{}, 0, 0); err != nil || total != 0 {
		t.Errorf("after release and delete: %d %v", total, err)
	}
	for id, msg := range map[string]string{a: "released from the quarantine by administrator", b: "removed from the quarantine by administrator"} {
		l := logs.FilterMessage(msg).All()
		if len(l) != 1 || l[0].ContextMap()["queue_id"] != id {
			t.Errorf("%q lines: %v", msg, l)
		}
	}
}

// TestSubject: the Subject of a header section, unfolded and decoded.
func TestSubject(t *testing.T) {
	for _, c := range []struct{ header, want string }{
		{"Subject: hello\r\n", "hello"},
		{"From: a@b\r\nSUBJECT : spaced name\r\nTo: c@d\r\n", "spaced name"},
		{"Subject: folded\r\n  over\r\n\tlines\r\nTo: c@d\r\n", "folded over lines"},
		{"Subject: =?ISO-8859-1?Q?caf=E9?=\r\n", "café"},
		{"Subject: =?utf-8?b?8J+Sjg==?= and text\r\n", "💎 and text"},
		{"Subject: =?x-unknown?Q?abc?=\r\n", "=?x-unknown?Q?abc?="},
		{"Subject: first\r\nSubject: second\r\n", "first"},
		{"Subject: raw \xff byte\r\n", "raw \uFFFD byte"},
		{"X-Subject: no\r\nTo: c@d\r\n", ""},
		{"", ""},
		{"Subject: cut at the bound", "cut at the bound"},
	} {
		if got := subject(c.header); got != c.want {
			t.Errorf("subject(%q) = %q, want %q", c.header, got, c.want)
		}
	}
}
