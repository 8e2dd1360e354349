// Package smtpapp is the smtp app of Caddy (apps.smtp): SMTP servers that
// receive mail under a TLS security level, with certificates from Caddy's
// tls app, into a durable spool.
package smtpapp

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/delivery"
	"github.com/caddy-smtp/caddy-smtp/metrics"
	"github.com/caddy-smtp/caddy-smtp/queue"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultMaxAge is how long a message may stay queued before it bounces.
const DefaultMaxAge = caddy.Duration(queue.DefaultMaxAge)

// DefaultQuarantineMaxAge is how long a quarantined message is kept.
const DefaultQuarantineMaxAge = caddy.Duration(30 * 24 * time.Hour)

// App is the smtp app: a durable queue and named SMTP servers.
type App struct {
	// The queue (spool) that accepted messages are stored in.
	Queue *QueueConfig `json:"queue,omitempty"`

	// The SMTP servers, by name. The name appears in logs, in the
	// spool records of the messages a server accepted, and is how the
	// layer4 app refers to a server.
	Servers map[string]*Server `json:"servers,omitempty"`

	ctx    caddy.Context
	logger *zap.Logger
	spool  *spool.Spool // opened in Start
	// quarantine holds quarantined messages: a spool in the queue's
	// directory, opened by Start. stopSweep ends its expiry.
	quarantine *spool.Spool
	stopSweep  func()

	// spoolPath is the spool's directory, known from Provision on
	spoolPath string
	tlsApp    *caddytls.TLS
	runner    *atomic.Pointer[queue.Runner] // set in Start; read by sessions and the admin API
	metrics   *metrics.Metrics
	// names whose certificates the tls app manages for us
	certNames map[string]struct{}
}

