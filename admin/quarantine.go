package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-smtp/caddy-smtp/queue"
	"github.com/caddy-smtp/caddy-smtp/smtpapp"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// The quarantine's routes (listed in the package comment): the messages
// content checks quarantined, listed, shown, released into the queue or
// deleted, as package queue does them.

// QuarantineListResponse is the body of GET /smtp/quarantine.
type QuarantineListResponse struct {
	// Total is the number of quarantined messages that match the
	// filter, in all pages.
	Total int `json:"total"`
	// Offset is the first match of the page asked for, from 0.
	Offset int `json:"offset"`
	// Limit is the page size asked for (0: no limit).
	Limit int `json:"limit"`
	// Messages is the page, oldest first.
	Messages []queue.QuarantineEntry `json:"messages"`
}

// QuarantineMessageResponse is the body of GET /smtp/quarantine/{id}:
// the message's entry (with the checks' reasons) and its header section.
type QuarantineMessageResponse struct {
	queue.QuarantineEntry
	// Headers is the message's header section as stored, our
	// Received: header first, CRLF line ends, without the blank line
	// that ends it.
	Headers string `json:"headers"`
}

// ReleaseResponse is the body of POST /smtp/quarantine/{id}/release.
type ReleaseResponse struct {
	// Released is the id of the message moved into the queue; it keeps
	// its id there.
	Released string `json:"released"`
}

// handleQuarantine routes the requests under /smtp/quarantine; parts are
// the path's elements after "quarantine".
func (a *API) handleQuarantine(w http.ResponseWriter, r *http.Request, parts []string) error {
	switch {
	case len(parts) == 0:
		return a.handleQuarantineList(w, r)
	case len(parts) == 1 && parts[0] != "":
		return a.handleQuarantined(w, r, parts[0])
	case len(parts) == 2 && parts[0] != "" && parts[1] == "release":
		return a.handleRelease(w, r, parts[0])
	}
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("resource not found: %v", r.URL.Path),
	}
}

// handleQuarantineList lists the quarantine: GET /smtp/quarantine, with
// the queue listing's filters and pages.
func (a *API) handleQuarantineList(w http.ResponseWriter, r *http.Request) error {
	if err := allowMethods(w, r, http.MethodGet); err != nil {
		return err
	}
	filter, offset, limit, err := listQuery(r)
	if err != nil {
		return err
	}
	_, qs, err := quarantineOf()
	if err != nil {
		return err
	}
	entries, total, err := queue.QuarantineList(qs, filter, offset, limit)
	if err != nil {
		return internalError(err)
	}
	if entries == nil {
		entries = []queue.QuarantineEntry{}
	}
	return writeJSON(w, QuarantineListResponse{Total: total, Offset: offset, Limit: limit, Messages: entries})
}

// handleQuarantined shows (GET) or deletes (DELETE) one quarantined
// message: /smtp/quarantine/{id}.
func (a *API) handleQuarantined(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allowMethods(w, r, http.MethodGet, http.MethodDelete); err != nil {
		return err
	}
	app, qs, err := quarantineOf()
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		err := queue.QuarantineDelete(qs, id, quarantineLogger(app))
		if errors.Is(err, queue.ErrNoSuchMessage) {
			return notQuarantined(id)
		}
		if err != nil {
			return internalError(err)
		}
		return writeJSON(w, DeleteResponse{Deleted: []string{id}})
	}
	entry, headers, err := queue.QuarantineShow(qs, id)
	if errors.Is(err, queue.ErrNoSuchMessage) {
		return notQuarantined(id)
	}
	if err != nil {
		return internalError(err)
	}
	return writeJSON(w, QuarantineMessageResponse{QuarantineEntry: entry, Headers: headers})
}

// handleRelease moves a quarantined message into the queue and tells
// the delivery runner: POST /smtp/quarantine/{id}/release.
func (a *API) handleRelease(w http.ResponseWriter, r *http.Request, id string) error {
	if err := allowMethods(w, r, http.MethodPost); err != nil {
		return err
	}
	app, qs, err := quarantineOf()
	if err != nil {
		return err
	}
	err = queue.QuarantineRelease(qs, app.Spool(), id, quarantineLogger(app))
	if errors.Is(err, queue.ErrNoSuchMessage) {
		return notQuarantined(id)
	}
	if err != nil {
		return internalError(err)
	}
	app.Released(id)
	return writeJSON(w, ReleaseResponse{Released: id})
}

// quarantineOf returns the running smtp app and its quarantine.
func quarantineOf() (*smtpapp.App, *spool.Spool, error) {
	app, err := smtpApp()
	if err != nil {
		return nil, nil, err
	}
	qs := app.Quarantine()
	if qs == nil || app.Spool() == nil {
		return nil, nil, caddy.APIError{
			HTTPStatus: http.StatusServiceUnavailable,
			Err:        errors.New("the smtp app's quarantine is not open"),
		}
	}
	return app, qs, nil
}

// quarantineLogger is the logger of the app's quarantine, as its expiry
// logs: the smtp app's, in whichever logs the config sends it to.
func quarantineLogger(app *smtpapp.App) *zap.Logger {
	return caddy.ActiveContext().Logger(app).Named("quarantine")
}

func notQuarantined(id string) error {
	return caddy.APIError{
		HTTPStatus: http.StatusNotFound,
		Err:        fmt.Errorf("no such message in the quarantine: %s", id),
	}
}
