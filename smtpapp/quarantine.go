package smtpapp

import (
	"errors"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

// quarantineDir is the quarantine's directory in the spool's: on the
// same file system, so that commit and release are renames.
const quarantineDir = "quarantine"

// quarantineSweep is how often quarantined messages past
// queue.quarantine_max_age are looked for.
const quarantineSweep = time.Hour

func (a *App) quarantinePath() string { return filepath.Join(a.spoolPath, quarantineDir) }

// Quarantine returns the app's quarantine (nil before Start).
func (a *App) Quarantine() *spool.Spool { return a.quarantine }

// Released tells the delivering runner about a message released from
// the quarantine into the queue.
func (a *App) Released(id string) { a.queued(id) }

// quarantineSize counts the quarantine for the metrics gauge, without
// reading any envelope.
func (a *App) quarantineSize() int {
	ids, err := spool.ListIDs(a.quarantinePath())
	if err != nil {
		return 0
	}
	return len(ids)
}

// sweepQuarantine removes, now and then every quarantineSweep, the
// quarantined messages older than maxAge; it returns the function that
// stops it.
func (a *App) sweepQuarantine(maxAge time.Duration) (stop func()) {
	done := make(chan struct{})
	q, log := a.quarantine, a.logger.Named("quarantine")
	go func() {
		t := time.NewTicker(quarantineSweep)
		defer t.Stop()
		for {
			expireQuarantine(q, maxAge, time.Now(), log)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// expireQuarantine removes quarantined messages older than maxAge.
// Queue ids begin with their arrival time in milliseconds (hex), which
// is when they were quarantined: no envelope is read.
func expireQuarantine(q *spool.Spool, maxAge time.Duration, now time.Time, log *zap.Logger) {
	ids, err := q.IDs()
	if err != nil {
		log.Error("listing the quarantine", zap.Error(err))
		return
	}
	for _, id := range ids {
		if t, ok := spool.IDTime(id); !ok || now.Sub(t) <= maxAge {
			continue
		}
		if err := q.Remove(id); err != nil {
			if errors.Is(err, spool.ErrNotFound) {
				continue // released or deleted meanwhile, or by the other config of a reload
			}
			log.Error("removing an expired quarantined message", zap.String("queue_id", id), zap.Error(err))
			continue
		}
		log.Info("quarantined message expired and removed", zap.String("queue_id", id),
			zap.Duration("max_age", maxAge))
	}
}
