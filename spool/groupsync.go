package spool

import "sync"

// groupSync shares directory fsyncs among concurrent callers (group
// commit): each caller's renames or unlinks are done before it asks,
// and it returns once an fsync that began after its request has ended,
// so that it is durable; callers that ask while an fsync runs share the
// next one. Under 20 sessions committing at once, most records then
// cost one file fsync of their own and a share of a directory fsync.
// Written here: nothing in the standard library or our dependencies
// batches fsyncs.
type groupSync struct {
	mu        sync.Mutex
	cond      *sync.Cond
	requested uint64 // requests so far
	synced    uint64 // requests covered by the last fsync that ended
	running   bool
	failed    []failedBatch // recent batches whose fsync failed
}

// failedBatch is a range of requests whose fsync failed.
type failedBatch struct {
	from, to uint64
	err      error
}

// maxFailed bounds the failed batches remembered; a waiter finds its
// own long before this many more fail.
const maxFailed = 64

// sync makes the caller's changes in the directory durable with fsync,
// shared with concurrent callers.
func (g *groupSync) sync(fsync func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond == nil {
		g.cond = sync.NewCond(&g.mu)
	}
	g.requested++
	mine := g.requested
	for g.synced < mine {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		from, to := g.synced+1, g.requested
		g.mu.Unlock()
		err := fsync()
		g.mu.Lock()
		g.running = false
		g.synced = to
		if err != nil {
			g.failed = append(g.failed, failedBatch{from, to, err})
			if len(g.failed) > maxFailed {
				g.failed = g.failed[1:]
			}
		}
		g.cond.Broadcast()
	}
	for _, f := range g.failed {
		if f.from <= mine && mine <= f.to {
			return f.err
		}
	}
	return nil
}
