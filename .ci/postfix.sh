#!/usr/bin/env bash
# Interop test with a real Postfix (Debian package postfix, 3.7 on
# Debian 12), on loopback (GitHub issue 3).
#
#   .ci/postfix.sh <caddy-binary>
#
# Runs as root. Installs postfix with apt-get if it is missing (without
# configuring or starting the system's own instance), then runs a private
# Postfix instance from a temporary directory (`postfix -c DIR`, config
# from .ci/postfix/main.cf.in and master.cf; smtpd on 127.0.0.1:2700,
# STARTTLS with a self-signed certificate made here, log in DIR/maillog)
# and the caddy binary with .ci/postfix/postfix.Caddyfile:
#
#  - Postfix as the upstream: the gateway relays upstream.test to
#    Postfix at client TLS level verify (127.0.0.1:2711: deferred, the
#    certificate does not verify), encrypt (:2712: sent) and may (:2713:
#    sent); exactly those two arrive in Postfix's Maildir, received with
#    ESMTPS over TLS.
#  - Postfix as the client: Postfix relays example.test through the
#    gateway (relayhost [127.0.0.1]:2720, smtp_tls_security_level
#    encrypt), which files it into a Maildir.
#
# Prints one PASS/FAIL line per check and "postfix interop: N passed, M
# failed", and exits non-zero if any check failed. Ports used:
# 2700 (Postfix), 2711-2713 and 2720 (gateway), 2799 (Caddy admin).
# Needs: bash, swaks (with Net::SSLeay), openssl, jq, coreutils, and
# apt-get if postfix is missing.
# Set POSTFIX_KEEP=1 to keep the temporary directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

ci_init "postfix interop" "$@"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
templates=$here/postfix
config=$templates/postfix.Caddyfile

PATH=$PATH:/usr/sbin:/sbin # postfix, postconf
if [[ $(id -u) -ne 0 ]]; then
	echo "postfix interop: must run as root (it runs a Postfix instance)" >&2
	exit 2
fi
need_tools swaks openssl jq timeout

readonly PORT_POSTFIX=2700 PORT_VERIFY=2711 PORT_ENCRYPT=2712 PORT_MAY=2713
readonly PORT_RELAY=2720 PORT_ADMIN=2799 PORT_SMUGGLE_REJECT=2714 PORT_SMUGGLE_NORMALIZE=2715
readonly UPSTREAM_RCPT=someone@upstream.test GATEWAY_RCPT=someone@example.test

postfix_started='' policy_rc_d_ours=''
keep=${POSTFIX_KEEP:-}

# The master's pid, from the instance's pid file.
postfix_master_pid() { sed -n 's/^ *\([0-9][0-9]*\).*/\1/p' "$pf/queue/pid/master.pid" 2>/dev/null; }

stop_postfix() {
	[[ -n $postfix_started ]] || return 0
	local pid
	pid=$(postfix_master_pid)
	# "postfix stop" waits (up to 5s, then kills) for the master to let
	# go of its lock; the process may take a moment more to exit.
	timeout 20 postfix -c "$pf/etc" stop >/dev/null 2>&1
	if [[ -n $pid ]]; then
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		! kill -0 "$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
	fi
	postfix_started=
}

at_exit() {
	[[ -z $policy_rc_d_ours ]] || rm -f /usr/sbin/policy-rc.d
	stop_postfix
}
on_failure() {
	print_tail "caddy stdout/stderr" 30 "$caddy_out"
	print_tail "caddy JSON log" 30 "$caddy_log"
	print_tail "postfix maillog" 40 "$maillog"
	echo "----"
}
ci_traps

# ---- 0. postfix package -------------------------------------------------

if ! grep -q 'install ok installed' <<<"$(dpkg-query -W -f='${Status}' postfix 2>/dev/null)"; then
	echo "postfix interop: installing postfix (no configuration, not started)"
	apt_install_unstarted postfix
	install_rc=$?
	if ((install_rc != 0)); then
		fail "setup: apt-get install postfix" "exit $install_rc"
		exit 1
	fi
fi
pf_version=$(postconf -d -h mail_version 2>/dev/null)
if [[ -n $pf_version ]]; then
	pass "setup: postfix $pf_version installed"