// QueueConfig configures the durable queue.
type QueueConfig struct {
	// Directory of the spool. Default: `smtp/queue` under Caddy's data
	// directory. Every acknowledged message is fsynced here before its
	// 250 is sent.
	Path string `json:"path,omitempty"`

	// How long a message may stay queued, retried, before it bounces.
	// Default: 5d.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// The wait after the first failed attempt; it doubles with each
	// further failure (with jitter) up to max_retry_interval.
	// Default: 5m.
	MinRetryInterval caddy.Duration `json:"min_retry_interval,omitempty"`

	// The longest wait between attempts. Default: 1h.
	MaxRetryInterval caddy.Duration `json:"max_retry_interval,omitempty"`

	// How many deliveries run at once in all. Default: 16.
	Workers int `json:"workers,omitempty"`

	// How many deliveries run at once to one destination (a domain's
	// MX hosts, a relay, a maildir). Default: 10.
	MaxPerDestination int `json:"max_per_destination,omitempty"`

	// How long deliveries under way may go on after a config reload or
	// a stop. At a reload they finish under the old config while the new
	// one delivers everything else; one still under way when the grace
	// period ends is cut (logged: "delivery cut at config unload"), stays
	// queued, and is tried again, possibly a second time to a next hop
	// that had received it. Default: 30s.
	StopGrace caddy.Duration `json:"stop_grace,omitempty"`

	// How long a quarantined message is kept before it is removed,
	// unless an administrator releases or deletes it first.
	// Default: 30d.
	QuarantineMaxAge caddy.Duration `json:"quarantine_max_age,omitempty"`

	// Keep accepted mail queued without delivering any of it, like
	// Postfix's hold queue: for maintenance, or a spool that another
	// Caddy delivers from. Turn it off (and reload) to deliver.
	Hold bool `json:"hold,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up every server, and adds automation
// policies to the tls app for the hostnames that need certificates:
// phase one of the http app's automatic HTTPS, the same way.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.runner = new(atomic.Pointer[queue.Runner])
	m, err := metrics.New(ctx.GetMetricsRegistry(), a.queueStats, a.quarantineSize)
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	a.metrics = m
	if a.Queue == nil {
		a.Queue = new(QueueConfig)
	}
	q := a.Queue
	for name, v := range map[string]int64{
		"max_age": int64(q.MaxAge), "min_retry_interval": int64(q.MinRetryInterval),
		"max_retry_interval": int64(q.MaxRetryInterval), "workers": int64(q.Workers),
		"max_per_destination": int64(q.MaxPerDestination), "stop_grace": int64(q.StopGrace),
		"quarantine_max_age": int64(q.QuarantineMaxAge),
	} {
		if v < 0 {
			return fmt.Errorf("queue.%s: must not be negative", name)
		}
	}
	if q.MaxAge == 0 {
		q.MaxAge = DefaultMaxAge
	}
	if q.QuarantineMaxAge == 0 {
		q.QuarantineMaxAge = DefaultQuarantineMaxAge
	}
	if q.Workers == 0 {
		q.Workers = queue.DefaultWorkers
	}
	if q.MaxPerDestination == 0 {
		q.MaxPerDestination = queue.DefaultMaxPerDestination
	}
	if q.MinRetryInterval != 0 && q.MaxRetryInterval != 0 && q.MinRetryInterval > q.MaxRetryInterval {
		return fmt.Errorf("queue.min_retry_interval: above max_retry_interval")
	}
	// The spool is opened in Start: `caddy validate` provisions, and
	// must neither create nor convert a spool.
	a.spoolPath = a.Queue.Path
	if a.spoolPath == "" {
		a.spoolPath = filepath.Join(caddy.AppDataDir(), "smtp", "queue")
	}
	a.spoolPath = filepath.Clean(a.spoolPath)

	needTLS := false
	for _, s := range a.Servers {
		if s.TLS != nil && s.TLS.Level != string(LevelNone) || s.TLS == nil {
			needTLS = true
		}
	}
	if needTLS {
		tlsAppIface, err := ctx.App("tls")
		if err != nil {
			return fmt.Errorf("getting tls app: %w", err)
		}
		a.tlsApp = tlsAppIface.(*caddytls.TLS)
	}

	a.certNames = make(map[string]struct{})
	for _, name := range a.serverNames() {
		s := a.Servers[name]
		if s == nil {
			return fmt.Errorf("servers.%s: empty server", name)
		}
		if err := s.provision(ctx, a, name); err != nil {
			return err
		}
		if s.tls.manageName {
			a.certNames[s.Hostname] = struct{}{}
		}
	}
	return a.addAutomationPolicies(ctx)
}

// Validate checks what needs nothing provisioned: no two servers listen
// on one address. Caddy binds with SO_REUSEPORT, so both would bind it
// and split its connections between them.
func (a *App) Validate() error {
	bound := make(map[string]string)
	for _, name := range a.serverNames() {
		if a.Servers[name] == nil {
			continue
		}
		for _, l := range a.Servers[name].Listen {
			addr, err := caddy.ParseNetworkAddressWithDefaults(l, "tcp", 25)
			if err != nil {
				continue // reported by the server's provisioning
			}
			for _, one := range addr.Expand() {
				key := one.Network + "/" + one.JoinHostPort(0)
				if other, dup := bound[key]; dup {
					return fmt.Errorf("servers.%s.listen: %s is also a listen address of server %s", name, l, other)
				}
				bound[key] = name
			}
		}
	}
	return nil
}

// serverNames returns the server names in a stable order.
func (a *App) serverNames() []string {
	names := make([]string, 0, len(a.Servers))
	for n := range a.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// addAutomationPolicies makes sure every hostname we manage has a policy
// that can get it a certificate, and that keeps the certificate's key
// across renewals unless servers.*.tls.reuse_private_keys is false: a
// published TLSA 3 1 1 record (caddy smtp-dns) names the key, and breaks
// when it changes.
//
// As in the http app, names that do not qualify for a public certificate
// (localhost, *.internal, IP addresses while no explicit policy exists)
// get a policy with Caddy's internal CA, unless a policy of the user's
// already covers them. Public names that no policy of the user's covers
// get a policy of the tls app's default issuers (ACME), which is what
// the tls app's default policy gives them, with the key reused; but when
// the user has a catch-all policy (the Caddyfile's acme_ca, email or
// acme_dns make one) they are left to it, as before: its issuers and
// challenges are the user's, and Caddy keeps no JSON of a provisioned
// policy to copy them from. Its own reuse_private_keys then applies.
func (a *App) addAutomationPolicies(ctx caddy.Context) error {
	if len(a.certNames) == 0 {
		return nil
	}
	reuse := make(map[string]bool) // by hostname
	by := make(map[string]string)  // the server that set it
	for _, name := range a.serverNames() {
		s := a.Servers[name]
		if !s.tls.manageName {
			continue
		}
		want := s.TLS == nil || s.TLS.ReusePrivateKeys == nil || *s.TLS.ReusePrivateKeys
		if other, seen := reuse[s.Hostname]; seen && other != want {
			return fmt.Errorf("servers.%s.tls.reuse_private_keys: %t, but server %s of the same hostname %s has %t", name, want, by[s.Hostname], s.Hostname, other)
		}
		reuse[s.Hostname], by[s.Hostname] = want, name
	}

	type group struct{ internal, reuse bool }
	groups := make(map[group][]string)
	explicitPolicies, catchAll := false, false
	if a.tlsApp.Automation != nil {
		explicitPolicies = len(a.tlsApp.Automation.Policies) > 0
		for _, ap := range a.tlsApp.Automation.Policies {
			if len(ap.Subjects()) == 0 {
				catchAll = true
			}
		}
	}
	// a user's policy for a name we would reuse the key of: say that
	// its TLSA record breaks at renewals, unless the policy reuses it
	userPolicy := func(name string, ap *caddytls.AutomationPolicy) {
		if reuse[name] && !ap.ReusePrivateKeys {
			a.logger.Warn("an automation policy of the tls app covers this hostname and does not reuse its private key: a published TLSA 3 1 1 record breaks at every renewal; set reuse_private_keys in that policy",
				zap.String("hostname", name), zap.Strings("policy_subjects", ap.Subjects()))
		}
	}
nameLoop:
	for name := range a.certNames {
		if a.tlsApp.Automation != nil {
			for _, ap := range a.tlsApp.Automation.Policies {
				for _, subj := range ap.Subjects() {
					if certmagic.MatchWildcard(name, subj) {
						userPolicy(name, ap)
						continue nameLoop
					}
				}
			}
		}
		if catchAll && certmagic.SubjectQualifiesForPublicCert(name) && !(certmagic.SubjectIsIP(name) && !explicitPolicies) {
			for _, ap := range a.tlsApp.Automation.Policies {
				if len(ap.Subjects()) == 0 {
					userPolicy(name, ap)
					break
				}
			}
		}
		switch {
		case !certmagic.SubjectQualifiesForPublicCert(name) || (certmagic.SubjectIsIP(name) && !explicitPolicies):
			groups[group{true, reuse[name]}] = append(groups[group{true, reuse[name]}], name)
		case !catchAll && reuse[name]:
			// without reuse, the tls app's default policy is this one
			groups[group{false, true}] = append(groups[group{false, true}], name)
		}
	}
	// internal names first, keys reused first: a stable order of policies
	for _, g := range []group{{true, true}, {true, false}, {false, true}} {
		names := groups[g]
		if len(names) == 0 {
			continue
		}
		sort.Strings(names)
		ap := &caddytls.AutomationPolicy{SubjectsRaw: names, ReusePrivateKeys: g.reuse}
		if g.internal {
			issuer := new(caddytls.InternalIssuer)
			if err := issuer.Provision(ctx); err != nil {
				return fmt.Errorf("provisioning internal issuer: %w", err)
			}
			ap.Issuers = []certmagic.Issuer{issuer}
		}
		if err := a.tlsApp.AddAutomationPolicy(ap); err != nil {
			return fmt.Errorf("adding automation policy for %v: %w", names, err)
		}
	}
	return nil
}

// Start opens the spool, binds every server's listeners, then asks the
// tls app to manage the hostnames' certificates (phase two of automatic
// HTTPS).
func (a *App) Start() error {
	sp, err := spool.Open(a.spoolPath)
	if err != nil {
		return fmt.Errorf("queue.path: %w", err)
	}
	a.spool = sp
	qs, err := spool.Open(a.quarantinePath())
	if err != nil {
		sp.Close()
		return fmt.Errorf("queue.path: the quarantine: %w", err)
	}
	a.quarantine = qs
	a.stopSweep = a.sweepQuarantine(time.Duration(a.Queue.QuarantineMaxAge))
	for _, name := range a.serverNames() {
		if err := a.Servers[name].start(a.ctx); err != nil {
			return errors.Join(err, a.Stop())
		}
	}
	if len(a.certNames) > 0 {
		if err := a.tlsApp.Manage(a.certNames); err != nil {
			return errors.Join(fmt.Errorf("managing certificates: %w", err), a.Stop())
		}
	}
	if !a.Queue.Hold {
		q := a.Queue
		r := queue.New(queue.Options{
			Spool:             a.spool,
			Router:            routing{a},
			Metrics:           a.metrics,
			Logger:            a.logger.Named("queue"),
			MaxAge:            time.Duration(q.MaxAge),
			MinRetryInterval:  time.Duration(q.MinRetryInterval),
			MaxRetryInterval:  time.Duration(q.MaxRetryInterval),
			MaxPerDestination: q.MaxPerDestination,
			StopGrace:         time.Duration(q.StopGrace),
		})
		r.Start(q.Workers)
		a.runner.Store(r)
	}
	a.logger.Info("smtp app started", zap.String("queue", a.spool.Dir()), zap.Int("servers", len(a.Servers)))
	return nil
}

// Stop closes the listeners and stops delivering; sessions in progress
// finish on their own, and what they queue is delivered by the next
// config's runner. Deliveries under way get queue.stop_grace to finish.
func (a *App) Stop() error {
	var errs []error
	for _, s := range a.Servers {
		if err := s.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if r := a.runner.Swap(nil); r != nil {
		r.Stop(a.successor())
	}
	if a.stopSweep != nil {
		a.stopSweep()
	}
	return errors.Join(errs...)
}

// successor is the runner of the config that replaced this one (Caddy
// calls Stop after the new config started and became the active one)
// on the same spool, or nil.
func (a *App) successor() *queue.Runner {
	cur, err := caddy.ActiveContext().AppIfConfigured("smtp")
	if err != nil {
		return nil
	}
	next, ok := cur.(*App)
	if !ok || next == a || next.spoolPath != a.spoolPath {
		return nil
	}
	return next.runner.Load()
}

// Cleanup releases the spool's files once the app is gone (after Stop;
// in a reload, after the new config started).
func (a *App) Cleanup() error {
	var errs []error
	if a.spool != nil {
		errs = append(errs, a.spool.Close())
	}
	if a.quarantine != nil {
		errs = append(errs, a.quarantine.Close())
	}
	return errors.Join(errs...)
}

// queued tells the delivering runner about a new record: ours while we
// run, else the current config's (a session that outlived a reload).
func (a *App) queued(id string) {
	if r := a.runner.Load(); r != nil {
		r.Enqueue(id)
		return
	}
	if cur, err := caddy.ActiveContext().AppIfConfigured("smtp"); err == nil {
		if next, ok := cur.(*App); ok && next != a {
			if r := next.runner.Load(); r != nil {
				r.Enqueue(id)
			}
		}
	}
}

// routing is what the queue needs of the app (queue.Router): the
// servers' hostnames and routes, by server name.
type routing struct{ a *App }

func (r routing) Hostname(server string) (string, bool) {
	if s := r.a.Servers[server]; s != nil {
		return s.Hostname, true
	}
	return "", false
}

func (r routing) Route(server, rcpt string) (int, delivery.Deliverer, string) {
	s := r.a.Servers[server]
	if s == nil {
		return -1, nil, ""
	}
	i := s.routeFor(rcpt)
	if i < 0 {
		return -1, nil, ""
	}
	return i, s.Routes[i].deliverer, s.Routes[i].via
}

// The queue operations of the admin API (package queue does them).

// QueueList lists queued messages (queue.List).
func (a *App) QueueList(filter queue.Filter, offset, limit int) ([]queue.Entry, int, error) {
	return queue.List(a.spool, filter, offset, limit, a.isActive)
}

// QueueShow returns one message's entry and its header section.
func (a *App) QueueShow(id string) (queue.Entry, string, error) {
	return queue.Show(a.spool, id, a.isActive)
}

// QueueFlush makes deferred recipients due now and wakes delivery, for
// one message or (id "") all. It returns how many messages it flushed.
func (a *App) QueueFlush(id string) (int, error) {
	n, due, err := queue.Flush(a.spool, id)
	if err != nil {
		return 0, err
	}
	if r := a.runner.Load(); r != nil {
		for _, qid := range due {
			r.Reschedule(qid, time.Time{})
		}
	}
	a.logger.Info("queue flushed", zap.String("queue_id", id), zap.Int("messages", n))
	return n, nil
}

// QueueDelete removes messages without notice to anyone (postsuper -d)
// and returns the ids it removed.
func (a *App) QueueDelete(ids []string) ([]string, error) {
	return queue.Delete(a.spool, ids, a.logger)
}

// QueueBounce fails every pending recipient of a message now and sends
// the sender a bounce (Postfix's "bounce now").
func (a *App) QueueBounce(id string) error {
	bounceID, err := queue.BounceNow(a.spool, id, routing{a}.Hostname, a.logger.Named("queue"), a.metrics)
	if r := a.runner.Load(); r != nil && bounceID != "" {
		r.Reschedule(bounceID, time.Time{})
	}
	return err
}

func (a *App) isActive(id string) bool {
	r := a.runner.Load()
	return r != nil && r.Active(id)
}

// RouteTarget finds the delivery target that mail for domain would take
// from server (or, with server "", from the first server by name with a
// route for it), for tools that explain deliveries: the target, its type
// name, the server's name and hostname.
func (a *App) RouteTarget(server, domain string) (target delivery.Deliverer, via, name, hostname string, err error) {
	names := a.serverNames()
	if server != "" {
		if a.Servers[server] == nil {
			return nil, "", "", "", fmt.Errorf("no server %q", server)
		}
		names = []string{server}
	}
	for _, n := range names {
		s := a.Servers[n]
		if i := s.routeFor("postmaster@" + domain); i >= 0 {
			return s.Routes[i].deliverer, s.Routes[i].via, n, s.Hostname, nil
		}
	}
	return nil, "", "", "", fmt.Errorf("no route for %s", domain)
}

// Server returns the server of that name, or nil.
func (a *App) Server(name string) *Server { return a.Servers[name] }

// Spool returns the app's spool.
func (a *App) Spool() *spool.Spool { return a.spool }

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// queueStats counts the queue and the age of its oldest record; queue
// ids begin with their arrival time, so no envelope is read.
func (a *App) queueStats() (int, time.Duration) {
	// The directory, not a.spool: a scrape may come while Start opens it.
	ids, err := spool.ListIDs(a.spoolPath)
	if err != nil || len(ids) == 0 {
		return 0, 0
	}
	// A stray file with a shorter name must not break the scrape.
	for _, id := range ids {
		if t, ok := spool.IDTime(id); ok {
			return len(ids), time.Since(t)
		}
	}
	return len(ids), 0
}
