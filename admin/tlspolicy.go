package admin

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/address"
	"github.com/caddy-smtp/caddy-smtp/delivery/mx"
)

// TLSPolicyResponse is the body of GET /smtp/tls-policy/<domain>: what
// the gateway would do for mail to the domain (in the spirit of
// Postfix's posttls-finger).
type TLSPolicyResponse struct {
	// Server is the server whose route was explained.
	Server string `json:"server"`
	// Via is the route's target type.
	Via string `json:"via"`
	mx.Report
}

// handleTLSPolicy answers GET /smtp/tls-policy/<domain>[?server=S][&connect=1]:
// the MX hosts, their TLSA records and DNSSEC status, the domain's
// MTA-STS policy with its cache age, and the level in force per MX;
// with connect, each host's handshake, certificate and match. Only mx
// targets are explained.
func (a *API) handleTLSPolicy(w http.ResponseWriter, r *http.Request, domain string) error {
	if err := allowMethods(w, r, http.MethodGet); err != nil {
		return err
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	domain = address.NormalizeDomain(domain)
	if domain == "" || strings.ContainsAny(domain, "/@ ") {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("%q is not a domain", domain)}
	}
	target, via, server, hostname, err := app.RouteTarget(r.URL.Query().Get("server"), domain)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	m, ok := target.(*mx.MX)
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest,
			Err: fmt.Errorf("mail for %s goes from server %s via %s; only mx targets are explained", domain, server, via)}
	}
	connect := r.URL.Query().Get("connect")
	rep := m.Explain(r.Context(), domain, hostname, connect == "1" || connect == "true")
	return writeJSON(w, TLSPolicyResponse{Server: server, Via: via, Report: rep})
}
