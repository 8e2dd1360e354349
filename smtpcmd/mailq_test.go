package smtpcmd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-smtp/caddy-smtp/admin"
	"github.com/caddy-smtp/caddy-smtp/queue"
	"github.com/caddy-smtp/caddy-smtp/smtpcmd"
	"github.com/caddy-smtp/caddy-smtp/spool"
)

// TestMailqFormat: with Postfix-length queue ids the listing is
// Postfix's mailq output byte for byte (this one is Postfix's, from a
// real queue); recipients already done are not listed, a reason is
// given once for the recipients it concerns, the null sender is
// MAILER-DAEMON.
func TestMailqFormat(t *testing.T) {
	rcpt := func(addr, status, lastError string) *spool.Recipient {
		return &spool.Recipient{Address: addr, Status: status, LastError: lastError}
	}
	list := admin.QueueListResponse{Total: 2, Messages: []queue.Entry{
		{ID: "1C92E7D564", Size: 4357, Received: time.Date(2020, 1, 28, 6, 58, 20, 0, time.Local), Sender: "root",
			Recipients: []*spool.Recipient{rcpt("ubuntu-upgrades@example.com", spool.StatusQueued, "")}},
		{ID: "36BF87D65A", Size: 1363, Received: time.Date(2020, 2, 12, 6, 10, 2, 0, time.Local), Sender: "root",
			Recipients: []*spool.Recipient{rcpt("ubuntu-upgrades@example.com", spool.StatusQueued, "")}},
	}}
	const postfix = `-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
1C92E7D564     4357 Tue Jan 28 06:58:20  root
                                         ubuntu-upgrades@example.com

36BF87D65A     1363 Wed Feb 12 06:10:02  root
                                         ubuntu-upgrades@example.com

-- 5 Kbytes in 2 Requests.
`
	var b strings.Builder
	if err := smtpcmd.WriteMailq(&b, list, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != postfix {
		t.Errorf("got:\n%s\nwant (Postfix's):\n%s", b.String(), postfix)
	}

	const timeout = "connect to mx.example.net[192.0.2.1]:25: Connection timed out"
	list = admin.QueueListResponse{Total: 3, Offset: 0, Hold: true, Messages: []queue.Entry{
		{ID: "4A1B2C3D4E", Size: 2048, Received: time.Date(2020, 2, 12, 6, 10, 2, 0, time.Local), Sender: "",
			Recipients: []*spool.Recipient{
				rcpt("done@example.net", spool.StatusSent, ""),
				rcpt("a@example.net", spool.StatusDeferred, timeout),
				rcpt("b@example.net", spool.StatusDeferred, timeout),
				rcpt("c@example.org", spool.StatusDeferred, "host mx.example.org[192.0.2.2] said:\n 450 4.2.0 try later"),
				rcpt("gone@example.org", spool.StatusBounced, "550 5.1.1 no such user"),
			}},
	}}
	const want = `-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
4A1B2C3D4E!    2048 Wed Feb 12 06:10:02  MAILER-DAEMON
(connect to mx.example.net[192.0.2.1]:25: Connection timed out)
                                         a@example.net
                                         b@example.net
(host mx.example.org[192.0.2.2] said: 450 4.2.0 try later)
                                         c@example.org

-- 1 of 3 Requests shown (offset 0); more with --offset 1
-- 2 Kbytes in 1 Request.
`
	b.Reset()
	if err := smtpcmd.WriteMailq(&b, list, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
