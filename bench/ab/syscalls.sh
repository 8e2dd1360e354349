#!/bin/bash
# Usage: build the two gateways first, e.g.
#   git worktree add /tmp/wt-old <base commit> && (cd /tmp/wt-old && go build -o /tmp/caddy-old ./cmd/caddy)
#   go build -o /tmp/caddy-new ./cmd/caddy && go build -o /tmp/smtpbench ./bench/smtpbench
# /tmp/ab-old and /tmp/ab-new hold each one's Caddyfile (made by syscalls.sh).
# A/B: write syscalls of the gateway per STARTTLS message (swaks, 20 messages, one per connection)
set -e
for v in old new; do
  rm -rf /tmp/ab-$v && mkdir -p /tmp/ab-$v && cd /tmp/ab-$v
  cat > Caddyfile <<'CF'
{
	admin localhost:2919
	skip_install_trust
	storage file_system ./data/storage
	smtp {
		queue {
			path ./data/queue
			hold
		}
		server gateway {
			listen 127.0.0.1:2935
			hostname localhost
			tls may
			accept_domains example.test
			route * {
				maildir ./data/maildir
			}
		}
	}
}
CF
  /tmp/caddy-$v run --config Caddyfile > caddy.log 2>&1 &
  pid=$!
  for i in $(seq 50); do swaks --server 127.0.0.1:2935 --tls --to a@example.test --quit-after EHLO >/dev/null 2>&1 && break; sleep 0.2; done
  strace -f -c -e trace=write,writev,sendmsg,sendto,read,recvfrom -p $pid -o /tmp/ab-$v/strace.txt &
  spid=$!
  sleep 1
  for i in $(seq 20); do swaks --server 127.0.0.1:2935 --tls --to a@example.test --tls-verify-no >/dev/null 2>&1 || swaks --server 127.0.0.1:2935 --tls --to a@example.test >/dev/null 2>&1; done
  sleep 1
  kill -INT $spid; wait $spid 2>/dev/null || true
  kill $pid; wait $pid 2>/dev/null || true
  echo "== $v: $(ls data/queue/*.rec 2>/dev/null | wc -l) messages queued"
  grep -E "write|read|send|recv" /tmp/ab-$v/strace.txt
done
