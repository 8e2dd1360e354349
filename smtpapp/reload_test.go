package smtpapp

import (
	"testing"
	"time"

	st "github.com/caddy-smtp/caddy-smtp/internal/smtptest"
)

// upstreamBusy waits until the upstream is inside a DATA of ours.
func upstreamBusy(t *testing.T, u *st.Upstream) {
	t.Helper()
	busy := st.Eventually(20*time.Second, func() bool {
		u.Mu.Lock()
		defer u.Mu.Unlock()
		return u.MaxActive > 0
	})
	if !busy {
		t.Fatal("no delivery reached the upstream")
	}
}

// reloadRig is a gateway relaying to an upstream that takes dataWait
// over each message, and its config number i (a real change each time).
func reloadRig(t *testing.T, dataWait time.Duration, queue map[string]any) (*st.Env, *st.Upstream, string, func(i int) map[string]any) {
	e := st.NewEnv(t)
	slow := st.NewUpstream(t, st.UpstreamOpts{DataWait: dataWait})
	s, addr := st.ServerConfig(t, map[string]any{
		"tls": map[string]any{"level": "none"}, "relay_networks": []string{"127.0.0.1"},
		"routes": st.RelayRoute(slow.Addr, map[string]any{"level": "none"}),
	})
	cfg := func(i int) map[string]any {
		s2 := map[string]any{}
		for k, v := range s {
			s2[k] = v
		}
		s2["max_recipients"] = 10 + i
		return e.DeliveringApp(map[string]any{"gw": s2}, queue)
	}
	return e, slow, addr, cfg
}

// TestReloadFinishesDeliveries: a delivery under way at a config reload
// finishes under the old config within queue.stop_grace, and is sent
// once; the new config delivers the rest. One that outlasts the grace
// period is cut, logged as such, and tried again.
func TestReloadFinishesDeliveries(t *testing.T) {
	t.Run("within-grace", func(t *testing.T) {
		e, slow, addr, cfg := reloadRig(t, 2*time.Second, map[string]any{"stop_grace": "20s", "min_retry_interval": "200ms"})
		e.Load(cfg(0), nil)
		if ok, err := sendOnce(addr, "in-flight"); !ok {
			t.Fatal(err)
		}
		upstreamBusy(t, slow)
		begin := time.Now()
		e.PostLoad(cfg(1), nil)
		t.Logf("reload returned after %s", time.Since(begin))
		if ok, err := sendOnce(addr, "after-reload"); !ok {
			t.Fatal(err)
		}
		msgs := slow.WaitMessages(t, 2, 20*time.Second)
		time.Sleep(3 * time.Second) // a sleep: no second copy comes in this time
		if got := len(slow.Received()); got != 2 {
			t.Fatalf("upstream got %d messages, want 2 (each once): %v", got, msgs)
		}
		if n := len(e.LogLines("delivery cut at config unload; it stays queued and is tried again")); n != 0 {
			t.Fatalf("%d deliveries cut within the grace period", n)
		}
	})
	t.Run("past-grace", func(t *testing.T) {
		e, slow, addr, cfg := reloadRig(t, 3*time.Second,
			map[string]any{"stop_grace": "300ms", "min_retry_interval": "200ms", "max_retry_interval": "500ms"})
		e.Load(cfg(0), nil)
		if ok, err := sendOnce(addr, "cut"); !ok {
			t.Fatal(err)
		}
		upstreamBusy(t, slow)
		e.PostLoad(cfg(1), nil)
		line := e.WaitLog("delivery cut at config unload; it stays queued and is tried again")
		if line["queue_id"] == nil || line["queue_id"] == "" {
			t.Fatalf("cut line without a queue id: %v", line)
		}
		// At least once: the cut attempt may have reached the upstream.
		slow.WaitMessages(t, 1, 20*time.Second)
	})
}
