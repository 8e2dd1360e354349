// Package limits counts what a client holds of a server: connections,
// per client, where a client is an IPv4 address or an IPv6 /64.
package limits

import (
	"net/netip"
	"sync"
	"time"
)

// ClientKey is the unit a per-client limit counts: an IPv4 address, or
// an IPv6 /64, which is what one customer of an ISP or a cloud host
// gets (a client could otherwise walk through its /64 and never meet
// the limit). An IPv4-mapped address counts as the IPv4 one.
func ClientKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// Slots counts open connections by client key, at most max each, and
// the connections waiting for a slot: at most max of those too, so that
// a client past its limit holds at most twice its share of sockets.
type Slots struct {
	mu      sync.Mutex
	max     int
	open    map[netip.Addr]int
	waiting map[netip.Addr]int
	freed   chan struct{} // closed when a slot is given back; made by a waiter
}

// NewSlots returns slots for at most max connections per client.
func NewSlots(max int) *Slots {
	return &Slots{max: max, open: make(map[netip.Addr]int), waiting: make(map[netip.Addr]int)}
}

// Take counts a connection of key if the client has a slot free.
func (s *Slots) Take(key netip.Addr) bool {
	ok, _ := s.take(key)
	return ok
}

// take counts a connection of key, or returns a channel that is closed
// when any slot is given back.
func (s *Slots) take(key netip.Addr) (ok bool, freed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[key] < s.max {
		s.open[key]++
		return true, nil
	}
	if s.freed == nil {
		s.freed = make(chan struct{})
	}
	return false, s.freed
}

// Await waits up to d for a slot of key: a client that reconnects the
// moment its last connection ended may be quicker than the code that
// gives that connection's slot back. It reports false at once when the
// client already has as many connections waiting as it may have open.
func (s *Slots) Await(key netip.Addr, d time.Duration) bool {
	s.mu.Lock()
	if s.waiting[key] >= s.max {
		s.mu.Unlock()
		return false
	}
	s.waiting[key]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.waiting[key]--; s.waiting[key] <= 0 {
			delete(s.waiting, key)
		}
		s.mu.Unlock()
	}()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		ok, freed := s.take(key)
		if ok {
			return true
		}
		select {
		case <-freed:
		case <-deadline.C:
			return false
		}
	}
}

// Release gives a connection's slot back.
func (s *Slots) Release(key netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[key]--; s.open[key] <= 0 {
		delete(s.open, key)
	}
	if s.freed != nil {
		close(s.freed)
		s.freed = nil
	}
}

// Clients returns how many clients hold a slot, and how many
// connections wait for one.
func (s *Slots) Clients() (holding, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.waiting {
		waiting += n
	}
	return len(s.open), waiting
}
