package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Ceilings are the machine's physical limits the systems run into: how
// many fsyncs per second the disk under the queues gives, and how many
// full TLS handshakes per second the CPUs do.
type Ceilings struct {
	FsyncSerial     float64 // one writer: append 4 KiB, fsync, repeat
	FsyncParallel   float64 // FsyncWriters such writers at once, each its own file, in all
	FsyncWriters    int
	TLSSerial       float64 // one client after another, default key exchange
	TLSParallel     float64 // TLSStreams clients at once, default key exchange
	TLSParallelX    float64 // TLSStreams clients at once, X25519 only (what OpenSSL 3.0 peers negotiate)
	TLSStreams      int
	TLSDefaultGroup string // the key exchange Go negotiates by default
}

// fsyncRate appends 4 KiB and fsyncs, in a loop, for d, with writers
// goroutines each on its own new file in dir; it returns fsyncs/s in all.
func fsyncRate(dir string, writers int, d time.Duration) (float64, error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	stop := time.Now().Add(d)
	block := make([]byte, 4096)
	for i := range block {
		block[i] = byte('a' + i%26)
	}
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			name := filepath.Join(dir, fmt.Sprintf("fsync-probe-%d", w))
			f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				errs <- err
				return
			}
			defer os.Remove(name)
			defer f.Close()
			for time.Now().Before(stop) {
				if _, err := f.Write(block); err != nil {
					errs <- err
					return
				}
				if err := f.Sync(); err != nil {
					errs <- err
					return
				}
				total.Add(1)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total.Load()) / time.Since(start).Seconds(), nil
}

// tlsRate does full TLS handshakes (no resumption) between a Go client
// and a Go server over loopback TCP, with the ECDSA certificate, for d,
// with streams clients at once. Both ends run on this machine, as in the
// benchmark (load generator and system, or system and sink); groups
// restricts the key exchange (nil: Go's default). It returns handshakes/s
// and the key exchange negotiated.
func tlsRate(cert tls.Certificate, streams int, d time.Duration, groups []tls.CurveID) (float64, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, "", err
	}
	defer ln.Close()
	srvConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, srvConf)
				if tc.Handshake() == nil {
					// Wait for the client to hang up, so that the server's
					// session ticket write does not race the close.
					var b [1]byte
					tc.Read(b[:])
				}
			}()
		}
	}()
	var total atomic.Int64
	var group atomic.Value
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	stop := time.Now().Add(d)
	start := time.Now()
	for s := 0; s < streams; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					errs <- err
					return
				}
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "bench.test", CurvePreferences: groups})
				if err := tc.Handshake(); err != nil {
					c.Close()
					errs <- err
					return
				}
				group.Store(tc.ConnectionState().CurveID.String())
				c.Close()
				total.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, "", err
	}
	g, _ := group.Load().(string)
	return float64(total.Load()) / time.Since(start).Seconds(), g, nil
}

// MeasureCeilings measures everything in Ceilings, about 2 s each.
func MeasureCeilings(dir string, cert tls.Certificate, streams int) (*Ceilings, error) {
	c := &Ceilings{FsyncWriters: 16, TLSStreams: streams}
	var err error
	if c.FsyncSerial, err = fsyncRate(dir, 1, 2*time.Second); err != nil {
		return nil, fmt.Errorf("fsync ceiling: %w", err)
	}
	if c.FsyncParallel, err = fsyncRate(dir, c.FsyncWriters, 2*time.Second); err != nil {
		return nil, fmt.Errorf("fsync ceiling: %w", err)
	}
	if c.TLSSerial, c.TLSDefaultGroup, err = tlsRate(cert, 1, 1500*time.Millisecond, nil); err != nil {
		return nil, fmt.Errorf("TLS ceiling: %w", err)
	}
	if c.TLSParallel, _, err = tlsRate(cert, streams, 1500*time.Millisecond, nil); err != nil {
		return nil, fmt.Errorf("TLS ceiling: %w", err)
	}
	if c.TLSParallelX, _, err = tlsRate(cert, streams, 1500*time.Millisecond, []tls.CurveID{tls.X25519}); err != nil {
		return nil, fmt.Errorf("TLS ceiling: %w", err)
	}
	return c, nil
}

// cmdCeiling is "smtpbench ceiling".
func cmdCeiling(args []string) error {
	fs := flag.NewFlagSet("ceiling", flag.ExitOnError)
	dir := fs.String("dir", os.TempDir(), "directory on the disk to measure")
	certFile := fs.String("cert", "", "PEM ECDSA certificate")
	keyFile := fs.String("key", "", "PEM key")
	streams := fs.Int("streams", 2, "parallel TLS clients")
	fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	c, err := MeasureCeilings(*dir, cert, *streams)
	if err != nil {
		return err
	}
	fmt.Printf("fsync (4 KiB append + fsync): %.0f/s with 1 writer, %.0f/s with %d writers\n",
		c.FsyncSerial, c.FsyncParallel, c.FsyncWriters)
	fmt.Printf("TLS full handshakes, both ends on this machine: %.0f/s serial, %.0f/s with %d streams (%s), %.0f/s with %d streams (X25519)\n",
		c.TLSSerial, c.TLSParallel, c.TLSStreams, c.TLSDefaultGroup, c.TLSParallelX, c.TLSStreams)
	return nil
}
