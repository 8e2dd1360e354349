package spool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestGroupSync: every caller returns only after an fsync that began
// after its change; concurrent callers share fsyncs; a failed fsync is
// reported to the callers it covered, and only to them.
func TestGroupSync(t *testing.T) {
	var g groupSync
	var changes, durable, fsyncs atomic.Int64
	fsync := func() error {
		seen := changes.Load() // what this fsync makes durable
		fsyncs.Add(1)
		for { // durable = max(durable, seen)
			d := durable.Load()
			if seen <= d || durable.CompareAndSwap(d, seen) {
				return nil
			}
		}
	}
	const n = 2000
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := changes.Add(1)
			if err := g.sync(fsync); err != nil {
				t.Error(err)
			}
			if durable.Load() < mine {
				t.Errorf("change %d returned before an fsync covered it (durable %d)", mine, durable.Load())
			}
		}()
	}
	wg.Wait()
	if f := fsyncs.Load(); f < 1 || f > n {
		t.Fatalf("%d fsyncs for %d callers", f, n)
	}
	t.Logf("%d callers, %d fsyncs", n, fsyncs.Load())

	// A failure reaches the callers of its batch, not the next ones.
	boom := errors.New("EIO")
	var fail atomic.Bool
	fail.Store(true)
	if err := g.sync(func() error {
		if fail.Swap(false) {
			return boom
		}
		return nil
	}); !errors.Is(err, boom) {
		t.Fatalf("failed fsync: %v", err)
	}
	if err := g.sync(func() error { return nil }); err != nil {
		t.Fatalf("after a failure: %v", err)
	}
}
