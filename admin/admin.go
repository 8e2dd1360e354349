// Package admin is the smtp app's endpoint on Caddy's admin API
// (admin.api.smtp): queue administration over HTTP, what Postfix's
// mailq, postqueue -f / -i, postsuper -d and "bounce now" do, and the
// quarantine's (list, show, release, delete).
//
// The routes, under the admin listener (localhost:2019 by default):
//
//	GET    /smtp/queue?sender=&recipient=&domain=&offset=&limit=
//	GET    /smtp/queue/{id}
//	POST   /smtp/queue/flush
//	POST   /smtp/queue/{id}/flush
//	DELETE /smtp/queue/{id}
//	POST   /smtp/queue/delete          {"ids": ["...", ...]}
//	POST   /smtp/queue/{id}/bounce
//	GET    /smtp/quarantine?sender=&recipient=&domain=&offset=&limit=
//	GET    /smtp/quarantine/{id}
//	POST   /smtp/quarantine/{id}/release
//	DELETE /smtp/quarantine/{id}
//
// Responses are JSON. Errors are JSON too, {"error": "..."}, with the
// status Caddy's admin API uses: 400 for bad input, 404 for an unknown
// queue id, quarantined id or path, 405 for a wrong method, 409 for a
// bounce of a message with nothing left to bounce, 503 when no smtp app
// is running.
package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-smtp/caddy-smtp/queue"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
)

func init() {
	caddy.RegisterModule(API{})
}

// API is the admin.api.smtp module: the smtp app's queue on Caddy's
// admin endpoint. It has no configuration; like every admin.api module
// it is mounted whenever the admin endpoint runs, and it finds the
// running smtp app at request time, so that it always acts on the
// current config's queue.
type API struct{}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.smtp",
		New: func() caddy.Module { return new(API) },
	}
}

// Routes returns the admin routes of the smtp app.
func (a *API) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{
			Pattern: endpointBase,
			Handler: caddy.AdminHandlerFunc(a.handleAPIEndpoints),
		},
	}
}

// endpointBase is the base admin endpoint under which all smtp admin
// endpoints exist.
const endpointBase = "/smtp/"

// maxRequestBody bounds the JSON body of a request (a list of ids).
const maxRequestBody = 1 << 20

// QueueListResponse is the body of GET /smtp/queue.
type QueueListResponse struct {
	// Total is the number of queued messages that match the filter, in
	// all pages.
	Total int `json:"total"`
	// Offset and Limit are the page asked for (limit 0: no limit).
	Offset int `json:"offset"`
	Limit  int `json:"limit"`
	// Hold reports that the queue is on hold: nothing is delivered.
	Hold bool `json:"hold,omitempty"`
	// Messages is the page, oldest first.
	Messages []queue.Entry `json:"messages"`
}

// MessageResponse is the body of GET /smtp/queue/{id}: the message's
// queue entry and its header section.
type MessageResponse struct {
	queue.Entry
	// Headers is the message's header section as stored, our
	// Received: header first, CRLF line ends, without the blank line
	// that ends it.
	Headers string `json:"headers"`
}

// FlushResponse is the body of POST /smtp/queue/flush and
// POST /smtp/queue/{id}/flush.
type FlushResponse struct {
	// Flushed is how many messages were made due now.
	Flushed int `json:"flushed"`
}

// DeleteRequest is the body of POST /smtp/queue/delete.
type DeleteRequest struct {
	// IDs are the queue ids to delete.
	IDs []string `json:"ids"`
}

// DeleteResponse is the body of DELETE /smtp/queue/{id} and
// POST /smtp/queue/delete.
type DeleteResponse struct {
	// Deleted are the ids removed from the queue.
	Deleted []string `json:"deleted"`
	// NotFound are the ids asked for that were not queued.
	NotFound []string `json:"not_found,omitempty"`
}

// BounceResponse is the body of POST /smtp/queue/{id}/bounce.
type BounceResponse struct {
	// Bounced is the queue id of the message returned to its sender.
	Bounced string `json:"bounced"`
}

