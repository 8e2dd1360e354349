#!/usr/bin/env bash
# TLS scan of the quick start's gateway with testssl.sh (GitHub issue 6).
#
#   .ci/testssl.sh <caddy-binary>
#
# Installs Debian's testssl.sh package (command `testssl`; jq and openssl
# too) with apt-get if missing, runs the binary with examples/Caddyfile
# from a temporary directory (gateway on 127.0.0.1:2525 at level may,
# mailbox on :2526, admin localhost:2019; certificates from Caddy's
# internal CA), waits for the certificate, and scans 127.0.0.1:2525 over
# STARTTLS:
#
#   testssl --quiet --color 0 --warnings off --nodns none -t smtp \
#           -p -s --jsonfile <f> 127.0.0.1:2525
#   testssl ... -S --add-ca <local CA root> --jsonfile <g> 127.0.0.1:2525
#
# (-p protocols, -s cipher categories, -S server defaults and the
# certificate chain; --add-ca makes testssl judge the chain against
# Caddy's local root; the two run at once). From the JSON it asserts: no SSLv2, SSLv3, TLS 1.0
# or TLS 1.1; TLS 1.2 and 1.3 offered; no NULL, anonymous, export or
# LOW ciphers; two certificates served (leaf and intermediate) and the
# chain verifying to the local root. openssl cross-checks the chain
# (-showcerts, openssl verify) and that TLS 1.0/1.1 clients get a
# protocol_version alert from the server.
#
# Prints one PASS/FAIL line per check and "testssl: N passed, M failed";
# exits non-zero if any failed. TESTSSL_TIMEOUT (seconds, default 480)
# bounds each scan; testssl is CPU-bound bash: the scans take about 95 s
# of CPU in all, so about a minute on an idle 2-CPU machine, more when
# the machine is busy. Set TESTSSL_KEEP=1 to keep the directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ci_init testssl "$@"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly PORT=2525
readonly INTERMEDIATE_CN="Caddy Local Authority - ECC Intermediate"
timeout_s=${TESTSSL_TIMEOUT:-480}
keep=${TESTSSL_KEEP:-}

on_failure() { print_tail "caddy output" 20 "$work/caddy.out"; }
ci_traps

# ---- tools ----------------------------------------------------------------

missing=()
command -v testssl >/dev/null || command -v testssl.sh >/dev/null || missing+=(testssl.sh)
command -v jq >/dev/null || missing+=(jq)
command -v openssl >/dev/null || missing+=(openssl)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
testssl_bin=$(command -v testssl || command -v testssl.sh)
echo "testssl: $("$testssl_bin" --version 2>/dev/null | grep -m1 -o 'testssl.* from' | sed 's/ from//') ($testssl_bin), $(openssl version)"

# ---- start ----------------------------------------------------------------

ports_free start 0 2525 2526 2019 || exit 1

make_work testssl
root_ca=$work/data/caddy/pki/authorities/local/root.crt
cd "$work" || exit 2
caddy_start caddy.out --config "$repo/examples/Caddyfile"
if wait_cert ready.log "$PORT" && [[ -s $root_ca ]]; then
	pass "start: examples/Caddyfile serves STARTTLS on $HOST:$PORT with the internal CA's certificate"
else
	fail "start: gateway ready within 30s" "$(tail -n 20 caddy.out)"
	exit 1
fi

# ---- openssl cross-checks -------------------------------------------------

showcerts=$(timeout 20 openssl s_client -starttls smtp -connect "$HOST:$PORT" -servername localhost -showcerts </dev/null 2>/dev/null)
awk '/-----BEGIN CERTIFICATE-----/{n++} n{print > ("chain" n ".pem")}' <<<"$showcerts"
ncerts=$(grep -c -- '-----BEGIN CERTIFICATE-----' <<<"$showcerts")
inter_subject=$(openssl x509 -in chain2.pem -noout -subject -nameopt RFC2253 2>/dev/null)
if ((ncerts == 2)) && [[ $inter_subject == "subject=CN=$INTERMEDIATE_CN" ]]; then
	pass "chain (openssl -showcerts): 2 certificates, the leaf and '$INTERMEDIATE_CN'"
else
	fail "chain (openssl -showcerts): leaf and intermediate served" "$ncerts certificates; second: '${inter_subject}'" \
		"$(grep -E '^ *[0-9] s:|^ *i:' <<<"$showcerts")"
