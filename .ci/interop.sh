#!/usr/bin/env bash
# Interop test: a Caddy binary with caddy-smtp, driven by real clients
# (swaks, openssl s_client) on loopback.
#
#   .ci/interop.sh <caddy-binary>
#
# Starts the binary with .ci/interop.Caddyfile (servers at TLS levels
# none on 127.0.0.1:2601, may on :2602, encrypt on :2603; certificates
# from Caddy's internal CA), prints one PASS/FAIL line per check and
# "interop: N passed, M failed", and exits non-zero if any check failed.
# Needs: bash, swaks (with Net::SSLeay), openssl, jq, coreutils.
# Set INTEROP_KEEP=1 to keep the temporary directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ci_init interop "$@"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config=$here/interop.Caddyfile
need_tools swaks openssl jq timeout

readonly PORT_NONE=2601 PORT_MAY=2602 PORT_ENCRYPT=2603
readonly RCPT=postmaster@example.test
readonly ISSUER_CN="Caddy Local Authority - ECC Intermediate"

make_work interop
export INTEROP_DIR=$work
queue=$work/queue
root_ca=$work/storage/pki/authorities/local/root.crt
caddy_log=$work/caddy.log # the JSON log (Caddyfile `log` option)
caddy_out=$work/caddy.out # the process's stdout and stderr
mkdir -p "$work/t"
keep=${INTEROP_KEEP:-}

on_failure() {
	print_tail "caddy stdout/stderr" 30 "$caddy_out"
	print_tail "caddy JSON log" 30 "$caddy_log"
	echo "----"
}
ci_traps

# smtp_dialog PORT CMD...: a plain SMTP conversation over bash's
# /dev/tcp; prints the banner, then each command (">> ") and the
# server's reply lines ("<< "). Fails if a reply does not come in 10s.
smtp_dialog() {
	local port=$1 cmd
	shift
	exec 3<>"/dev/tcp/$HOST/$port" || return 1
	_smtp_reply || { exec 3>&-; return 1; }
	for cmd in "$@"; do
		printf '%s\r\n' "$cmd" >&3
		printf '>> %s\n' "$cmd"
		_smtp_reply || { exec 3>&-; return 1; }
	done
	exec 3>&-
}
_smtp_reply() {
	local line
	while IFS= read -r -t 10 line <&3; do
		line=${line%$'\r'}
		printf '<< %s\n' "$line"
		[[ $line =~ ^[0-9]{3}- ]] || return 0
	done
	return 1
}

# check_delivered CHECK-NAME: the last send got a 250 with a queue id and
# the spool holds that record.
check_delivered() {
	if [[ $swaks_rc -eq 0 && -n $queue_id && -f $queue/$queue_id.rec ]] && record_envelope "$queue_id" >/dev/null; then
		pass "$1 (swaks exit 0, queued as $queue_id)"
	else
		fail "$1" "swaks exit $swaks_rc, queue id '${queue_id}'" "$(show "$swaks_log")"
	fi
}

