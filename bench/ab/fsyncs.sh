#!/bin/bash
# A/B in one run: fsyncs and gateway CPU per STARTTLS 4 KiB message, c=20, 1 message per connection,
# queue on hold (acceptance only), binaries /tmp/caddy-old and /tmp/caddy-new alternating.
# Build them as bench/ab/syscalls.sh says; the configs come from /tmp/ab-{old,new}/Caddyfile.
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for round in 1 2 3; do
for v in old new; do
  cd /tmp/ab-$v && rm -rf data/queue
  /tmp/caddy-$v run --config Caddyfile > caddy.log 2>&1 &
  pid=$!
  for i in $(seq 50); do /tmp/smtpbench load -addr 127.0.0.1:2935 -n 1 -c 1 -k 1 -rcpt a@example.test >/dev/null 2>&1 && break; sleep 0.2; done
  strace -f -c -e trace=fsync,fdatasync -p $pid -o /tmp/ab-$v/fsync.txt 2>/dev/null &
  spid=$!
  sleep 1
  t0=$(cpu $pid)
  out=$(/tmp/smtpbench load -addr 127.0.0.1:2935 -tls -n 1000 -c 20 -k 1 -rcpt a@example.test 2>&1)
  t1=$(cpu $pid)
  kill -INT $spid; wait $spid 2>/dev/null
  kill $pid; wait $pid 2>/dev/null
  n=$(awk '$NF=="fsync"{print $4}' /tmp/ab-$v/fsync.txt)
  echo "round $round $v: $(echo $out | cut -c1-75) | fsyncs $n for 1000 (+1 warm-up) | gateway CPU $(echo "scale=2; ($t1-$t0)*10/1000" | bc) ms/msg (under strace)"
done; done
