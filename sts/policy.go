// Package sts is MTA-STS (RFC 8461) on the sending side: the policy
// format, the _mta-sts TXT record, fetching a domain's policy over
// HTTPS, and a durable cache in Caddy's storage. Publishing a policy is
// package mtasts (an HTTP handler).
//
// Written here: no maintained Go library does MTA-STS with a pluggable
// store (chasquid's internal/sts is not importable and keeps a private
// directory); this one stores in certmagic.Storage so that nodes sharing
// Caddy's storage share the cache.
package sts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bounds on a policy: what a policy host sends is untrusted input.
const (
	// MaxPolicySize is the largest policy body read (RFC 8461 3.3:
	// senders may limit it; 64 KiB is the suggested bound).
	MaxPolicySize = 64 << 10
	// MaxAge is the longest max_age a policy may have (RFC 8461 3.2).
	MaxAge = 31557600 * time.Second
	maxMX  = 100
)

// Modes of a policy.
const (
	ModeEnforce = "enforce"
	ModeTesting = "testing"
	ModeNone    = "none"
)

// Policy is a domain's MTA-STS policy.
type Policy struct {
	Mode   string        `json:"mode"`
	MX     []string      `json:"mx"`
	MaxAge time.Duration `json:"max_age"`
}

// Parse reads a policy body (RFC 8461 3.2): "key: value" lines ending in
// CRLF or LF; version STSv1, mode, max_age and (unless mode is none) at
// least one mx are required. Unknown keys are ignored, as the RFC says.
func Parse(body []byte) (*Policy, error) {
	if len(body) > MaxPolicySize {
		return nil, fmt.Errorf("policy larger than %d bytes", MaxPolicySize)
	}
	p := &Policy{}
	var version string
	var haveMaxAge bool
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 4096), MaxPolicySize)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("policy line %q is not key: value", line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch key {
		case "version":
			if version != "" {
				return nil, errors.New("policy has two version lines")
			}
			version = value
		case "mode":
			if p.Mode != "" {
				return nil, errors.New("policy has two mode lines")
			}
			p.Mode = value
		case "max_age":
			if haveMaxAge {
				return nil, errors.New("policy has two max_age lines")
			}
			n, err := strconv.ParseUint(value, 10, 64)
			if err != nil || len(value) > 10 {
				return nil, fmt.Errorf("policy max_age %q is not a number of seconds", value)
			}
			if time.Duration(n)*time.Second > MaxAge {
				return nil, fmt.Errorf("policy max_age %d is over a year (RFC 8461: at most 31557600)", n)
			}
			p.MaxAge, haveMaxAge = time.Duration(n)*time.Second, true
		case "mx":
			if len(p.MX) == maxMX {
				return nil, fmt.Errorf("policy has more than %d mx lines", maxMX)
			}
			pat := strings.ToLower(strings.TrimSuffix(value, "."))
			if !validPattern(pat) {
				return nil, fmt.Errorf("policy mx %q is not a host name or *.name", value)
			}
			p.MX = append(p.MX, pat)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	switch {
	case version != "STSv1":
		return nil, fmt.Errorf("policy version %q is not STSv1", version)
	case p.Mode != ModeEnforce && p.Mode != ModeTesting && p.Mode != ModeNone:
		return nil, fmt.Errorf("policy mode %q is not one of enforce, testing, none", p.Mode)
	case !haveMaxAge:
		return nil, errors.New("policy has no max_age")
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return nil, errors.New("policy has no mx")
	}
	return p, nil
}

// validPattern: a host name, or "*." and a host name (the wildcard is
// one whole leftmost label: RFC 8461 4.1).
func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 || !strings.Contains(p, ".") {
		return false
	}
	if last := p[strings.LastIndexByte(p, '.')+1:]; strings.Trim(last, "0123456789") == "" {
		return false // an IP address, or a name no top-level domain has
	}
	for _, label := range strings.Split(p, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// MatchesMX reports whether an MX host name is one the policy names: the
// same name, or one more label in front of a "*." pattern's name.
func (p *Policy) MatchesMX(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			if label, parent, found := strings.Cut(host, "."); found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// ParseTXT picks the policy id out of a domain's _mta-sts TXT records
// (RFC 8461 3.1): records not starting with "v=STSv1" are ignored, and
// unless exactly one is left, and it has a valid id, the domain has no
// policy (ok false).
func ParseTXT(records []string) (id string, ok bool) {
	var sts []string
	for _, r := range records {
		// RFC 8461 3.1: "v=STSv1", optional whitespace, then ";".
		if rest, ok := strings.CutPrefix(r, "v=STSv1"); ok && (rest == "" || strings.HasPrefix(strings.TrimLeft(rest, " \t"), ";")) {
			sts = append(sts, r)
		}
	}
	if len(sts) != 1 {
		return "", false
	}
	for _, field := range strings.Split(sts[0], ";") {
		k, v, found := strings.Cut(strings.TrimSpace(field), "=")
		if found && strings.TrimSpace(k) == "id" {
			v = strings.TrimSpace(v)
			if len(v) < 1 || len(v) > 32 {
				return "", false
			}
			for _, c := range v {
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
					return "", false
				}
			}
			return v, true
		}
	}
	return "", false
}