// handleAPIEndpoints routes API requests within endpointBase.
func (a *API) handleAPIEndpoints(w http.ResponseWriter, r *http.Request) error {
	uri := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, endpointBase), "/")
	parts := strings.Split(uri, "/")
	switch {
	case len(parts) == 2 && parts[0] == "tls-policy" && parts[1] != "":
		return a.handleTLSPolicy(w, r, parts[1])
	case len(parts) == 1 && parts[0] == "dns":
		return a.handleDNS(w, r)
	case len(parts) == 1 && parts[0] == "queue":
		return a.handleList(w, r)
	case len(parts) == 2 && parts[0] == "queue" && parts[1] == "flush":
		return a.handleFlush(w, r, "")
	case len(parts) == 2 && parts[0] == "queue" && parts[1] == "delete":
		return a.handleDeleteMany(w, r)
	case len(parts) == 2 && parts[0] == "queue" && parts[1] != "":
		return a.handleMessage(w, r, parts[1])
	case len(parts) == 3 && parts[0] == "queue" && parts[1] != "" && parts[2] == "flush":
		return a.handleFlush(w, r, parts[1])
	case len(parts) == 3 && parts[0] == "queue" && parts[1] != "" && parts[2] == "bounce":
		return a.handleBounce(w, r, parts[1])
	case parts[0] == "quarantine":
		return a.handleQuarantine(w, r, parts[1:])
	}
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("resource not found: %v", r.URL.Path),
	}
}

