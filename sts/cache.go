package sts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// DefaultRecheck is how long a looked-up policy is used before the TXT
// record is asked again: deliveries to one domain do not each cost a
// lookup.
const DefaultRecheck = time.Minute

// Entry is a cached policy.
type Entry struct {
	Policy  *Policy   `json:"policy"`
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
}

// Valid reports whether the entry has not expired at now.
func (e *Entry) Valid(now time.Time) bool {
	return e != nil && e.Policy != nil && now.Before(e.Fetched.Add(e.Policy.MaxAge))
}

// Cache keeps the policies of the domains mail goes to in Caddy's
// storage, so that they survive restarts and are shared by the nodes
// that share the storage (RFC 8461 5.1: a cached policy is used until
// it expires, and a failed refetch keeps it).
type Cache struct {
	Storage certmagic.Storage
	Fetcher *Fetcher
	Logger  *zap.Logger
	// Recheck overrides DefaultRecheck (tests).
	Recheck time.Duration

	mu   sync.Mutex
	memo map[string]memo
}

type memo struct {
	entry   *Entry
	how     string
	checked time.Time
}

func storageKey(domain string) string { return "smtp/mta-sts/" + domain + ".json" }

// Lookup returns the policy in force for a domain (nil: none) and how it
// was found, in words for the log ("fetched", "cached", "kept: ..."). An
// error is a DNS failure that leaves it unknown whether the domain has a
// policy: the delivery is deferred, never sent as if it had none.
func (c *Cache) Lookup(ctx context.Context, domain string) (*Entry, string, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validPattern(domain) {
		// The domain names a storage key: nothing but a host name here
		// (a single label, an address: no MTA-STS either).
		return nil, "no policy (not a domain name)", nil
	}
	now := time.Now()
	c.mu.Lock()
	recheck := c.Recheck
	if recheck == 0 {
		recheck = DefaultRecheck
	}
	if m, ok := c.memo[domain]; ok && now.Sub(m.checked) < recheck && (m.entry == nil || m.entry.Valid(now)) {
		c.mu.Unlock()
		return m.entry, m.how, nil
	}
	c.mu.Unlock()

	cached := c.load(ctx, domain)
	if !cached.Valid(now) {
		cached = nil
	}
	id, ok, err := c.Fetcher.TXT(ctx, domain)
	var entry *Entry
	var how string
	switch {
	case err != nil && cached != nil:
		entry, how = cached, "cached (TXT lookup failed: "+err.Error()+")"
	case err != nil:
		return nil, "", err
	case !ok && cached != nil:
		entry, how = cached, "cached (no TXT record)"
	case !ok:
		how = "no policy"
	case cached != nil && cached.ID == id && now.Sub(cached.Fetched) < cached.Policy.MaxAge/2:
		entry, how = cached, "cached"
	default:
		p, ferr := c.Fetcher.Fetch(ctx, domain)
		switch {
		case ferr == nil && p.MaxAge == 0:
			// Expired as soon as fetched: no policy, and not fetched
			// again for every message (the memo below).
			how = "no policy (max_age 0)"
		case ferr == nil:
			entry, how = &Entry{Policy: p, ID: id, Fetched: now.UTC()}, "fetched"
			c.store(ctx, domain, entry)
		case cached != nil:
			entry, how = cached, "kept after a failed refetch: "+ferr.Error()
		default:
			how = "no policy (fetch failed: " + ferr.Error() + ")"
		}
		if ferr != nil && c.Logger != nil {
			c.Logger.Warn("mta-sts policy fetch failed", zap.String("domain", domain), zap.Error(ferr),
				zap.Bool("cached_policy_kept", cached != nil))
		}
	}
	c.mu.Lock()
	if c.memo == nil {
		c.memo = make(map[string]memo)
	}
	if len(c.memo) > 10000 {
		c.memo = make(map[string]memo) // bounded: start again rather than grow
	}
	c.memo[domain] = memo{entry: entry, how: how, checked: now}
	c.mu.Unlock()
	return entry, how, nil
}

// load reads a domain's cached entry, or nil.
func (c *Cache) load(ctx context.Context, domain string) *Entry {
	if c.Storage == nil {
		return nil
	}
	b, err := c.Storage.Load(ctx, storageKey(domain))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && c.Logger != nil {
			c.Logger.Warn("reading cached mta-sts policy", zap.String("domain", domain), zap.Error(err))
		}
		return nil
	}
	var e Entry
	if len(b) > 2*MaxPolicySize || json.Unmarshal(b, &e) != nil || e.Policy == nil {
		return nil
	}
	return &e
}

func (c *Cache) store(ctx context.Context, domain string, e *Entry) {
	if c.Storage == nil {
		return
	}
	b, err := json.Marshal(e)
	if err == nil {
		err = c.Storage.Store(ctx, storageKey(domain), b)
	}
	if err != nil && c.Logger != nil {
		c.Logger.Warn("storing mta-sts policy", zap.String("domain", domain), zap.Error(fmt.Errorf("%w", err)))
	}
}
