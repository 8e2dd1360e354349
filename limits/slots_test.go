package limits

import (
	"net/netip"
	"testing"
	"time"
)

// TestClientKey: an IPv4 address is its own client; an IPv6 client is
// its /64; an IPv4-mapped address is the IPv4 one.
func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":                 "192.0.2.7",
		"::ffff:192.0.2.7":          "192.0.2.7",
		"2001:db8:1:2:3:4:5:6":      "2001:db8:1:2::",
		"2001:db8:1:2::ffff":        "2001:db8:1:2::",
		"2001:db8:1:3::1":           "2001:db8:1:3::",
		"::1":                       "::",
		"fe80::1:2:3:4":             "fe80::",
		"2001:db8:aaaa:bbbb:c::d":   "2001:db8:aaaa:bbbb::",
		"2001:db8:aaaa:bbbc:c::d":   "2001:db8:aaaa:bbbc::",
		"2001:0db8:0000:0000::0001": "2001:db8::",
	} {
		if got := ClientKey(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("ClientKey(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestSlots: at most max connections per client; a waiter gets a slot
// given back while it waits, and gives up after its wait; a waiter past
// max per client is refused at once.
func TestSlots(t *testing.T) {
	s := NewSlots(2)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if !s.Take(a) || !s.Take(a) || s.Take(a) {
		t.Fatal("want exactly two slots for a")
	}
	if !s.Take(b) {
		t.Fatal("b is another client")
	}
	got := make(chan bool)
	go func() { got <- s.Await(a, 5*time.Second) }()
	for {
		if _, waiting := s.Clients(); waiting == 1 {
			break
		}
		time.Sleep(time.Millisecond) // a poll interval
	}
	s.Release(a)
	if !<-got {
		t.Fatal("a waiter did not get the slot given back")
	}
	if holding, waiting := s.Clients(); holding != 2 || waiting != 0 {
		t.Fatalf("clients %d holding, %d waiting", holding, waiting)
	}
	if s.Await(a, 50*time.Millisecond) {
		t.Fatal("Await got a slot no one gave back")
	}
	// Two waiters of a at most: a third is refused at once.
	done := make(chan bool, 2)
	go func() { done <- s.Await(a, time.Second) }()
	go func() { done <- s.Await(a, time.Second) }()
	for {
		if _, waiting := s.Clients(); waiting == 2 {
			break
		}
		time.Sleep(time.Millisecond) // a poll interval
	}
	third := make(chan bool)
	go func() { third <- s.Await(a, time.Hour) }()
	select {
	case ok := <-third:
		if ok {
			t.Fatal("a third waiter got a slot")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a third waiter was let wait")
	}
	s.Release(a)
	s.Release(a)
	if !<-done || !<-done {
		t.Fatal("the two waiters did not get the two slots")
	}
}
