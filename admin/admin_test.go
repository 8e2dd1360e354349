package admin_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/caddy-smtp/caddy-smtp/admin"
	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// TestQueueAPI drives the queue endpoints of a real Caddy: mail queued
// at a deferring upstream is listed (fields, filters, pages), shown
// with its headers, flushed once its next hop recovers, deleted while
// it is being delivered (the record never comes back), and bounced to
// its sender; errors are JSON with their status; /metrics moves along.
func TestQueueAPI(t *testing.T) {
	e := st.NewEnv(t)
	// The sender's domain (example.test) reaches the sink: bounces
	// arrive there. slow.test always defers; inflight.test takes 3s
	// to answer DATA; later.test defers first and recovers later (two
	// upstreams, one after the other, on one address).
	sink := st.NewUpstream(t, st.UpstreamOpts{})
	deferrer := st.NewUpstream(t, st.UpstreamOpts{RcptErr: st.Greylisted})
	inflight := st.NewUpstream(t, st.UpstreamOpts{DataWait: 3 * time.Second})
	later := st.FreeAddr(t)
	// Deferred mail waits an hour: only a flush brings it back sooner.
	addr := e.LoadRelayGateway(
		st.DomainRelayRoute("later.test", later),
		st.DomainRelayRoute("slow.test", deferrer.Addr),
		st.DomainRelayRoute("inflight.test", inflight.Addr),
		st.DomainRelayRoute("*", sink.Addr))
	api := apiClient{base: "http://" + e.Admin}

	var ids []string
	if !t.Run("queue-deferred", func(t *testing.T) {
		// closed when this subtest ends
		st.NewUpstream(t, st.UpstreamOpts{ListenAddr: later, RcptErr: st.Greylisted})
		ids = append(ids,
			st.Submit(t, addr, "alice@example.test", "bob@later.test", st.NamedMessage("one")),
			st.Submit(t, addr, "alice@example.test", "carol@later.test", st.NamedMessage("two")),
			st.Submit(t, addr, "dave@example.test", "erin@slow.test", st.NamedMessage("three")))
		e.ExpectDeferred(t, ids...)
		// the deferrals are logged before they are recorded
		e.WaitQueue(t, "three deferrals recorded", func(l st.QueueListing) bool {
			return l.Total == 3 && l.AllDeferred(1)
		})
	}) {
		t.FailNow()
	}

	t.Run("list", func(t *testing.T) {
		var raw map[string]any
		api.json(t, http.MethodGet, "/smtp/queue", nil, http.StatusOK, &raw)
		msgs, _ := raw["messages"].([]any)
		if raw["total"] != 3.0 || len(msgs) != 3 {
			t.Fatalf("listing: %v", raw)
		}
		first := msgs[0].(map[string]any)
		for _, key := range []string{"id", "server", "sender", "recipients", "size", "received",
			"age_seconds", "attempts", "last_error", "next_attempt", "client"} {
			if _, ok := first[key]; !ok {
				t.Errorf("entry has no %q: %v", key, first)
			}
		}

		var list admin.QueueListResponse
		api.json(t, http.MethodGet, "/smtp/queue", nil, http.StatusOK, &list)
		if got := entryIDs(list); !slices.Equal(got, ids) {
			t.Fatalf("ids %v, want %v (oldest first)", got, ids)
		}
		m := list.Messages[0]
		if m.Sender != "alice@example.test" || m.Server != "gw" || m.Size < 50 ||
			m.Attempts != 1 || !strings.Contains(m.LastError, "451 4.7.1 greylisted") ||
			m.AgeSeconds < 0 || m.AgeSeconds > 60 || time.Since(m.Received) > time.Minute ||
			m.NextAttempt == nil || time.Until(*m.NextAttempt) < 30*time.Minute {
			t.Errorf("entry: %+v", m)
		}
		if len(m.Recipients) != 1 {
			t.Fatalf("recipients: %+v", m.Recipients)
		}
		r := m.Recipients[0]
		if r.Address != "bob@later.test" || r.Status != "deferred" || r.Attempts != 1 ||
			r.Code != "4.7.1" || !strings.Contains(r.Remote, later[strings.LastIndex(later, ":"):]) {
			t.Errorf("recipient: %+v", r)
		}
		if m.Client.IP != "127.0.0.1" {
			t.Errorf("client: %+v", m.Client)
		}
	})

	t.Run("filter-and-pages", func(t *testing.T) {
		for _, c := range []struct {
			query string
			want  []string
			total int
		}{
			{"domain=later.test", ids[:2], 2},
			{"domain=LATER.TEST", ids[:2], 2},
			{"sender=dave@example.test", ids[2:], 1},
			{"recipient=Carol@Later.test", ids[1:2], 1},
			{"sender=alice@example.test&domain=slow.test", nil, 0},
			{"domain=nowhere.test", nil, 0},
			{"limit=1&offset=1", ids[1:2], 3},
			{"limit=2", ids[:2], 3},
			{"offset=2", ids[2:], 3},
			{"offset=5", nil, 3},
			{"domain=later.test&limit=1&offset=1", ids[1:2], 2},
		} {
			var list admin.QueueListResponse
			body := api.json(t, http.MethodGet, "/smtp/queue?"+c.query, nil, http.StatusOK, &list)
			if got := entryIDs(list); !slices.Equal(got, c.want) || list.Total != c.total {
				t.Errorf("%s: total %d, ids %v; want %d, %v", c.query, list.Total, got, c.total, c.want)
			}
			if len(c.want) == 0 && !bytes.Contains(body, []byte(`"messages":[]`)) {
				t.Errorf("%s: an empty page is not []: %s", c.query, body)
			}
		}
	})

	t.Run("show", func(t *testing.T) {
		var m admin.MessageResponse
		api.json(t, http.MethodGet, "/smtp/queue/"+ids[0], nil, http.StatusOK, &m)
		if m.ID != ids[0] || m.Sender != "alice@example.test" || len(m.Recipients) != 1 {
			t.Errorf("entry: %+v", m.Entry)
		}
		if !strings.HasPrefix(m.Headers, "Received: from ") ||
			!strings.Contains(m.Headers, "\r\nSubject: one\r\n") ||
			!strings.Contains(m.Headers, "Message-ID: <one@example.test>") ||
			strings.Contains(m.Headers, "body of one") {
			t.Errorf("headers:\n%s", m.Headers)
		}
	})

	t.Run("metrics-deferred", func(t *testing.T) {
		m := scrape(t, e.Admin)
		expect(t, m, "caddy_smtp_messages_total", labels{"server": "gw", "result": "accepted"}, 3)
		expect(t, m, "caddy_smtp_delivery_attempts_total", labels{"server": "gw", "result": "deferred", "via": "relay", "tls": "none"}, 3)
		expect(t, m, "caddy_smtp_delivery_attempts_total", labels{"result": "sent"}, 0)
		expect(t, m, "caddy_smtp_queue_messages", nil, 3)
		if age := value(m, "caddy_smtp_queue_oldest_age_seconds", nil); age <= 0 || age > 60 {
			t.Errorf("oldest age %v", age)
		}
		// the exposition as a scraper sees it
		text := string(api.do(t, http.MethodGet, "/metrics", nil, http.StatusOK))
		for _, line := range []string{
			`caddy_smtp_messages_total{reason="",result="accepted",server="gw"} 3`,
			`caddy_smtp_delivery_attempts_total{result="deferred",server="gw",tls="none",via="relay"} 3`,
			`caddy_smtp_queue_messages 3`,
		} {
			if !strings.Contains(text, "\n"+line+"\n") {
				t.Errorf("no line %q in /metrics", line)
			}
		}
	})

	good := st.NewUpstream(t, st.UpstreamOpts{ListenAddr: later})

	t.Run("flush-one", func(t *testing.T) {
		var r admin.FlushResponse
		api.json(t, http.MethodPost, "/smtp/queue/"+ids[0]+"/flush", nil, http.StatusOK, &r)
		if r.Flushed != 1 {
			t.Errorf("flushed %d", r.Flushed)
		}
		waitLog(t, e, "delivery sent", ids[0])
		got := good.WaitMessages(t, 1, 10*time.Second)
		if !slices.Equal(got[0].To, []string{"bob@later.test"}) {
			t.Errorf("delivered to %v", got[0].To)
		}
		e.WaitQueue(t, ids[0]+" gone", func(l st.QueueListing) bool { return l.Total == 2 })
		// the other later.test message was not flushed: still waiting
		// (a sleep: nothing else arrives in this time)
		time.Sleep(300 * time.Millisecond)
		if n := len(good.Received()); n != 1 {
			t.Errorf("%d messages delivered, want 1", n)
		}
		api.json(t, http.MethodGet, "/smtp/queue/"+ids[0], nil, http.StatusNotFound, nil)
	})

	t.Run("flush-all", func(t *testing.T) {
		var r admin.FlushResponse
		api.json(t, http.MethodPost, "/smtp/queue/flush", nil, http.StatusOK, &r)
		if r.Flushed != 2 {
			t.Errorf("flushed %d, want 2", r.Flushed)
		}
		waitLog(t, e, "delivery sent", ids[1])
		good.WaitMessages(t, 2, 10*time.Second)
		// slow.test is still down: tried again, deferred again
		list := e.WaitQueue(t, "only "+ids[2]+", deferred twice", func(l st.QueueListing) bool {
			return l.Total == 1 && l.AllDeferred(2)
		})
		if got := list.IDs(); !slices.Equal(got, ids[2:]) {
			t.Errorf("after flush: %v", got)
		}
		if n := len(logsOf(e, "delivery deferred", ids[2])); n != 2 {
			t.Errorf("%d deferrals of %s logged, want 2", n, ids[2])
		}
		m := scrape(t, e.Admin)
		expect(t, m, "caddy_smtp_delivery_attempts_total", labels{"result": "sent"}, 2)
		expect(t, m, "caddy_smtp_delivery_attempts_total", labels{"result": "deferred"}, 4)
		expect(t, m, "caddy_smtp_queue_messages", nil, 1)
	})

	t.Run("delete-in-flight", func(t *testing.T) {
		// One recipient defers at once; the other's delivery is in
		// DATA for 3s, during which the message is deleted. When the
		// delivery ends, the runner records the deferral: that update
		// must not bring the record back.
		id := st.SubmitToAll(t, addr, "frank@example.test", []string{"x@slow.test", "y@inflight.test"}, st.NamedMessage("four"))
		st.WaitFor(t, "the delivery to inflight.test in DATA", func() bool {
			inflight.Mu.Lock()
			defer inflight.Mu.Unlock()
			return inflight.MaxActive > 0
		})
		var r admin.DeleteResponse
		api.json(t, http.MethodDelete, "/smtp/queue/"+id, nil, http.StatusOK, &r)
		if !slices.Equal(r.Deleted, []string{id}) || len(r.NotFound) != 0 {
			t.Errorf("delete: %+v", r)
		}
		api.json(t, http.MethodGet, "/smtp/queue/"+id, nil, http.StatusNotFound, nil)
		if l := waitLog(t, e, "delivery sent", id); l["to"] != "y@inflight.test" {
			t.Errorf("delivery: %v", l)
		}
		if l := logsOf(e, "delivery deferred", id); len(l) != 1 || l[0]["to"] != "x@slow.test" {
			t.Errorf("deferral: %v", l)
		}
		if len(logsOf(e, "removed by administrator", id)) != 1 {
			t.Error("no removal logged")
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			for _, ext := range []string{".rec", ".json"} {
				if _, err := os.Stat(filepath.Join(e.SpoolDir(), id+ext)); err == nil {
					t.Fatalf("%s%s is back in the spool", id, ext)
				}
			}
			time.Sleep(50 * time.Millisecond) // looking again, for the whole second: they never come back
		}
		if l := e.LogLines("recording delivery results"); len(l) != 0 {
			t.Errorf("runner error: %v", l)
		}
		var list admin.QueueListResponse
		api.json(t, http.MethodGet, "/smtp/queue", nil, http.StatusOK, &list)
		if got := entryIDs(list); !slices.Equal(got, ids[2:]) {
			t.Errorf("queue after delete: %v", got)
		}
	})

	t.Run("delete-many", func(t *testing.T) {
		a := st.Submit(t, addr, "gina@example.test", "h@slow.test", st.NamedMessage("five"))
		b := st.Submit(t, addr, "gina@example.test", "i@slow.test", st.NamedMessage("six"))
		var r admin.DeleteResponse
		api.json(t, http.MethodPost, "/smtp/queue/delete", admin.DeleteRequest{IDs: []string{a, "0000000000000000000", b}},
			http.StatusOK, &r)
		if !slices.Equal(r.Deleted, []string{a, b}) || !slices.Equal(r.NotFound, []string{"0000000000000000000"}) {
			t.Errorf("delete: %+v", r)
		}
		for _, id := range []string{a, b} {
			api.json(t, http.MethodGet, "/smtp/queue/"+id, nil, http.StatusNotFound, nil)
		}
	})

	t.Run("bounce", func(t *testing.T) {
		var r admin.BounceResponse
		api.json(t, http.MethodPost, "/smtp/queue/"+ids[2]+"/bounce", nil, http.StatusOK, &r)
		if r.Bounced != ids[2] {
			t.Errorf("bounce: %+v", r)
		}
		dsn := sink.WaitBounce(t, "dave@example.test", "<three@example.test>")
		st.ExpectContains(t, "bounce", dsn.Data, "Final-Recipient: rfc822; erin@slow.test", "Status: 5.0.0",
			"returned to sender by the administrator", "Subject: three")
		api.json(t, http.MethodGet, "/smtp/queue/"+ids[2], nil, http.StatusNotFound, nil)
		m := scrape(t, e.Admin)
		expect(t, m, "caddy_smtp_delivery_attempts_total", labels{"result": "bounced"}, 1)
		st.WaitFor(t, "an empty queue", func() bool {
			return value(scrape(t, e.Admin), "caddy_smtp_queue_messages", nil) == 0
		})
	})

	t.Run("errors", func(t *testing.T) {
		const unknown = "0000000000000000000"
		for _, c := range []struct {
			method, path, body string
			status             int
			allow, message     string
		}{
			{"GET", "/smtp/queue/" + unknown, "", 404, "", "no such message in the queue: " + unknown},
			{"DELETE", "/smtp/queue/" + unknown, "", 404, "", "no such message"},
			{"POST", "/smtp/queue/" + unknown + "/flush", "", 404, "", "no such message"},
			{"POST", "/smtp/queue/" + unknown + "/bounce", "", 404, "", "no such message"},
			{"GET", "/smtp/queue/not!an:id", "", 404, "", "no such message"},
			{"GET", "/smtp/nothing", "", 404, "", "resource not found"},
			{"GET", "/smtp/queue/" + unknown + "/resend", "", 404, "", "resource not found"},
			{"GET", "/smtp/queue?limit=abc", "", 400, "", `invalid limit "abc"`},
			{"GET", "/smtp/queue?limit=-1", "", 400, "", "invalid limit"},
			{"GET", "/smtp/queue?offset=1.5", "", 400, "", "invalid offset"},
			{"POST", "/smtp/queue/delete", "not json", 400, "", "decoding request body"},
			{"POST", "/smtp/queue/delete", `{"ids": []}`, 400, "", "no queue ids"},
			{"POST", "/smtp/queue/delete", `{"idz": ["x"]}`, 400, "", "unknown field"},
			{"POST", "/smtp/queue", "", 405, "GET", "method not allowed: POST"},
			{"PUT", "/smtp/queue/" + unknown, "", 405, "GET, DELETE", "method not allowed"},
			{"GET", "/smtp/queue/flush", "", 405, "POST", "method not allowed"},
			{"DELETE", "/smtp/queue/delete", "", 405, "POST", "method not allowed"},
			{"GET", "/smtp/queue/" + unknown + "/bounce", "", 405, "POST", "method not allowed"},
			{"GET", "/smtp/queue/" + unknown + "/flush", "", 405, "POST", "method not allowed"},
		} {
			status, hdr, body := api.raw(t, c.method, c.path, c.body)
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

	t.Run("no-smtp-app", func(t *testing.T) {
		cfg := fmt.Sprintf(`{"admin": {"listen": %q, "config": {"persist": false}}}`, e.Admin)
		if err := caddy.Load([]byte(cfg), true); err != nil {
			t.Fatal(err)
		}
		st.WaitFor(t, "a 503", func() bool {
			status, _, _ := api.raw(t, http.MethodGet, "/smtp/queue", "")
			return status == http.StatusServiceUnavailable
		})
		status, _, body := api.raw(t, http.MethodPost, "/smtp/queue/flush", "")
		if status != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("no smtp app is running")) {
			t.Errorf("flush without an smtp app: %d %s", status, body)
		}
	})
}

// TestHoldListed: a queue on hold says so in its listing.
func TestHoldListed(t *testing.T) {
	e := st.NewEnv(t)
	addr := e.LoadPlainServer() // its queue is on hold
	id := st.Submit(t, addr, "a@remote.test", "b@example.test", st.NamedMessage("held"))
	api := apiClient{base: "http://" + e.Admin}
	var list admin.QueueListResponse
	api.json(t, http.MethodGet, "/smtp/queue", nil, http.StatusOK, &list)
	if !list.Hold || !slices.Equal(entryIDs(list), []string{id}) || list.Messages[0].Recipients[0].Status != "queued" ||
		list.Messages[0].NextAttempt != nil || list.Messages[0].Attempts != 0 {
		t.Errorf("listing: %+v", list)
	}
	var r admin.FlushResponse
	api.json(t, http.MethodPost, "/smtp/queue/flush", nil, http.StatusOK, &r)
	if r.Flushed != 1 {
		t.Errorf("flush: %+v", r)
	}
	expect(t, scrape(t, e.Admin), "caddy_smtp_queue_messages", nil, 1)
}

func entryIDs(l admin.QueueListResponse) []string {
	var ids []string
	for _, m := range l.Messages {
		ids = append(ids, m.ID)
	}
	return ids
}

// apiClient calls the admin API.
type apiClient struct {
	base string
}

func (c apiClient) raw(t *testing.T, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// do sends a request with an optional JSON body and checks the status.
func (c apiClient) do(t *testing.T, method, path string, body any, status int) []byte {
	t.Helper()
	var b string
	if body != nil {
		enc, _ := json.Marshal(body)
		b = string(enc)
	}
	got, _, resp := c.raw(t, method, path, b)
	if got != status {
		t.Fatalf("%s %s: %d %s, want %d", method, path, got, resp, status)
	}
	return resp
}

// json is do, decoding the response into v (if not nil).
func (c apiClient) json(t *testing.T, method, path string, body any, status int, v any) []byte {
	t.Helper()
	resp := c.do(t, method, path, body, status)
	if v != nil {
		if err := json.Unmarshal(resp, v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, resp)
		}
	}
	return resp
}

type labels map[string]string

// scrape reads the admin endpoint's /metrics with Prometheus's parser.
func scrape(t *testing.T, adminAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value sums the series of a counter or gauge whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want labels) float64 {
	var sum float64
	f := fams[name]
	if f == nil {
		return 0
	}
metrics:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue metrics
			}
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}

func expect(t *testing.T, fams map[string]*dto.MetricFamily, name string, want labels, v float64) {
	t.Helper()
	if fams[name] == nil && v != 0 {
		t.Errorf("no metric %s", name)
		return
	}
	if got := value(fams, name, want); got != v {
		t.Errorf("%s%v = %v, want %v", name, want, got, v)
	}
}

// logsOf returns the log lines with msg about queue id.
func logsOf(e *st.Env, msg, id string) []map[string]any {
	var out []map[string]any
	for _, l := range e.LogLines(msg) {
		if l["queue_id"] == id {
			out = append(out, l)
		}
	}
	return out
}

func waitLog(t *testing.T, e *st.Env, msg, id string) map[string]any {
	t.Helper()
	var l []map[string]any
	st.WaitFor(t, fmt.Sprintf("%q about %s", msg, id), func() bool {
		l = logsOf(e, msg, id)
		return len(l) > 0
	})
	return l[0]
}
