#!/usr/bin/env bash
# The README's examples, run as a user would, with real swaks:
#
#   .ci/examples.sh <caddy-binary>
#
# 1. examples/Caddyfile (the quick start): swaks --tls to the gateway on
#    127.0.0.1:2525 lands in ./data/maildir/new with two Received: headers,
#    both ESMTPS with their TLS version; the mailbox on :2526 answers a
#    plaintext MAIL with 530.
# 2. examples/proxy-protocol.Caddyfile: swaks with PROXY v1 and v2
#    headers to 127.0.0.1:2587 lands in ./data/maildir with the proxied
#    client address in the gateway's Received: header.
# Prints PASS/FAIL per check and "examples: N passed, M failed"; exits
# non-zero if any failed.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ci_init examples "$@"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
make_work examples
ci_traps

# start <example>: run it from a fresh directory (its ./data/queue and
# ./data/maildir are relative), wait for a TLS handshake on the gateway.
start() {
	mkdir -p "$work/$1" && cd "$work/$1" || return 1
	caddy_start caddy.out --config "$repo/examples/$1"
	wait_cert ready.log 2525 && return 0
	fail "$1: gateway ready within 30s" "$(tail -20 caddy.out)"
	return 1
}

# wait_maildir N: wait until ./data/maildir/new holds N messages.
wait_maildir() {
	for _ in $(seq 100); do
		(($(find data/maildir/new -type f 2>/dev/null | wc -l) >= $1)) && return 0
		sleep 0.2
	done
	return 1
}

if start Caddyfile; then
	out=$(swaks --server 127.0.0.1:2525 --tls --to someone@example.test 2>&1)
	if grep -q '^<~  250 2.0.0 OK: queued as' <<<"$out"; then pass "quick start: swaks --tls to the gateway gets 250"; else fail "quick start: swaks --tls to the gateway gets 250" "$out"; fi
	if wait_maildir 1; then
		msg=$(cat data/maildir/new/*)
		hdr=${msg%%$'\n\n'*}
		if (($(grep -c 'with ESMTPS id' <<<"$hdr") == 2)) && (($(grep -c '(using TLSv1\.[23] with cipher' <<<"$hdr") == 2)); then
			pass "quick start: in ./data/maildir/new with two Received: headers, both ESMTPS with TLS version"
		else
			fail "quick start: two ESMTPS Received: headers" "$hdr"
		fi
	else
		fail "quick start: message in ./data/maildir/new within 20s" "$(tail -20 caddy.out)"
	fi
	out=$(swaks --server 127.0.0.1:2526 --to someone@example.test 2>&1)
	if grep -q '^<\*\* 530 5.7.0 Must issue a STARTTLS command first' <<<"$out"; then pass "quick start: mailbox answers plaintext MAIL with 530"; else fail "quick start: mailbox answers plaintext MAIL with 530" "$out"; fi
	caddy_stop
fi

if start proxy-protocol.Caddyfile; then
	for v in 1 2; do
		fam=TCP4
		[[ $v == 2 ]] && fam=AF_INET
		out=$(swaks --server 127.0.0.1:2587 --proxy-version $v --proxy-family $fam --proxy-source 192.0.2.1$v \
			--proxy-source-port 40000 --proxy-dest 127.0.0.1 --proxy-dest-port 2587 --tls --to someone@example.test 2>&1)
		if grep -q '^<~  250 2.0.0 OK: queued as' <<<"$out"; then pass "PROXY v$v: swaks --tls through the PROXY hop gets 250"; else fail "PROXY v$v: swaks --tls through the PROXY hop gets 250" "$out"; fi
	done
	if wait_maildir 2 && grep -q 'Received: from .* (\[192.0.2.11\])' data/maildir/new/* && grep -q 'Received: from .* (\[192.0.2.12\])' data/maildir/new/*; then
		pass "PROXY v1/v2: delivered, the gateway's Received: header names the proxied client"
	else
		fail "PROXY v1/v2: delivered with the proxied client in Received:" "$(grep -h '^Received: from' data/maildir/new/* 2>&1; tail -5 caddy.out)"
	fi
	caddy_stop
fi
