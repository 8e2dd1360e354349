#!/bin/bash
# Usage: build the two gateways first, e.g.
#   git worktree add /tmp/wt-old <base commit> && (cd /tmp/wt-old && go build -o /tmp/caddy-old ./cmd/caddy)
#   go build -o /tmp/caddy-new ./cmd/caddy && go build -o /tmp/smtpbench ./bench/smtpbench
# /tmp/ab-old and /tmp/ab-new hold each one's Caddyfile (made by syscalls.sh).
# A/B in one run: the same gateway, clients offering the default key exchange (X25519MLKEM768 hybrid) or X25519 only.
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
cd /tmp/ab-new
for round in 1 2 3; do for kx in hybrid x25519; do
  rm -rf data/queue
  /tmp/caddy-new run --config Caddyfile > caddy.log 2>&1 &
  pid=$!
  for i in $(seq 50); do /tmp/smtpbench load -addr 127.0.0.1:2935 -n 1 -c 1 -k 1 -rcpt a@example.test >/dev/null 2>&1 && break; sleep 0.2; done
  flag=""; [ $kx = x25519 ] && flag="-x25519"
  t0=$(cpu $pid)
  out=$(/tmp/smtpbench load -addr 127.0.0.1:2935 -tls $flag -n 2000 -c 20 -k 1 -rcpt a@example.test 2>&1)
  t1=$(cpu $pid)
  kill $pid; wait $pid 2>/dev/null
  echo "round $round $kx: $(echo $out | cut -c1-70) | gateway CPU $(echo "scale=2; ($t1-$t0)*10/2000" | bc) ms/msg"
done; done
