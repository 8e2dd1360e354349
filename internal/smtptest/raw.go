package smtptest

import (
	"net"
	"testing"
)

// ServeRaw listens on loopback and runs serve for each connection, in a
// goroutine of its own, until the test ends; serve owns the connection
// and must close it. It returns the address. It is for next hops that
// must misbehave in ways no SMTP library allows (refusing a second EHLO,
// a 554 greeting, a reply to EHLO that is not 250).
func ServeRaw(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}
