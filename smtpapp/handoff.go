package smtpapp

import (
	"crypto/tls"
	"net"
	"sync"
)

// ServeConn serves one connection that another Caddy app accepted (the
// layer4 app's smtp handler), with this server's TLS level, limits,
// relay control, spool and routes, exactly as on its own listeners. It
// returns when the session is over. outerTLS is the state of a TLS
// session already established on the connection (layer4's tls handler:
// implicit TLS); the session then counts as TLS and STARTTLS is not
// offered. The connection's RemoteAddr is the client's: after layer4's
// proxy_protocol handler, the proxied address.
func (s *Server) ServeConn(nc net.Conn, outerTLS *tls.ConnectionState) {
	slot, ok := s.admit(nc)
	if !ok {
		return
	}
	c := newConn(nc, s, remoteAddrPort(nc))
	c.slot = slot
	c.done = make(chan struct{})
	ln := s.handoff
	if outerTLS != nil {
		// go-smtp cannot see this session (it gets the decrypted
		// connection), so the connection records it, as it does its own.
		c.gate = nil
		c.handshakeDone(*outerTLS)
		ln = s.handoffTLS
	}
	if !ln.push(c) {
		c.Close()
		return
	}
	<-c.done
}

// handoffListener is a net.Listener fed by ServeConn, so that go-smtp's
// Serve loop handles handed-over connections like accepted ones.
type handoffListener struct {
	addr   net.Addr
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newHandoffListener(name string) *handoffListener {
	return &handoffListener{
		addr:   handoffAddr(name),
		ch:     make(chan net.Conn),
		closed: make(chan struct{}),
	}
}

func (l *handoffListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

// Accept implements net.Listener.
func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr implements net.Listener.
func (l *handoffListener) Addr() net.Addr { return l.addr }

type handoffAddr string

func (a handoffAddr) Network() string { return "handoff" }
func (a handoffAddr) String() string  { return "handoff/" + string(a) }
