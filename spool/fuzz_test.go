package spool

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeEnvelope feeds random bytes to DecodeEnvelope and asserts:
//
//   - it never panics;
//   - when it succeeds, the envelope has the current version, a valid
//     id (validID) and at least one recipient, json.Marshal encodes it,
//     and decoding that encoding gives an equal envelope (DeepEqual after
//     normalizeEnvelope: times compared as instants, empty and nil
//     Notify lists alike), which again re-encodes to the same bytes.
//
// The seeds in testdata/fuzz/FuzzDecodeEnvelope are envelopes as the
// spool writes them, and near misses.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"id":"019A2B3C4D5E6F7A8B9C","server":"mx","from":"a@remote.test","recipients":[{"address":"u@example.com","status":"queued"}],"size":42,"client":{"ip":"127.0.0.1","helo":"client.test","protocol":"ESMTP"},"received":"2025-01-02T03:04:05.123456789Z"}`,
		`{"version":1,"id":"x","from":"","recipients":[{"address":"u@example.com","notify":["FAILURE","DELAY"],"orcpt":"rfc822;u@example.com","status":"deferred","attempts":3,"next_attempt":"2025-01-02T04:00:00+01:00","last_error":"451 4.3.0 try later","code":"4.3.0","remote":"mx.example.com[192.0.2.1]:25"},{"address":"v@example.com","status":"sent","done":"2025-01-02T03:05:00-08:00"}],"body":"8BITMIME","smtputf8":true,"requiretls":true,"envid":"QQ314159","ret":"HDRS","client":{"ip":"::1","helo":"h","protocol":"ESMTPSA","auth":"user","tls":{"version":"TLS 1.3","cipher":"TLS_AES_128_GCM_SHA256","server_name":"mx.example.com","peer_subject":"CN=client","peer_verified":true}},"received":"2025-01-02T03:04:05+00:00"}`,
		`{"version":2,"id":"x","recipients":[{}]}`,
		`{"version":1,"id":"../etc/passwd","recipients":[{}]}`,
		`{"version":1,"id":"x","recipients":[]}`,
		`{"version":1,"id":"x","recipients":[{"notify":[]}],"received":"0001-01-01T00:00:00Z"}`,
		`{"Version":1,"ID":"x","RECIPIENTS":[{"Address":"u"}],"version":1}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := DecodeEnvelope(data)
		if err != nil {
			if env != nil {
				t.Fatalf("DecodeEnvelope returned an envelope with an error: %v", err)
			}
			return
		}
		if env.Version != EnvelopeVersion || !validID(env.ID) || len(env.Recipients) == 0 {
			t.Fatalf("DecodeEnvelope accepted version %d, id %q, %d recipients", env.Version, env.ID, len(env.Recipients))
		}
		enc, err := json.Marshal(env)
		if err != nil {
			t.Fatalf("a decoded envelope does not encode: %v", err)
		}
		env2, err := DecodeEnvelope(enc)
		if err != nil {
			t.Fatalf("a re-encoded envelope does not decode: %v\n%s", err, enc)
		}
		if !validID(env2.ID) {
			t.Fatalf("invalid id %q after a round trip", env2.ID)
		}
		n1, n2 := normalizeEnvelope(env), normalizeEnvelope(env2)
		if !reflect.DeepEqual(n1, n2) {
			t.Fatalf("round trip changes the envelope:\nbefore %+v\nafter  %+v\njson %s", n1, n2, enc)
		}
		enc2, err := json.Marshal(env2)
		if err != nil {
			t.Fatalf("encoding the round-tripped envelope: %v", err)
		}
		if string(enc) != string(enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
	})
}

// normalizeEnvelope returns a deep copy of env for comparison: times in
// UTC (a decoded time keeps its offset, or becomes time.Local when the
// offset is the local zone's; the instant is what counts), and an empty
// Notify list as nil (omitempty drops it, so it decodes as nil). Nil
// recipients stay nil.
func normalizeEnvelope(env *Envelope) Envelope {
	c := *env
	c.Received = c.Received.UTC()
	if env.Client.TLS != nil {
		tlsCopy := *env.Client.TLS
		c.Client.TLS = &tlsCopy
	}
	c.Recipients = make([]*Recipient, len(env.Recipients))
	for i, r := range env.Recipients {
		if r == nil {
			continue
		}
		rc := *r
		rc.NextAttempt = utcOrZero(rc.NextAttempt)
		rc.Done = utcOrZero(rc.Done)
		if len(rc.Notify) == 0 {
			rc.Notify = nil
		}
		c.Recipients[i] = &rc
	}
	return c
}

// utcOrZero is t in UTC, or the zero time when t is zero (omitzero
// drops any time whose IsZero holds, in any zone).
func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}