# A spool record is one file, ID.rec: the message, its envelope (JSON),
# and a 56-byte trailer "\ncaddy-smtp-record-v1 MSGLEN ENVLEN\n" (16 hex
# digits each); an ID.json beside it is a newer envelope.
record_lengths() { tail -c 56 "$queue/$1.rec" 2>/dev/null | tr '\n' ' '; }
# record_envelope ID: the current envelope of a record.
record_envelope() {
	local magic m e
	if [[ -f $queue/$1.json ]]; then
		cat "$queue/$1.json"
		return
	fi
	read -r magic m e <<<"$(record_lengths "$1")"
	[[ $magic == caddy-smtp-record-v1 ]] || return 1
	tail -c $((16#$e + 56)) "$queue/$1.rec" | head -c $((16#$e))
}
# record_message ID: the stored message of a record.
record_message() {
	local magic m e
	read -r magic m e <<<"$(record_lengths "$1")"
	[[ $magic == caddy-smtp-record-v1 ]] || return 1
	head -c $((16#$m)) "$queue/$1.rec"
}
# record_field ID JQ-FILTER: a field of a spool envelope.
record_field() { record_envelope "$1" | jq -r "$2" 2>/dev/null; }

# tls_probe NAME PORT [S_CLIENT-OPTIONS...]: STARTTLS with openssl
# s_client; output in $work/t/NAME.log, exit code in $probe_rc, the
# server's leaf certificate in $work/t/NAME.pem.
tls_probe() {
	local name=$1 port=$2
	shift 2
	probe_log=$work/t/$name.log
	probe_pem=$work/t/$name.pem
	starttls_probe "$probe_log" "$port" "$@"
	probe_rc=$?
	sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' "$probe_log" |
		awk '{print} /-----END CERTIFICATE-----/{exit}' >"$probe_pem"
}

# check_cert CHECK-NAME: the last probe's leaf is for localhost and was
# issued by Caddy's local CA.
check_cert() {
	local subject issuer san
	subject=$(openssl x509 -in "$probe_pem" -noout -subject -nameopt RFC2253 2>/dev/null)
	issuer=$(openssl x509 -in "$probe_pem" -noout -issuer -nameopt RFC2253 2>/dev/null)
	san=$(openssl x509 -in "$probe_pem" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')
	if [[ $probe_rc -eq 0 && $issuer == *"CN=$ISSUER_CN"* &&
		( ",$san," == *",DNS:localhost,"* || $subject == *"CN=localhost"* ) ]]; then
		pass "$1 (${subject:-subject=}; SAN $san; $issuer)"
	else
		fail "$1" "openssl exit $probe_rc; ${subject:-no subject}; SAN '${san}'; ${issuer:-no issuer}" "$(show "$probe_log")"
	fi
}

# check_verified CHECK-NAME: the last probe verified the chain.
check_verified() {
	if [[ $probe_rc -eq 0 ]] && grep -q 'Verify return code: 0 (ok)' "$probe_log"; then
		pass "$1"
	else
		fail "$1" "openssl exit $probe_rc" "$(show "$probe_log")"
	fi
}

echo "interop: $("$caddy_bin" version)"
echo "interop: work directory $work"

# ---- start --------------------------------------------------------------

check_adapts '["encrypt","may","none"]' "interop.Caddyfile adapts to apps.smtp with servers none, may, encrypt" || exit 1

ports_free start 0 $PORT_NONE $PORT_MAY $PORT_ENCRYPT 2604 2699 || exit 1

caddy_start "$caddy_out" --config "$config" --adapter caddyfile
if wait_ports 30 $PORT_NONE $PORT_MAY $PORT_ENCRYPT; then
	pass "start: caddy (pid $caddy_pid) listens on $PORT_NONE, $PORT_MAY, $PORT_ENCRYPT"
else
	fail "start: caddy listens on $PORT_NONE, $PORT_MAY, $PORT_ENCRYPT" \
		"$(caddy_alive && echo 'still not listening after 30s' || echo 'caddy exited')"
	exit 1
fi

if wait_cert "$work/t/ready.log" $PORT_MAY; then
	pass "start: TLS handshake on $PORT_MAY works (certificate ready)"
else
	fail "start: TLS handshake on $PORT_MAY within 30s" "$(show "$work/t/ready.log")"
	exit 1
fi

# ---- level none ---------------------------------------------------------

smtp_dialog $PORT_NONE "EHLO client.example.net" "STARTTLS" "QUIT" >"$work/t/none-raw.log" 2>&1
if grep -q '^<< 250[- ]' "$work/t/none-raw.log" && ! grep -qi '^<< 250[- ]STARTTLS' "$work/t/none-raw.log"; then
	pass "none: EHLO reply does not advertise STARTTLS"
else
	fail "none: EHLO reply does not advertise STARTTLS" "$(show "$work/t/none-raw.log")"
fi
reply=$(sed -n '/^>> STARTTLS/{n;p;}' "$work/t/none-raw.log")
if [[ $reply == "<< 502 5.5.1 "* ]]; then
	pass "none: STARTTLS gets '${reply#<< }'"
else
	fail "none: STARTTLS gets 502 5.5.1" "$(show "$work/t/none-raw.log")"
fi

send none-plain $PORT_NONE "$RCPT"
check_delivered "none: plaintext mail accepted"

send none-tls $PORT_NONE "$RCPT" --tls
if [[ $swaks_rc -ne 0 && -z $queue_id ]]; then
	pass "none: swaks --tls fails (exit $swaks_rc: $(grep -m1 -i 'starttls' "$swaks_log" | sed 's/^[^ ]* *//'))"
else
	fail "none: swaks --tls fails" "swaks exit $swaks_rc, queue id '${queue_id}'" "$(show "$swaks_log")"
fi

# ---- level may ----------------------------------------------------------

smtp_dialog $PORT_MAY "EHLO client.example.net" "QUIT" >"$work/t/may-raw.log" 2>&1
if grep -qi '^<< 250[- ]STARTTLS$' "$work/t/may-raw.log"; then
	pass "may: EHLO reply advertises STARTTLS"
else
	fail "may: EHLO reply advertises STARTTLS" "$(show "$work/t/may-raw.log")"
fi

send may-plain $PORT_MAY "$RCPT"
check_delivered "may: plaintext mail accepted"
if [[ -n $queue_id ]]; then
	proto=$(record_field "$queue_id" '.client.protocol')
	tls=$(record_field "$queue_id" '.client.tls')
	if [[ $proto == ESMTP && $tls == null ]]; then
		pass "may: plaintext record has client.protocol ESMTP and no tls"
	else
		fail "may: plaintext record has client.protocol ESMTP and no tls" "protocol '$proto', tls $tls"
	fi
fi

records_before=$(find "$queue" -maxdepth 1 -name '*.rec' ! -name '.*' | wc -l)
send may-tls $PORT_MAY "$RCPT" --tls
check_delivered "may: STARTTLS mail accepted"
records_after=$(find "$queue" -maxdepth 1 -name '*.rec' ! -name '.*' | wc -l)
if ((records_after == records_before + 1)); then
	pass "may: spool got one new record ($records_before -> $records_after *.rec)"
else
	fail "may: spool got one new record" "$records_before -> $records_after *.rec"
fi
if [[ -n $queue_id ]]; then
	proto=$(record_field "$queue_id" '.client.protocol')
	tlsver=$(record_field "$queue_id" '.client.tls.version // empty')
	if [[ $proto == ESMTPS && -n $tlsver ]]; then
		pass "may: STARTTLS record has client.protocol ESMTPS ($tlsver, $(record_field "$queue_id" '.client.tls.cipher'))"
	else
		fail "may: STARTTLS record has client.protocol ESMTPS" "protocol '$proto', tls version '$tlsver'" "$(record_envelope "$queue_id")"
	fi
	if grep -q 'with ESMTPS id' <<<"$(record_message "$queue_id")"; then
		pass "may: Received header says 'with ESMTPS'"
	else
		fail "may: Received header says 'with ESMTPS'" "$(record_message "$queue_id" | head -n 5)"
	fi
fi

# ---- level encrypt ------------------------------------------------------

smtp_dialog $PORT_ENCRYPT "EHLO client.example.net" "QUIT" >"$work/t/encrypt-raw.log" 2>&1
if grep -qi '^<< 250[- ]STARTTLS$' "$work/t/encrypt-raw.log"; then
	pass "encrypt: EHLO reply advertises STARTTLS"
else
	fail "encrypt: EHLO reply advertises STARTTLS" "$(show "$work/t/encrypt-raw.log")"
fi

send encrypt-plain $PORT_ENCRYPT "$RCPT"
reply=$(sed -n '/^ *-> MAIL FROM/{n;p;}' "$swaks_log")
if [[ $swaks_rc -eq 23 && -z $queue_id && $reply == *"530 5.7.0 Must issue a STARTTLS command first"* ]]; then
	pass "encrypt: plaintext MAIL gets '${reply#'<** '}' (swaks exit 23)"
else
	fail "encrypt: plaintext MAIL gets 530 5.7.0 Must issue a STARTTLS command first" \
		"swaks exit $swaks_rc, queue id '${queue_id}'" "$(show "$swaks_log")"
fi

send encrypt-tls $PORT_ENCRYPT "$RCPT" --tls --tls-sni localhost
check_delivered "encrypt: STARTTLS mail accepted (SNI localhost)"
if [[ -n $queue_id ]]; then
	proto=$(record_field "$queue_id" '.client.protocol')
	sni=$(record_field "$queue_id" '.client.tls.server_name // empty')
	if [[ $proto == ESMTPS && $sni == localhost ]]; then
		pass "encrypt: STARTTLS record has client.protocol ESMTPS and tls.server_name localhost"
	else
		fail "encrypt: STARTTLS record has client.protocol ESMTPS and tls.server_name localhost" \
			"protocol '$proto', server_name '$sni'" "$(record_envelope "$queue_id")"
	fi
fi

# ---- certificates -------------------------------------------------------

tls_probe cert-sni $PORT_MAY -servername localhost
check_cert "cert: STARTTLS with SNI localhost on $PORT_MAY serves the internal-CA certificate"
tls_probe cert-nosni $PORT_MAY -noservername
check_cert "cert: STARTTLS without SNI on $PORT_MAY serves it too (hostname is the default SNI)"
tls_probe cert-encrypt $PORT_ENCRYPT -noservername
check_cert "cert: STARTTLS without SNI on $PORT_ENCRYPT serves it"

if [[ -s $root_ca ]]; then
	pass "cert: local CA root at storage/pki/authorities/local/root.crt"
else
	fail "cert: local CA root at storage/pki/authorities/local/root.crt" "$(find "$work/storage" 2>&1 | head -n 20)"
fi
tls_probe verify-sni $PORT_MAY -servername localhost \
	-CAfile "$root_ca" -verify_return_error -verify_hostname localhost
check_verified "cert: chain verifies against the local CA root for localhost (SNI)"
tls_probe verify-nosni $PORT_MAY -noservername \
	-CAfile "$root_ca" -verify_return_error -verify_hostname localhost
check_verified "cert: chain verifies against the local CA root for localhost (no SNI)"

# ---- log ----------------------------------------------------------------

# The log is written as connections close; give the last ones a moment.
closed_tls='select(.msg == "connection closed" and .tls == true and (.tls_version // "") != "")'
closed_plain='select(.msg == "connection closed" and .tls == false)'
# the swaks STARTTLS session on the may server: the one TLS session there
# that carried a message
closed_may_tls="$closed_tls"' | select(.server == "may" and .messages == 1)'
deadline=$((SECONDS + 5))
until [[ -n $(jq -c "$closed_may_tls" "$caddy_log" 2>/dev/null | head -n 1) ]] || ((SECONDS > deadline)); do
	sleep 0.2
done
line=$(jq -c "$closed_may_tls" "$caddy_log" 2>/dev/null | head -n 1)
if [[ -n $line ]]; then
	pass "log: 'connection closed' of the may STARTTLS session has tls_version: $(jq -r '"\(.tls_version) \(.tls_cipher)"' <<<"$line")"
else
	fail "log: 'connection closed' of the may STARTTLS session has tls_version" \
		"$(jq -c 'select(.msg == "connection closed" and .server == "may")' "$caddy_log" 2>&1)"
fi
line=$(jq -c "$closed_tls"' | select(.server == "encrypt" and .tls_server_name == "localhost")' "$caddy_log" 2>/dev/null | head -n 1)
if [[ -n $line ]]; then
	pass "log: 'connection closed' of the encrypt session has tls_server_name localhost"
else
	fail "log: 'connection closed' of the encrypt session has tls_server_name localhost" \
		"$(jq -c 'select(.msg == "connection closed" and .server == "encrypt")' "$caddy_log" 2>&1)"
fi
if [[ -n $(jq -c "$closed_plain" "$caddy_log" 2>/dev/null | head -n 1) ]]; then
	pass "log: 'connection closed' with tls false for plaintext sessions"
else
	fail "log: 'connection closed' with tls false for plaintext sessions"
fi
n=$(jq -c 'select(.msg == "message accepted")' "$caddy_log" 2>/dev/null | wc -l)
if ((n == 4)); then
	pass "log: 'message accepted' for each of the 4 accepted messages"
else
	fail "log: 'message accepted' for each of the 4 accepted messages" "found $n"
fi

# A client that completes the STARTTLS handshake and then hangs up (here
# openssl s_client, no EHLO after TLS) still had a TLS connection, and
# the log must say so (every TLS connection is logged with
# protocol version and cipher).
closed_encrypt='select(.msg == "connection closed" and .server == "encrypt")'
n_before=$(jq -c "$closed_encrypt" "$caddy_log" 2>/dev/null | wc -l)
tls_probe handshake-only $PORT_ENCRYPT -servername localhost
deadline=$((SECONDS + 5))
until (($(jq -c "$closed_encrypt" "$caddy_log" 2>/dev/null | wc -l) > n_before)) || ((SECONDS > deadline)); do
	sleep 0.2
done
line=$(jq -c "$closed_encrypt" "$caddy_log" 2>/dev/null | tail -n +$((n_before + 1)) | head -n 1)
if [[ $probe_rc -eq 0 && -n $line ]] && jq -e '.tls == true and (.tls_version // "") != ""' <<<"$line" >/dev/null; then
	pass "log: handshake-only STARTTLS session (no EHLO after TLS) logged with tls_version"
else
	fail "log: handshake-only STARTTLS session (no EHLO after TLS) logged with tls_version" \
		"openssl exit $probe_rc; its log line: ${line:-none}"
fi

# ---- end ----------------------------------------------------------------

check_caddy_running

((failed == 0)) # ci_finish prints the totals
