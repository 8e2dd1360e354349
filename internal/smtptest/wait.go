package smtptest

import (
	"testing"
	"time"
)

// pollInterval is how often Eventually looks again.
const pollInterval = 20 * time.Millisecond

// Eventually calls cond until it returns true, every 20 ms for up to
// within (and once more at the deadline), and reports whether it did.
// It is the one poll loop of the tests: callers fail with a message of
// their own, saying what they saw.
func Eventually(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for {
		if cond() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}

// WaitFor polls cond for up to 20 seconds and fails the test, naming
// what it waited for, unless cond comes true.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Eventually(20*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}