else
	fail "setup: postfix installed" "postconf -d mail_version gave nothing"
	exit 1
fi
# The system's own instance is neither used nor touched: everything below
# is "postfix -c <temporary dir>". Say whether it runs, for the record.
if postfix status >/dev/null 2>&1; then
	echo "postfix interop: note: the system's Postfix instance is running; not used"
fi

# ---- setup --------------------------------------------------------------

echo "postfix interop: $("$caddy_bin" version)"

ports_free start 0 $PORT_POSTFIX $PORT_VERIFY $PORT_ENCRYPT $PORT_MAY $PORT_RELAY $PORT_ADMIN \
	$PORT_SMUGGLE_REJECT $PORT_SMUGGLE_NORMALIZE || exit 1

make_work postfix
# Postfix's daemons run as the postfix user and its virtual(8) delivers
# as it: they must be able to reach the directories below.
chmod 755 "$work"
echo "postfix interop: work directory $work"
export POSTFIX_CI_DIR=$work
caddy_log=$work/caddy.log # the JSON log (Caddyfile `log` option)
caddy_out=$work/caddy.out # the process's stdout and stderr
queue=$work/queue         # the gateway's spool
gw_maildir=$work/maildir  # where the gateway files mail from Postfix
pf=$work/postfix          # the Postfix instance
maillog=$pf/maillog
pf_maildir=$pf/vmail/upstream.test/someone
mkdir -p "$work/t" "$pf/etc" "$pf/queue" "$pf/data" "$pf/vmail" "$pf/tls"

