package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Sink is the upstream both systems relay to: an SMTP server that offers
// STARTTLS, takes every message, throws it away and records when it
// arrived (the end of its DATA, before the 250), keyed by the message's
// id (the IDHeader header; the envelope sender for a message without).
type Sink struct {
	srv *smtp.Server
	ln  net.Listener

	mu       sync.Mutex
	arrivals map[string]time.Time // message id -> arrival
	dups     int                  // an id seen again
	tlsN     int                  // messages that came over TLS
	plainN   int                  // and in plaintext
	conns    map[*smtp.Conn]bool  // connections taken (go-smtp starts a new session after STARTTLS)
	tlsInfo  string               // TLS facts of the last TLS session
	onArrive func(id string, at time.Time, tlsInfo string)
}

// StartSink listens on addr and serves until Close. cert may be nil for
// a sink without STARTTLS; onArrive, if not nil, is called for every
// message.
//
// groups restricts the TLS key exchanges (nil: Go's default).
func StartSink(addr string, cert *tls.Certificate, groups []tls.CurveID, onArrive func(id string, at time.Time, tlsInfo string)) (*Sink, error) {
	s := &Sink{arrivals: make(map[string]time.Time), conns: map[*smtp.Conn]bool{}, onArrive: onArrive}
	srv := smtp.NewServer(s)
	srv.Domain = "sink.bench"
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 1000
	srv.ReadTimeout = 2 * time.Minute
	srv.WriteTimeout = 2 * time.Minute
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if cert != nil {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*cert}, CurvePreferences: groups}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s.srv, s.ln = srv, ln
	go srv.Serve(ln)
	return s, nil
}

// Close stops the sink.
func (s *Sink) Close() error { return s.srv.Close() }

// Reset forgets every arrival.
func (s *Sink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.arrivals = make(map[string]time.Time)
	s.dups, s.tlsN, s.plainN, s.tlsInfo = 0, 0, 0, ""
	s.conns = map[*smtp.Conn]bool{}
}

// Sessions is the number of connections that began a session since the
// last Reset (one that began before and is reused counts not at all):
// messages per connection say whether a system reuses its outbound
// connections.
func (s *Sink) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Count is the number of distinct messages whose id starts with prefix.
func (s *Sink) Count(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id := range s.arrivals {
		if strings.HasPrefix(id, prefix) {
			n++
		}
	}
	return n
}

// Wait waits until want messages with the prefix have arrived, or the
// timeout; it reports whether they all did.
func (s *Sink) Wait(prefix string, want int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if s.Count(prefix) >= want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Arrival returns when the message with the id arrived.
func (s *Sink) Arrival(id string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.arrivals[id]
	return t, ok
}

// Stats returns the duplicate count, messages over TLS and in
// plaintext, and the TLS facts of a session.
func (s *Sink) Stats() (dups, tlsN, plainN int, tlsInfo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dups, s.tlsN, s.plainN, s.tlsInfo
}

// NewSession implements smtp.Backend.
func (s *Sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	s.conns[c] = true
	s.mu.Unlock()
	return &sinkSession{sink: s, conn: c}, nil
}

type sinkSession struct {
	sink *Sink
	conn *smtp.Conn
	from string
}

// Reset implements smtp.Session.
func (ss *sinkSession) Reset() { ss.from = "" }

// Logout implements smtp.Session.
func (ss *sinkSession) Logout() error { return nil }

// Mail implements smtp.Session: any sender.
func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	return nil
}

// Rcpt implements smtp.Session: any recipient.
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }

// Data implements smtp.Session: reads the message, notes its id, and
// records its arrival before the 250.
func (ss *sinkSession) Data(r io.Reader) error {
	id, err := readID(r)
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	at := time.Now()
	if id == "" {
		id = ss.from
	}
	cs, isTLS := ss.conn.TLSConnectionState()
	s := ss.sink
	s.mu.Lock()
	if _, seen := s.arrivals[id]; seen {
		s.dups++
	} else {
		s.arrivals[id] = at
	}
	info := "plaintext"
	if isTLS {
		s.tlsN++
		info = describeTLS(cs, true)
		s.tlsInfo = info
	} else {
		s.plainN++
	}
	cb := s.onArrive
	s.mu.Unlock()
	if cb != nil {
		cb(id, at, info)
	}
	return nil
}

// readID reads the message's header section, up to and including the
// blank line, and returns the value of its IDHeader field ("" if none).
func readID(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(r, 4096)
	id := ""
	prefix := []byte(IDHeader + ":")
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > len(prefix) && bytes.EqualFold(line[:len(prefix)], prefix) {
			id = string(bytes.TrimSpace(line[len(prefix):]))
		}
		if err == bufio.ErrBufferFull {
			// A long line: skip the rest of it.
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
		}
		if err != nil {
			if err == io.EOF {
				return id, nil
			}
			return id, err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			// End of header; hand back what bufio read ahead.
			_, err := io.Copy(io.Discard, br)
			return id, err
		}
	}
}

// cmdSink is "smtpbench sink": the sink alone, a line per message.
func cmdSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:2953", "listen `host:port`")
	certFile := fs.String("cert", "", "PEM certificate for STARTTLS (none: no STARTTLS)")
	keyFile := fs.String("key", "", "PEM key for STARTTLS")
	fs.Parse(args)
	var cert *tls.Certificate
	if *certFile != "" {
		c, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return err
		}
		cert = &c
	}
	var mu sync.Mutex
	n := 0
	s, err := StartSink(*addr, cert, nil, func(id string, at time.Time, info string) {
		mu.Lock()
		defer mu.Unlock()
		n++
		fmt.Printf("%s %d %s %s\n", at.Format(time.RFC3339Nano), n, id, info)
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "sink: listening on %s (STARTTLS %v); ^C ends\n", *addr, cert != nil)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
	s.Close()
	mu.Lock()
	defer mu.Unlock()
	if n == 0 {
		return errors.New("no messages")
	}
	return nil
}
