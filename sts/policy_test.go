package sts

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	p, err := Parse([]byte("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\nextension: ignored\r\n"))
	if err != nil || p.Mode != ModeEnforce || len(p.MX) != 2 || p.MaxAge != 7*24*time.Hour {
		t.Fatalf("%+v %v", p, err)
	}
	if _, err := Parse([]byte("version: STSv1\nmode: none\nmax_age: 86400\n")); err != nil {
		t.Fatalf("mode none without mx: %v", err)
	}
	for name, body := range map[string]string{
		"10 MiB":           "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n" + strings.Repeat("x", 10<<20),
		"*.*.example":      "version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 86400\n",
		"wildcard inside":  "version: STSv1\nmode: enforce\nmx: mx.*.example.com\nmax_age: 86400\n",
		"IP":               "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 86400\n",
		"max_age > a year": "version: STSv1\nmode: enforce\nmx: a.example.com\nmax_age: 31557601\n",
		"max_age huge":     "version: STSv1\nmode: enforce\nmx: a.example.com\nmax_age: 99999999999999999999\n",
		"no version":       "mode: enforce\nmx: a.example.com\nmax_age: 86400\n",
		"STSv2":            "version: STSv2\nmode: enforce\nmx: a.example.com\nmax_age: 86400\n",
		"bad mode":         "version: STSv1\nmode: strict\nmx: a.example.com\nmax_age: 86400\n",
		"no mx":            "version: STSv1\nmode: enforce\nmax_age: 86400\n",
		"no max_age":       "version: STSv1\nmode: enforce\nmx: a.example.com\n",
		"two modes":        "version: STSv1\nmode: enforce\nmode: none\nmx: a.example.com\nmax_age: 86400\n",
		"not key: value":   "version: STSv1\nmode enforce\n",
		"101 mx":           "version: STSv1\nmode: enforce\nmax_age: 86400\n" + strings.Repeat("mx: a.example.com\n", 101),
	} {
		if p, err := Parse([]byte(body)); err == nil {
			t.Errorf("%s: accepted: %+v", name, p)
		}
	}
}

func TestMatchesMX(t *testing.T) {
	p := &Policy{MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com":      true,
		"MAIL.example.com.":     true,
		"mx1.example.net":       true,
		"a.b.example.net":       false, // the wildcard is one label
		"example.net":           false,
		"evil-mail.example.com": false,
		"mail.example.com.evil": false,
	} {
		if got := p.MatchesMX(host); got != want {
			t.Errorf("MatchesMX(%q) = %v", host, got)
		}
	}
}

func TestParseTXT(t *testing.T) {
	for _, tc := range []struct {
		records []string
		id      string
		ok      bool
	}{
		{[]string{"v=STSv1; id=20260101T000000"}, "20260101T000000", true},
		{[]string{"v=STSv1;id=abc"}, "abc", true},
		{[]string{"v=STSv1 ; id=abc"}, "abc", true},
		{[]string{"v=STSv10; id=abc"}, "", false},
		{[]string{"v=spf1 -all", "v=STSv1; id=abc"}, "abc", true},
		{[]string{"v=STSv1; id=abc", "v=STSv1; id=def"}, "", false}, // two: no policy
		{[]string{"v=STSv1; id="}, "", false},
		{[]string{"v=STSv1; id=" + strings.Repeat("a", 33)}, "", false},
		{[]string{"v=STSv1; id=a-b"}, "", false},
		{[]string{"v=STSv1"}, "", false},
		{nil, "", false},
	} {
		id, ok := ParseTXT(tc.records)
		if id != tc.id || ok != tc.ok {
			t.Errorf("ParseTXT(%q) = %q %v, want %q %v", tc.records, id, ok, tc.id, tc.ok)
		}
	}
}