// handleList lists the queue: GET /smtp/queue.
func (a *API) handleList(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(w, r, http.MethodGet); err != nil {
		return err
	}
	filter, offset, limit, err := listQuery(r)
	if err != nil {
		return err
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	entries, total, err := app.QueueList(filter, offset, limit)
	if err != nil {
		return internalError(fmt.Errorf("listing the queue: %w", err))
	}
	if entries == nil {
		entries = []queue.Entry{}
	}
	return writeJSON(w, QueueListResponse{
		Total:    total,
		Offset:   offset,
		Limit:    limit,
		Hold:     app.Queue != nil && app.Queue.Hold,
		Messages: entries,
	})
}

// listQuery reads a listing's query: the filter (sender, recipient,
// domain), offset and limit.
func listQuery(r *http.Request) (f queue.Filter, offset, limit int, err error) {
	q := r.URL.Query()
	if offset, err = nonNegative(q, "offset"); err != nil {
		return f, 0, 0, err
	}
	if limit, err = nonNegative(q, "limit"); err != nil {
		return f, 0, 0, err
	}
	return queue.Filter{Sender: q.Get("sender"), Recipient: q.Get("recipient"), Domain: q.Get("domain")}, offset, limit, nil
}

// handleMessage shows (GET) or deletes (DELETE) one message:
// /smtp/queue/{id}.
func (a *API) handleMessage(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allowMethods(w, r, http.MethodGet, http.MethodDelete); err != nil {
		return err
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		deleted, err := app.QueueDelete([]string{id})
		if err != nil {
			return internalError(fmt.Errorf("deleting %s: %w", id, err))
		}
		if len(deleted) == 0 {
			return notFound(id)
		}
		return writeJSON(w, DeleteResponse{Deleted: deleted})
	}
	entry, headers, err := app.QueueShow(id)
	if errors.Is(err, queue.ErrNoSuchMessage) {
		return notFound(id)
	}
	if err != nil {
		return internalError(fmt.Errorf("reading %s: %w", id, err))
	}
	return writeJSON(w, MessageResponse{Entry: entry, Headers: headers})
}

// handleFlush makes deferred mail due now: POST /smtp/queue/flush for
// all, POST /smtp/queue/{id}/flush for one message.
func (a *API) handleFlush(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allowMethods(w, r, http.MethodPost); err != nil {
		return err
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	n, err := app.QueueFlush(id)
	if errors.Is(err, queue.ErrNoSuchMessage) {
		return notFound(id)
	}
	if err != nil {
		return internalError(fmt.Errorf("flushing the queue: %w", err))
	}
	return writeJSON(w, FlushResponse{Flushed: n})
}

// handleDeleteMany deletes the messages listed in the body:
// POST /smtp/queue/delete.
func (a *API) handleDeleteMany(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(w, r, http.MethodPost); err != nil {
		return err
	}
	var req DeleteRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return caddy.APIError{
			HTTPStatus: http.StatusBadRequest,
			Err:        fmt.Errorf("decoding request body: %v", err),
		}
	}
	if len(req.IDs) == 0 {
		return caddy.APIError{
			HTTPStatus: http.StatusBadRequest,
			Err:        errors.New(`no queue ids given: the body must be {"ids": ["..."]}`),
		}
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	deleted, err := app.QueueDelete(req.IDs)
	if err != nil {
		return internalError(fmt.Errorf("deleting (%d deleted before the error): %w", len(deleted), err))
	}
	resp := DeleteResponse{Deleted: deleted}
	if resp.Deleted == nil {
		resp.Deleted = []string{}
	}
	done := make(map[string]bool, len(deleted))
	for _, id := range deleted {
		done[id] = true
	}
	for _, id := range req.IDs {
		if !done[id] {
			resp.NotFound = append(resp.NotFound, id)
			done[id] = true // list a repeated id once
		}
	}
	return writeJSON(w, resp)
}

// handleBounce returns a message to its sender now:
// POST /smtp/queue/{id}/bounce.
func (a *API) handleBounce(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allowMethods(w, r, http.MethodPost); err != nil {
		return err
	}
	app, err := smtpApp()
	if err != nil {
		return err
	}
	err = app.QueueBounce(id)
	switch {
	case errors.Is(err, queue.ErrNoSuchMessage):
		return notFound(id)
	case errors.Is(err, queue.ErrNothingPending):
		return caddy.APIError{
			HTTPStatus: http.StatusConflict,
			Err:        fmt.Errorf("message %s has no pending recipient to bounce", id),
		}
	case err != nil:
		return internalError(fmt.Errorf("bouncing %s: %w", id, err))
	}
	return writeJSON(w, BounceResponse{Bounced: id})
}

// smtpApp returns the running config's smtp app.
func smtpApp() (*smtpapp.App, error) {
	appIface, err := caddy.ActiveContext().AppIfConfigured("smtp")
	if err != nil {
		return nil, caddy.APIError{
			HTTPStatus: http.StatusServiceUnavailable,
			Err:        fmt.Errorf("no smtp app is running: %v", err),
		}
	}
	app, ok := appIface.(*smtpapp.App)
	if !ok {
		return nil, caddy.APIError{
			HTTPStatus: http.StatusServiceUnavailable,
			Err:        fmt.Errorf("the smtp app is of an unexpected type %T", appIface),
		}
	}
	return app, nil
}

// allowMethods answers 405, with an Allow header, to any other method.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) error {
	for _, m := range methods {
		if r.Method == m {
			return nil
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method not allowed: %v", r.Method),
	}
}

// nonNegative parses an optional non-negative integer query parameter.
func nonNegative(q map[string][]string, name string) (int, error) {
	v := ""
	if vs := q[name]; len(vs) > 0 {
		v = vs[0]
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, caddy.APIError{
			HTTPStatus: http.StatusBadRequest,
			Err:        fmt.Errorf("invalid %s %q: must be a non-negative integer", name, v),
		}
	}
	return n, nil
}

func notFound(id string) error {
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("%w: %s", queue.ErrNoSuchMessage, id),
	}
}

func internalError(err error) error {
	return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
}

// writeJSON writes v as the JSON response; addresses and headers keep
// their "<" and ">" (no HTML escaping: this is not a web page).
func writeJSON(w http.ResponseWriter, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return internalError(err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(buf.Bytes())
	return nil
}

// Interface guards
var _ caddy.AdminRouter = (*API)(nil)
