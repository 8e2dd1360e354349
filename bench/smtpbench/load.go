package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// LoadConfig describes one run of the load generator: Concurrency
// connections at once, each sending up to PerConn messages (STARTTLS
// first when TLS is set) and then QUIT, reconnecting until Messages
// messages have been sent.
type LoadConfig struct {
	Addr        string
	TLS         bool // STARTTLS on every connection, full handshake each time
	Messages    int
	Concurrency int
	PerConn     int
	Size        int    // bytes per message, headers included
	Prefix      string // message i has the id (IDHeader) <Prefix><i>
	Rcpt        string
	Timeout     time.Duration // for the whole run
	Groups      []tls.CurveID // TLS key exchanges offered (nil: Go's default)
}

// LoadResult is what one run measured. DataEnd[i] is when message i's
// final dot was about to be written (zero if the message was not
// accepted); Accept holds, per accepted message, the time from that
// moment to the 250.
type LoadResult struct {
	Start, End time.Time // first dial; last 250
	Accepted   int
	Errors     int
	FirstError string
	Conns      int
	DataEnd    []time.Time
	Accept     []time.Duration
	TLSInfo    string // protocol, key exchange and cipher of a session
}

// Rate is accepted messages per second over the run.
func (r *LoadResult) Rate() float64 {
	d := r.End.Sub(r.Start).Seconds()
	if d <= 0 || r.Accepted == 0 {
		return 0
	}
	return float64(r.Accepted) / d
}

// Sender is the envelope sender of every message. It is the same for
// all, as with smtp-source: a new sender per message would cost Postfix
// a trivial-rewrite lookup per message that its cache otherwise saves.
const Sender = "load@load.bench"

// IDHeader names the header that identifies a message to the sink.
const IDHeader = "X-Bench-Id"

// IDFor is the id of message i of a run with prefix p; the sink keys
// arrivals by it.
func IDFor(p string, i int) string { return fmt.Sprintf("%s%d", p, i) }

// messageHeader is the per-message part of the header.
func messageHeader(id string) string {
	return fmt.Sprintf("From: <%s>\r\nMessage-ID: <%s@load.bench>\r\n%s: %s\r\n", Sender, id, IDHeader, id)
}

// messageBody returns the message after its per-message headers: fixed
// headers, a blank line and 76-character lines up to size bytes in all
// (counting hdrLen bytes of per-message headers).
func messageBody(size, hdrLen int) []byte {
	var b strings.Builder
	b.WriteString("To: <bench@sink.bench>\r\nSubject: caddy-smtp benchmark\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2)[:76] + "\r\n"
	for b.Len()+hdrLen < size {
		rest := size - hdrLen - b.Len()
		if rest >= len(line) {
			b.WriteString(line)
		} else if rest > 2 {
			b.WriteString(line[:rest-2] + "\r\n")
		} else {
			break
		}
	}
	return []byte(b.String())
}

// loadTLSConfig makes full handshakes every time: no session cache, and
// the certificate is not verified (level may in both systems).
func loadTLSConfig(groups []tls.CurveID) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "bench.test", CurvePreferences: groups}
}

// Load runs the load generator.
func Load(cfg LoadConfig) *LoadResult {
	if cfg.PerConn < 1 {
		cfg.PerConn = 1
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Rcpt == "" {
		cfg.Rcpt = "bench@sink.bench"
	}
	res := &LoadResult{DataEnd: make([]time.Time, cfg.Messages)}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		lastOK   time.Time
		accepts  = make([]time.Duration, 0, cfg.Messages)
		errCount atomic.Int64
		conns    atomic.Int64
		deadline = time.Now().Add(cfg.Timeout)
	)
	fail := func(err error) {
		if errCount.Add(1) == 1 {
			mu.Lock()
			res.FirstError = err.Error()
			mu.Unlock()
		}
	}
	tlsConf := loadTLSConfig(cfg.Groups)
	hdrLen := len(messageHeader(IDFor(cfg.Prefix, cfg.Messages)))
	body := messageBody(cfg.Size, hdrLen)

	res.Start = time.Now()
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				// Too many errors: the system is down; stop early.
				if errCount.Load() > int64(cfg.Messages/10+20) {
					return
				}
				// A connection claims its PerConn messages before
				// dialling: every connection but the last carries
				// exactly PerConn.
				first := int(next.Add(int64(cfg.PerConn))) - cfg.PerConn
				if first >= cfg.Messages {
					return
				}
				last := min(first+cfg.PerConn, cfg.Messages)
				conns.Add(1)
				c, err := dialSMTP(cfg.Addr, cfg.TLS, tlsConf)
				if err != nil {
					fail(fmt.Errorf("message %d: %w", first, err))
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if cfg.TLS {
					mu.Lock()
					if res.TLSInfo == "" {
						res.TLSInfo = describeTLS(c.TLSConnectionState())
					}
					mu.Unlock()
				}
				for i := first; i < last; i++ {
					end, lat, err := sendOne(c, Sender, cfg.Rcpt, messageHeader(IDFor(cfg.Prefix, i)), body)
					if err != nil {
						fail(fmt.Errorf("message %d: %w", i, err))
						break // the connection's state is unknown
					}
					mu.Lock()
					res.DataEnd[i] = end
					accepts = append(accepts, lat)
					if t := end.Add(lat); t.After(lastOK) {
						lastOK = t
					}
					mu.Unlock()
				}
				c.Quit()
				c.Close()
			}
		}()
	}
	wg.Wait()
	res.End = lastOK
	res.Accepted = len(accepts)
	res.Accept = accepts
	res.Errors = int(errCount.Load())
	res.Conns = int(conns.Load())
	return res
}