fi
if out=$(openssl verify -CAfile "$root_ca" -untrusted chain2.pem chain1.pem 2>&1) && [[ $out == *": OK" ]]; then
	pass "chain (openssl verify): the served chain verifies to the local CA root"
else
	fail "chain (openssl verify): the served chain verifies to the local CA root" "$out"
fi
for v in tls1 tls1_1; do
	# SECLEVEL=0: let openssl offer the old version, so that a refusal
	# is the server's (an alert), not the client's own policy.
	out=$(timeout 20 openssl s_client -starttls smtp -connect "$HOST:$PORT" -"$v" -cipher 'DEFAULT@SECLEVEL=0' </dev/null 2>&1)
	if grep -q 'alert protocol version' <<<"$out" && ! grep -q 'BEGIN CERTIFICATE' <<<"$out"; then
		pass "openssl -$v: the server refuses with a protocol_version alert"
	else
		fail "openssl -$v: the server refuses with a protocol_version alert" "$(grep -iE 'alert|error|Protocol|Cipher is' <<<"$out" | head -n 5)"
	fi
done

# ---- testssl --------------------------------------------------------------

# Two scans at once (testssl is single-threaded bash): protocols and
# cipher categories (-p -s, over testssl's own sockets, so that SSLv2,
# SSLv3, NULL and export ciphers are really offered to the server
# whatever the local openssl supports; no --fast, which would use the
# local openssl instead), and server defaults with the chain (-S).
json=$work/testssl.json
start=$SECONDS
scan() {
	local name=$1
	shift
	timeout "$timeout_s" "$testssl_bin" --quiet --color 0 --warnings off --nodns none -t smtp \
		"$@" --jsonfile "$work/$name.json" "$HOST:$PORT" </dev/null >"$work/$name.out" 2>&1
	echo $? >"$work/$name.rc"
}
scan protocols -p -s &
scan_pids=($!)
scan chain -S --add-ca "$root_ca" &
scan_pids+=($!)
wait "${scan_pids[@]}"
took=$((SECONDS - start))
for name in protocols chain; do
	rc=$(cat "$work/$name.rc" 2>/dev/null)
	if [[ $rc != 124 ]] && jq -e 'type == "array" and length > 5' "$work/$name.json" >/dev/null 2>&1; then
		pass "testssl ($name scan) finished (exit $rc), $(jq length "$work/$name.json") findings"
	else
		fail "testssl ($name scan) within ${timeout_s}s" "exit ${rc:-?}" "$(tail -n 20 "$work/$name.out")"
	fi
done
jq -s 'add' "$work/protocols.json" "$work/chain.json" >"$json" 2>/dev/null || exit 1

# finding ID: testssl's finding for an id ("" if none)
finding() { jq -r --arg id "$1" '[.[] | select(.id == $id) | .finding] | first // ""' "$json"; }
# expect ID PATTERN LABEL: the finding for ID matches the bash pattern
expect() {
	local got
	got=$(finding "$1")
	# shellcheck disable=SC2053 # $2 is a pattern
	if [[ $got == $2 ]]; then
		pass "$3 ($1: $got)"
	else
		fail "$3" "$1: '$got', want '$2'"
	fi
}

expect SSLv2 "not offered*" "protocols: no SSLv2"
expect SSLv3 "not offered*" "protocols: no SSLv3"
expect TLS1 "not offered*" "protocols: no TLS 1.0"
expect TLS1_1 "not offered*" "protocols: no TLS 1.1"
expect TLS1_2 "offered*" "protocols: TLS 1.2 offered"
expect TLS1_3 "offered*" "protocols: TLS 1.3 offered"
expect cipherlist_NULL "not offered*" "ciphers: no NULL ciphers"
expect cipherlist_aNULL "not offered*" "ciphers: no anonymous (aNULL) ciphers"
expect cipherlist_EXPORT "not offered*" "ciphers: no export ciphers"
expect cipherlist_LOW "not offered*" "ciphers: no LOW ciphers (64 bit, DES, RC2/RC4)"
expect cipherlist_3DES_IDEA "not offered*" "ciphers: no 3DES or IDEA"
expect certs_countServer "2" "chain: two certificates served (leaf and intermediate)"
expect cert_caIssuers "$INTERMEDIATE_CN" "chain: the leaf is issued by the intermediate"
expect cert_chain_of_trust "passed*" "chain: complete, verifies to the local CA root (--add-ca)"

echo "testssl: scan took ${took}s"