postfix_alive() {
	local pid
	pid=$(postfix_master_pid)
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# subject FILE: what follows "Subject: caddy-smtp postfix interop ".
subject() { tr -d '\r' <"$1" | sed -n 's/^Subject: caddy-smtp postfix interop //p' | head -n 1; }

# ---- Postfix instance ---------------------------------------------------

pf_uid=$(id -u postfix) pf_gid=$(id -g postfix)
sed -e "s|@PF_DIR@|$pf|g" -e "s|@PF_UID@|$pf_uid|g" -e "s|@PF_GID@|$pf_gid|g" \
	"$templates/main.cf.in" >"$pf/etc/main.cf"
cp "$templates/master.cf" "$pf/etc/master.cf"
chown postfix:postfix "$pf/data" "$pf/vmail"
# A self-signed certificate for the upstream; with the IP address in the
# SAN, so a `verify` failure is about trust, not about the name.
if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=postfix.test -addext 'subjectAltName=DNS:postfix.test,IP:127.0.0.1' \
	-keyout "$pf/tls/key.pem" -out "$pf/tls/cert.pem" >"$work/t/openssl-req.log" 2>&1; then
	chmod 600 "$pf/tls/key.pem"
	pass "postfix: self-signed certificate for postfix.test / 127.0.0.1"
else
	fail "postfix: self-signed certificate" "$(show "$work/t/openssl-req.log")"
	exit 1
fi

# "postfix check" also creates the queue's subdirectories.
timeout 60 postfix -c "$pf/etc" check >"$work/t/postfix-check.log" 2>&1
rc=$?
if ((rc == 0)); then
	nwarn=$(grep -c 'warning:' "$work/t/postfix-check.log")
	pass "postfix: postfix -c $pf/etc check ($nwarn warnings)"
	((nwarn == 0)) || sed 's/^/        note: /' "$work/t/postfix-check.log"
else
	fail "postfix: postfix -c $pf/etc check" "exit $rc" "$(show "$work/t/postfix-check.log")"
	exit 1
fi

postfix_started=1
timeout 60 postfix -c "$pf/etc" start >"$work/t/postfix-start.log" 2>&1
rc=$?
deadline=$((SECONDS + 20))
until port_open $PORT_POSTFIX; do
	if ((rc != 0)) || ((SECONDS > deadline)); then
		break
	fi
	sleep 0.2
done
banner=$(greeting $PORT_POSTFIX)
if ((rc == 0)) && postfix_alive && [[ $banner == "220 postfix.test ESMTP"* ]]; then
	pass "postfix: started (master pid $(postfix_master_pid)), $HOST:$PORT_POSTFIX says '$banner'"
else
	fail "postfix: started, $HOST:$PORT_POSTFIX greets as postfix.test" "start exit $rc; banner '$banner'" \
		"$(show "$work/t/postfix-start.log")" "$(show "$maillog")"
	exit 1
fi

starttls_probe "$work/t/postfix-tls.log" $PORT_POSTFIX -noservername
probe_rc=$?
if ((probe_rc == 0)) && grep -q '^subject=.*CN *= *postfix.test' "$work/t/postfix-tls.log"; then
	pass "postfix: STARTTLS on $PORT_POSTFIX serves the self-signed postfix.test certificate"
else
	fail "postfix: STARTTLS on $PORT_POSTFIX serves the self-signed certificate" \
		"openssl exit $probe_rc" "$(show "$work/t/postfix-tls.log")"
fi

# ---- caddy --------------------------------------------------------------

check_adapts '["from_postfix","smuggle_normalize","smuggle_reject","to_encrypt","to_may","to_verify"]' \
	"postfix.Caddyfile adapts to apps.smtp with servers to_verify, to_encrypt, to_may, smuggle_reject, smuggle_normalize, from_postfix" || exit 1

caddy_start "$caddy_out" --config "$config" --adapter caddyfile
if wait_ports 30 $PORT_VERIFY $PORT_ENCRYPT $PORT_MAY $PORT_RELAY; then
	pass "start: caddy (pid $caddy_pid) listens on $PORT_VERIFY, $PORT_ENCRYPT, $PORT_MAY, $PORT_RELAY"
else
	fail "start: caddy listens on $PORT_VERIFY, $PORT_ENCRYPT, $PORT_MAY, $PORT_RELAY" \
		"$(caddy_alive && echo 'still not listening after 30s' || echo 'caddy exited')"
	exit 1
fi

# Postfix (level encrypt) needs the certificate on $PORT_RELAY.
if wait_cert "$work/t/relay-ready.log" $PORT_RELAY; then
	pass "start: TLS handshake on $PORT_RELAY works (certificate ready)"
else
	fail "start: TLS handshake on $PORT_RELAY within 30s" "$(show "$work/t/relay-ready.log")"
	exit 1
fi

# ---- Postfix as the upstream -------------------------------------------

send verify $PORT_VERIFY $UPSTREAM_RCPT
check_queued "upstream: gateway (client level verify) accepts a message for upstream.test"
id_verify=$queue_id
send encrypt $PORT_ENCRYPT $UPSTREAM_RCPT
check_queued "upstream: gateway (client level encrypt) accepts a message for upstream.test"
id_encrypt=$queue_id
send may $PORT_MAY $UPSTREAM_RCPT
check_queued "upstream: gateway (client level may) accepts a message for upstream.test"
id_may=$queue_id

wait_delivery 30 "$id_verify" "$id_encrypt" "$id_may" ||
	echo "postfix interop: not every message has a delivery line after 30s"

# verify: the self-signed certificate does not verify; deferred, and
# (min_retry_interval 1h) still in the spool.
line=$(delivery_line "$id_verify")
if [[ -n $line ]] && jq -e '.msg == "delivery deferred" and .status == "deferred"
	and .relay == "127.0.0.1[127.0.0.1]:2700"
	and (.reply | contains("certificate not verified"))' <<<"$line" >/dev/null; then
	pass "upstream verify: 'delivery deferred', reply '$(jq -r .reply <<<"$line")'"
else
	fail "upstream verify: 'delivery deferred' with reply containing 'certificate not verified'" "${line:-"no delivery line for '$id_verify'"}"
fi
if [[ -n $line ]] && jq -e '.reply | test("unknown authority")' <<<"$line" >/dev/null; then
	pass "upstream verify: deferred for want of trust (unknown authority), not for the name"
else
	fail "upstream verify: deferred because the certificate is self-signed (unknown authority)" "${line:-none}"
fi
if [[ -n $id_verify && -f $queue/$id_verify.rec ]] &&
	[[ -n $line ]] && jq -e '(.next_attempt // "") != ""' <<<"$line" >/dev/null; then
	pass "upstream verify: message stays queued (spool record, next_attempt $(jq -r .next_attempt <<<"$line"))"
else
	fail "upstream verify: message stays queued with a next_attempt" \
		"$(ls -la "$queue" 2>&1)" "${line:-no delivery line}"
fi

# encrypt and may: sent over TLS, certificate not verified; Postfix's
# reply names its queue id, which its log shows delivered to the Maildir.
for level in encrypt may; do
	id_var=id_$level
	line=$(delivery_line "${!id_var}")
	if [[ -n $line ]] && jq -e '.msg == "delivery sent" and .status == "sent"
		and .relay == "127.0.0.1[127.0.0.1]:2700"
		and .tls == true and .tls_verified == false
		and (.reply | startswith("250 "))' <<<"$line" >/dev/null; then
		pass "upstream $level: 'delivery sent', tls true ($(jq -r '"\(.tls_version) \(.tls_cipher)"' <<<"$line")), tls_verified false, reply '$(jq -r .reply <<<"$line")'"
	else
		fail "upstream $level: 'delivery sent' with tls true and tls_verified false" "${line:-"no delivery line for '${!id_var}'"}"
	fi
	pf_id=
	[[ -z $line ]] || pf_id=$(jq -r '.reply // ""' <<<"$line" | sed -n 's/.*queued as \([0-9A-Za-z]*\).*/\1/p')
	deadline=$((SECONDS + 15))
	until [[ -z $pf_id ]] || grep -q "$pf_id: to=<$UPSTREAM_RCPT>, relay=virtual, .*status=sent" "$maillog" 2>/dev/null ||
		((SECONDS > deadline)); do
		sleep 0.2
	done
	if [[ -n $pf_id ]] && grep -q "$pf_id: to=<$UPSTREAM_RCPT>, relay=virtual, .*status=sent" "$maillog"; then
		pass "upstream $level: Postfix log: $pf_id delivered to maildir (status=sent)"
	else
		fail "upstream $level: Postfix log shows the message (Postfix id '$pf_id') delivered" \
			"$(grep -F "${pf_id:-no-id}" "$maillog" 2>&1)"
	fi
done

# Postfix's Maildir: exactly the encrypt and the may message.
deadline=$((SECONDS + 10))
until (($(find "$pf_maildir/new" -type f 2>/dev/null | wc -l) >= 2)) || ((SECONDS > deadline)); do
	sleep 0.2
done
mapfile -t arrived < <(find "$pf_maildir/new" -type f 2>/dev/null | sort)
subjects=$(for f in "${arrived[@]}"; do subject "$f"; done | sort | paste -sd, -)
if ((${#arrived[@]} == 2)) && [[ $subjects == encrypt,may ]]; then
	pass "upstream: exactly 2 messages in Postfix's Maildir (subjects: $subjects)"
else
	fail "upstream: exactly 2 messages (encrypt, may) in Postfix's Maildir" \
		"${#arrived[@]} files, subjects '$subjects'" "$(find "$pf/vmail" 2>&1 | head -n 20)"
fi
for f in "${arrived[@]}"; do
	subj=$(subject "$f")
	received=$(received_header "$f")
	if [[ $received == *"(using TLSv1."[23]" with cipher "* && $received == *"by postfix.test (Postfix) with ESMTPS id "* ]]; then
		tlsinfo=$(sed -n 's/.*(using \(TLSv1\.[0-9]\) with cipher \([^ ]*\).*/\1 \2/p' <<<"$received")
		pass "upstream ${subj:-?}: Postfix's Received: 'by postfix.test (Postfix) with ESMTPS', using $tlsinfo"
	else
		fail "upstream ${subj:-?}: Postfix's Received: says '(using TLSv1.x' and 'with ESMTPS'" "$received"
	fi
done

# ---- SMTP smuggling through the gateway to Postfix ----------------------

# Each end-of-data look-alike from the 2023 SMTP smuggling research,
# followed by a smuggled second transaction. swaks -ndf sends the data
# exactly as written (it adds only the final CRLF after our ".").
smuggle_pf_maildir=$pf/vmail/upstream.test/smuggle
declare -A variants=(
	[lf-dot-lf]='\n.\n' [lf-dot-crlf]='\n.\r\n' [cr-dot-cr]='\r.\r' [crlf-dot-cr]='\r\n.\r'
	[crlf-dot-lf]='\r\n.\n' [lf-dot-nul-lf]='\n.\x00\n' [crlf-nul-dot-crlf]='\r\n\x00.\r\n'
)
accepted=0
for name in "${!variants[@]}"; do
	for mode in reject normalize; do
		port_var=PORT_SMUGGLE_${mode^^}
		payload=$work/t/smuggle-$mode-$name.eml
		printf "Subject: caddy-smtp postfix interop smuggle-$mode-$name\r\n\r\nbefore${variants[$name]}MAIL FROM:<evil@evil.test>\r\nRCPT TO:<smuggle@upstream.test>\r\nDATA\r\nSubject: smuggled-$mode-$name\r\n\r\nafter\r\n." >"$payload"
		send "smuggle-$mode-$name" "${!port_var}" smuggle@upstream.test --data "@$payload" -ndf
		reply=$(grep -a -E '^<(\*\*|~|-) *[245][0-9][0-9] ' "$swaks_log" | grep -a -v -E 'Bye|Roger|make sure|Go ahead|Hello' | tail -n 1)
		if [[ -n $queue_id ]]; then
			accepted=$((accepted + 1))
			smuggled_ids+=("$queue_id")
		fi
		case $mode-$name in
		reject-crlf-dot-cr | reject-crlf-nul-dot-crlf | normalize-*)
			# No bare line end reaches the spool: go-smtp's dot-unstuffing
			# drops ".\r" at a line start, a NUL is data, normalize
			# rewrites; one message, CRLF only.
			if [[ -n $queue_id ]]; then
				pass "smuggling $mode $name: accepted as one message ($queue_id)"
			else
				fail "smuggling $mode $name: accepted as one message" "$(show "$swaks_log")"
			fi
			;;
		*)
			if grep -q '550 5.5.2' <<<"$reply"; then
				pass "smuggling $mode $name: refused with 550 5.5.2"
			else
				fail "smuggling $mode $name: refused with 550 5.5.2" "$(show "$swaks_log")"
			fi
			;;
		esac
	done
done
wait_delivery 30 "${smuggled_ids[@]}" || echo "postfix interop: not every smuggling message has a delivery line after 30s"
deadline=$((SECONDS + 15))
until (($(find "$smuggle_pf_maildir/new" -type f 2>/dev/null | wc -l) >= accepted)) || ((SECONDS > deadline)); do
	sleep 0.2
done
sleep 1 # a second message, were there one, would arrive now
n=$(find "$smuggle_pf_maildir/new" -type f 2>/dev/null | wc -l)
if ((n == accepted)); then
	pass "smuggling: Postfix received exactly the $accepted accepted messages, one each"
else
	fail "smuggling: Postfix received exactly $accepted messages" "$n in $smuggle_pf_maildir/new"
fi
# A smuggled transaction would be its own message: sender evil@evil.test
# in Postfix's log, and "Subject: smuggled-..." in a header section (in
# the accepted messages it is only ever body text).
smuggled_headers=$(for f in "$smuggle_pf_maildir"/new/*; do
	awk '/^\r?$/ { exit } /^Subject: smuggled/ { print FILENAME }' "$f"
done 2>/dev/null)
if ! grep -q 'from=<evil@evil.test>' "$maillog" && [[ -z $smuggled_headers ]]; then
	pass "smuggling: no smuggled transaction at Postfix (no from=<evil@evil.test>, no 'Subject: smuggled' header)"
else
	fail "smuggling: no smuggled transaction at Postfix" "$(grep 'evil@evil.test' "$maillog")"
fi

# ---- Postfix as the client ---------------------------------------------

gw_before=$(find "$gw_maildir/new" -type f 2>/dev/null | wc -l)
send postfix-client $PORT_POSTFIX $GATEWAY_RCPT
check_queued "client: Postfix accepts a message for example.test (relayhost [127.0.0.1]:$PORT_RELAY)"
pf_id=$queue_id

deadline=$((SECONDS + 30))
until (($(find "$gw_maildir/new" -type f 2>/dev/null | wc -l) > gw_before)) || ((SECONDS > deadline)); do
	sleep 0.2
done
mapfile -t gw_files < <(find "$gw_maildir/new" -type f 2>/dev/null | sort)
gw_file=
for f in "${gw_files[@]}"; do
	[[ $(subject "$f") == postfix-client ]] && gw_file=$f
done
if [[ -n $gw_file ]]; then
	pass "client: the message arrived in the gateway's Maildir (new/$(basename "$gw_file"))"
else
	fail "client: the message arrives in the gateway's Maildir within 30s" \
		"$(find "$gw_maildir" 2>&1 | head -n 20)" "$(grep -F "${pf_id:-no-id}" "$maillog" 2>&1)"
fi
if [[ -n $gw_file ]]; then
	received=$(received_header "$gw_file")
	if [[ $received == "Received: from postfix.test "* && $received == *" with ESMTPS id "* ]]; then
		pass "client: gateway's Received: 'from postfix.test ... with ESMTPS' ($(grep -o '(using [^)]*)' <<<"$received"))"
	else
		fail "client: gateway's Received: says 'from postfix.test' and 'with ESMTPS'" "$received"
	fi
fi

# Postfix's smtp client logs the TLS session (smtp_tls_loglevel 1) and
# the delivery. Caddy's internal CA is not in Postfix's trust: Untrusted.
deadline=$((SECONDS + 10))
until grep -q "${pf_id:-no-id}: to=<$GATEWAY_RCPT>, relay=$HOST\[$HOST\]:$PORT_RELAY,.* status=" "$maillog" 2>/dev/null ||
	((SECONDS > deadline)); do
	sleep 0.2
done
tls_line=$(grep -E "(Untrusted|Anonymous|Trusted|Verified) TLS connection established to $HOST\[$HOST\]:$PORT_RELAY" "$maillog" | tail -n 1)
if [[ -n $tls_line ]]; then
	pass "client: Postfix log: '$(sed 's/.*\]: \([A-Za-z]* TLS connection established to [^:]*:[0-9]*\): \(.*\)/\1 (\2)/' <<<"$tls_line")'"
else
	fail "client: Postfix log says 'TLS connection established to ${HOST}[${HOST}]:$PORT_RELAY'" \
		"$(grep -F 'smtp[' "$maillog" 2>&1 | tail -n 10)"
fi
sent_line=$(grep "${pf_id:-no-id}: to=<$GATEWAY_RCPT>, relay=$HOST\[$HOST\]:$PORT_RELAY,.* status=sent " "$maillog" | tail -n 1)
gw_id=$(sed -n 's/.*status=sent (250 .*queued as \([A-Za-z0-9_-]*\)).*/\1/p' <<<"$sent_line")
if [[ -n $sent_line ]]; then
	pass "client: Postfix log: $pf_id relay=${HOST}[${HOST}]:$PORT_RELAY status=sent ($(sed 's/.*status=sent (\(.*\))$/\1/' <<<"$sent_line"))"
else
	fail "client: Postfix log says status=sent via relay=${HOST}[${HOST}]:$PORT_RELAY" \
		"$(grep -F "${pf_id:-no-id}" "$maillog" 2>&1)"
fi
line=$(jq -c --arg id "${gw_id:-no-id}" 'select(.msg == "message accepted" and .queue_id == $id)' "$caddy_log" 2>/dev/null | head -n 1)
if [[ -n $line ]] && jq -e '.server == "from_postfix" and .protocol == "ESMTPS"' <<<"$line" >/dev/null; then
	pass "client: caddy log: 'message accepted' $gw_id on from_postfix with protocol ESMTPS"
else
	fail "client: caddy log: 'message accepted' on from_postfix with protocol ESMTPS" "${line:-"none for '$gw_id'"}"
fi

# ---- end ----------------------------------------------------------------

bad=$(grep -E 'postfix-ci/[^:]*: (fatal|panic|error):' "$maillog" 2>/dev/null)
if [[ -z $bad ]]; then
	pass "end: Postfix log has no fatal/panic/error lines"
else
	fail "end: Postfix log has no fatal/panic/error lines" "$bad"
fi
# Warnings are expected (e.g. the TLS alert of the verify attempt); shown.
grep -E 'postfix-ci/[^:]*: warning:' "$maillog" 2>/dev/null | sed 's/^/        note: /'
check_caddy_running
if postfix_alive; then
	pass "end: Postfix instance still running"
else
	fail "end: Postfix instance still running" "its master exited"
fi

((failed == 0)) # ci_finish prints the totals