// dialSMTP connects and, with useTLS, issues STARTTLS (go-smtp sends EHLO
// localhost before and after it).
func dialSMTP(addr string, useTLS bool, conf *tls.Config) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var c *smtp.Client
	if useTLS {
		c, err = smtp.NewClientStartTLS(conn, conf)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("starttls: %w", err)
		}
		// go-smtp shakes hands lazily, with the next command: do it now
		// (the EHLO after STARTTLS), so that the TLS facts are known.
		if err := c.Hello("localhost"); err != nil {
			c.Close()
			return nil, fmt.Errorf("ehlo after starttls: %w", err)
		}
	} else {
		c = smtp.NewClient(conn)
	}
	c.CommandTimeout = time.Minute
	c.SubmissionTimeout = time.Minute
	return c, nil
}

// sendOne sends one message; it returns when the final dot was about to
// be written and how long the 250 took from then.
func sendOne(c *smtp.Client, from, rcpt, hdr string, body []byte) (time.Time, time.Duration, error) {
	if err := c.Mail(from, nil); err != nil {
		return time.Time{}, 0, err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return time.Time{}, 0, err
	}
	w, err := c.Data()
	if err != nil {
		return time.Time{}, 0, err
	}
	if _, err := w.Write([]byte(hdr)); err != nil {
		return time.Time{}, 0, err
	}
	if _, err := w.Write(body); err != nil {
		return time.Time{}, 0, err
	}
	end := time.Now()
	if err := w.Close(); err != nil {
		return time.Time{}, 0, err
	}
	return end, time.Since(end), nil
}

// describeTLS is "TLS 1.3 X25519MLKEM768 TLS_AES_128_GCM_SHA256".
func describeTLS(cs tls.ConnectionState, ok bool) string {
	if !ok {
		return "plaintext"
	}
	return fmt.Sprintf("%s %s %s", tls.VersionName(cs.Version), cs.CurveID, tls.CipherSuiteName(cs.CipherSuite))
}

// percentile of sorted durations, nearest rank; 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	k := int(p/100*float64(len(sorted))+0.5) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(sorted) {
		k = len(sorted) - 1
	}
	return sorted[k]
}

func sortDurations(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// cmdLoad is "smtpbench load": the load generator against any server.
func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	var cfg LoadConfig
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:25", "SMTP server `host:port`")
	fs.BoolVar(&cfg.TLS, "tls", false, "STARTTLS on every connection")
	fs.IntVar(&cfg.Messages, "n", 1000, "messages in all")
	fs.IntVar(&cfg.Concurrency, "c", 1, "concurrent connections")
	fs.IntVar(&cfg.PerConn, "k", 10, "messages per connection")
	fs.IntVar(&cfg.Size, "size", 4096, "message size in bytes")
	fs.StringVar(&cfg.Rcpt, "rcpt", "bench@sink.bench", "recipient")
	fs.StringVar(&cfg.Prefix, "prefix", fmt.Sprintf("load%d-", time.Now().Unix()), "message id prefix (the "+IDHeader+" header)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "give up after")
	x25519 := fs.Bool("x25519", false, "offer only X25519 key exchange (as OpenSSL 3.0 does)")
	fs.Parse(args)
	if *x25519 {
		cfg.Groups = []tls.CurveID{tls.X25519}
	}
	r := Load(cfg)
	lat := sortDurations(r.Accept)
	fmt.Printf("accepted %d of %d in %.3fs over %d connections: %.1f msgs/s; accept latency p50 %s p99 %s; errors %d",
		r.Accepted, cfg.Messages, r.End.Sub(r.Start).Seconds(), r.Conns, r.Rate(),
		ms(percentile(lat, 50)), ms(percentile(lat, 99)), r.Errors)
	if r.FirstError != "" {
		fmt.Printf(" (first: %s)", r.FirstError)
	}
	if r.TLSInfo != "" {
		fmt.Printf("; %s", r.TLSInfo)
	}
	fmt.Println()
	if r.Accepted == 0 {
		return errors.New("nothing accepted")
	}
	return nil
}

// ms formats a duration in milliseconds with two decimals.
func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
