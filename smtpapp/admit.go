package smtpapp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/limits"
)

// slotWait is how long a connection from a client at its
// max_connections_per_ip waits for one of that client's connections to
// end before it is refused. A well-behaved client that reconnects the
// moment it has read our 221 is faster than the goroutine that closes
// its previous connection and gives its slot back; without the wait it
// got "421 Too many connections from your address" under load.
const slotWait = 500 * time.Millisecond

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
		s.app.metrics.Connections.WithLabelValues(s.name, "accepted").Inc()
		return netip.Addr{}, admitted
	}
	slot = limits.ClientKey(ip)
	if s.slots.Take(slot) {
		s.app.metrics.Connections.WithLabelValues(s.name, "accepted").Inc()
		return slot, admitted
	}
	return slot, clientFull
}

// awaitSlot waits up to slotWait for a slot of a client that tryAdmit
// found full, and refuses the connection when none is given back. A
// waiting connection counts against max_connections, as an open one.
func (s *Server) awaitSlot(nc net.Conn, slot netip.Addr) bool {
	if !s.slots.Await(slot, slotWait) {
		s.active.Add(-1)
		s.refuse(nc, "max_connections_per_ip", "Too many connections from your address, try again later")
		return false
	}
	s.app.metrics.Connections.WithLabelValues(s.name, "accepted").Inc()
	return true
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
		s.slots.Release(slot)
	}
}

// refuse answers a connection that is not admitted with 421 and closes
// it (RFC 5321 3.8: a server may refuse at the greeting). It waits for
// the write: the accept loop calls it in a goroutine of its own.
func (s *Server) refuse(nc net.Conn, reason, reply string) {
	s.app.metrics.Connections.WithLabelValues(s.name, "refused_"+reason).Inc()
	s.maillog.ConnectionRefused(strings.ReplaceAll(reason, "_", " "), remoteAddrPort(nc).Addr(),
		zap.Int("max_connections", s.MaxConnections),
		zap.Int("max_connections_per_ip", s.MaxConnectionsPerIP))
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "421 4.7.0 %s %s\r\n", s.Hostname, reply)
	nc.Close()
}
