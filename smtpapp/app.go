// Package smtpapp is the smtp app of Caddy (apps.smtp): SMTP servers that
// receive mail under a TLS security level, with certificates from Caddy's
// tls app, into a durable spool.
package smtpapp

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/spool"
)

func init() {
	caddy.RegisterModule(App{})
}

// DefaultMaxAge is how long a message may stay queued before it bounces.
const DefaultMaxAge = caddy.Duration(5 * 24 * 60 * 60 * 1e9)

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
	spool  *spool.Spool
	tlsApp *caddytls.TLS
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
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets up the spool and every server, and adds automation
// policies to the tls app for the hostnames that need certificates:
// phase one of the http app's automatic HTTPS, the same way.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	if a.Queue == nil {
		a.Queue = new(QueueConfig)
	}
	if a.Queue.MaxAge < 0 {
		return fmt.Errorf("queue.max_age: must not be negative")
	}
	if a.Queue.MaxAge == 0 {
		a.Queue.MaxAge = DefaultMaxAge
	}
	path := a.Queue.Path
	if path == "" {
		path = filepath.Join(caddy.AppDataDir(), "smtp", "queue")
	}
	sp, err := spool.Open(path)
	if err != nil {
		return fmt.Errorf("queue.path: %w", err)
	}
	a.spool = sp

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
// that can get it a certificate. As in the http app, names that do not
// qualify for a public certificate (localhost, *.internal, IP addresses
// while no explicit policy exists) get a policy with Caddy's internal
// CA, unless a policy of the user's already covers them; public names
// are left to the user's or the tls app's default (ACME) policy.
func (a *App) addAutomationPolicies(ctx caddy.Context) error {
	if len(a.certNames) == 0 {
		return nil
	}
	var internal []string
	explicitPolicies := a.tlsApp.Automation != nil && len(a.tlsApp.Automation.Policies) > 0
nameLoop:
	for name := range a.certNames {
		if a.tlsApp.Automation != nil {
			for _, ap := range a.tlsApp.Automation.Policies {
				for _, subj := range ap.Subjects() {
					if certmagic.MatchWildcard(name, subj) {
						continue nameLoop
					}
				}
			}
		}
		if !certmagic.SubjectQualifiesForPublicCert(name) || (certmagic.SubjectIsIP(name) && !explicitPolicies) {
			internal = append(internal, name)
		}
	}
	if len(internal) == 0 {
		return nil
	}
	sort.Strings(internal)
	issuer := new(caddytls.InternalIssuer)
	if err := issuer.Provision(ctx); err != nil {
		return fmt.Errorf("provisioning internal issuer: %w", err)
	}
	ap := &caddytls.AutomationPolicy{SubjectsRaw: internal, Issuers: []certmagic.Issuer{issuer}}
	if err := a.tlsApp.AddAutomationPolicy(ap); err != nil {
		return fmt.Errorf("adding automation policy for %v: %w", internal, err)
	}
	return nil
}

// Start binds every server's listeners, then asks the tls app to manage
// the hostnames' certificates (phase two of automatic HTTPS).
func (a *App) Start() error {
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
	a.logger.Info("smtp app started", zap.String("queue", a.spool.Dir()), zap.Int("servers", len(a.Servers)))
	return nil
}

// Stop closes the listeners. Sessions in progress finish on their own.
func (a *App) Stop() error {
	var errs []error
	for _, s := range a.Servers {
		if err := s.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Spool returns the app's spool.
func (a *App) Spool() *spool.Spool { return a.spool }

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
