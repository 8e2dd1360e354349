package smtpapp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/maillog"
)

// slotWait is how long a connection from a client at its
// max_connections_per_ip waits for one of that client's connections to
// end before it is refused. A well-behaved client that reconnects the
// moment it has read our 221 is faster than the goroutine that closes
// its previous connection and gives its slot back; without the wait it
// got "421 Too many connections from your address" under load.
const slotWait = 500 * time.Millisecond

// clientKey is the unit max_connections_per_ip counts: an IPv4
// address, or an IPv6 /64, which is what one customer of an ISP or a
// cloud host gets (a client could otherwise walk through its /64 and
// never meet the limit).
func clientKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		if p, err := ip.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// clientSlots counts open connections by clientKey, and the ones
// waiting for a slot: at most max of those too, so that a client past
// its limit holds at most twice its share of sockets.
type clientSlots struct {
	mu      sync.Mutex
	max     int
	open    map[netip.Addr]int
	waiting map[netip.Addr]int
	freed   chan struct{} // closed when a slot is given back; made by a waiter
}

func newClientSlots(max int) *clientSlots {
	return &clientSlots{max: max, open: make(map[netip.Addr]int), waiting: make(map[netip.Addr]int)}
}

// wait counts a waiter of key, or reports that key has as many as it
// may; done uncounts it.
func (cs *clientSlots) wait(key netip.Addr) (ok bool, done func()) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.waiting[key] >= cs.max {
		return false, nil
	}
	cs.waiting[key]++
	return true, func() {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if cs.waiting[key]--; cs.waiting[key] <= 0 {
			delete(cs.waiting, key)
		}
	}
}

// take counts a connection of key, or returns a channel that is closed
// when any slot is given back.
func (cs *clientSlots) take(key netip.Addr) (ok bool, freed <-chan struct{}) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.open[key] < cs.max {
		cs.open[key]++
		return true, nil
	}
	if cs.freed == nil {
		cs.freed = make(chan struct{})
	}
	return false, cs.freed
}

// release gives a connection's slot back.
func (cs *clientSlots) release(key netip.Addr) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.open[key]--; cs.open[key] <= 0 {
		delete(cs.open, key)
	}
	if cs.freed != nil {
		close(cs.freed)
		cs.freed = nil
	}
}

// admission is the outcome of tryAdmit.
type admission int

const (
	admitted   admission = iota
	refused              // refused with 421, and closed
	clientFull           // the client is at its limit: awaitSlot decides
)

// tryAdmit counts a new connection against max_connections and its
// client's max_connections_per_ip, without waiting. slot is the key
// the connection holds (invalid when it is not counted per client:
// clients in relay_networks, unless limit_relay_networks is set).
func (s *Server) tryAdmit(nc net.Conn) (slot netip.Addr, a admission) {
	ip := remoteAddrPort(nc).Addr()
	if n := s.active.Add(1); n > int64(s.MaxConnections) {
		s.active.Add(-1)
		go s.refuse(nc, "max_connections", "Too many connections, try again later")
		return netip.Addr{}, refused
	}
	if !s.LimitRelayNetworks && s.relay.MayRelay(ip) {
		// As Postfix exempts $mynetworks (smtpd_client_event_limit_exceptions):
		// the gateway's own clients are not limited per address.
		s.app.metrics.connections.WithLabelValues(s.name, "accepted").Inc()
		return netip.Addr{}, admitted
	}
	slot = clientKey(ip)
	if ok, _ := s.slots.take(slot); ok {
		s.app.metrics.connections.WithLabelValues(s.name, "accepted").Inc()
		return slot, admitted
	}
	return slot, clientFull
}

// awaitSlot waits up to slotWait for a slot of a client that tryAdmit
// found full, and refuses the connection when none is given back. A
// waiting connection counts against max_connections, as an open one.
func (s *Server) awaitSlot(nc net.Conn, slot netip.Addr) bool {
	refuse := func() bool {
		s.active.Add(-1)
		s.refuse(nc, "max_connections_per_ip", "Too many connections from your address, try again later")
		return false
	}
	ok, done := s.slots.wait(slot)
	if !ok {
		return refuse()
	}
	defer done()
	deadline := time.NewTimer(slotWait)
	defer deadline.Stop()
	for {
		ok, freed := s.slots.take(slot)
		if ok {
			s.app.metrics.connections.WithLabelValues(s.name, "accepted").Inc()
			return true
		}
		select {
		case <-freed:
		case <-deadline.C:
			return refuse()
		}
	}
}

// admit is tryAdmit and, when the client is at its limit, awaitSlot.
func (s *Server) admit(nc net.Conn) (slot netip.Addr, ok bool) {
	slot, a := s.tryAdmit(nc)
	switch a {
	case admitted:
		return slot, true
	case clientFull:
		return slot, s.awaitSlot(nc, slot)
	}
	return slot, false
}

// connDone gives back what admit counted for a connection.
func (s *Server) connDone(slot netip.Addr) {
	s.active.Add(-1)
	if slot.IsValid() {
		s.slots.release(slot)
	}
}

// refuse answers a connection that is not admitted with 421 and closes
// it (RFC 5321 3.8: a server may refuse at the greeting). It waits for
// the write: the accept loop calls it in a goroutine of its own.
func (s *Server) refuse(nc net.Conn, reason, reply string) {
	s.app.metrics.connections.WithLabelValues(s.name, "refused_"+reason).Inc()
	maillog.New(s.logger).ConnectionRefused(strings.ReplaceAll(reason, "_", " "), remoteAddrPort(nc).Addr(),
		zap.Int("max_connections", s.MaxConnections),
		zap.Int("max_connections_per_ip", s.MaxConnectionsPerIP))
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "421 4.7.0 %s %s\r\n", s.Hostname, reply)
	nc.Close()
}
