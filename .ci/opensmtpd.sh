#!/usr/bin/env bash
# Interop test with a real OpenSMTPD (Debian's opensmtpd, 6.8.0p2 on
# Debian 12), both ways, on loopback.
#
#   .ci/opensmtpd.sh <caddy-binary>
#
# Runs as root. OpenSMTPD is never installed (Debian's MTAs conflict,
# and Postfix stays installed for .ci/postfix.sh): the opensmtpd package
# is fetched with apt-get download and unpacked with dpkg -x into
# /var/cache/caddy-smtp-ci (reused by later runs); missing libraries it
# links against are installed with apt-get; the system users opensmtpd
# and opensmtpq (compiled into the binary) are created if missing. A
# private smtpd (`smtpd -d -T smtp -f DIR/smtpd.conf`, config from
# .ci/opensmtpd/smtpd.conf.in, its log and SMTP trace on stderr) runs in
# a mount namespace where its compiled-in paths (/var/spool/smtpd, the
# control socket in /run, the chroot in /var/lib, /usr/libexec/opensmtpd)
# are private and resolv.conf names 127.0.0.1 only; the caddy binary
# runs with .ci/opensmtpd/opensmtpd.Caddyfile.
#
#  - OpenSMTPD as the client, for each receiving level of the gateway
#    (none, may, encrypt): a message handed to OpenSMTPD (swaks to
#    127.0.0.1:2900) is relayed to the gateway, which files it in a
#    Maildir; the gateway's Received: says ESMTPS where OpenSMTPD used
#    STARTTLS, ESMTP where not. Told not to use TLS (smtp+notls), it is
#    refused at level encrypt (530).
#  - OpenSMTPD as the next hop, for each client level (none, may,
#    encrypt, verify) and three listeners (STARTTLS with a self-signed
#    certificate; with one from a test CA the script makes; no
#    STARTTLS): delivered or deferred, as the level says; delivered mail
#    is looked for in OpenSMTPD's Maildir, deferred mail in the gateway's
#    log and queue (admin API). OpenSMTPD's trace shows each EHLO, so
#    each cell also checks one EHLO per connection.
#
# OpenSMTPD 6.8 on Debian 12 fails every TLS handshake as a SERVER with
# OpenSSL 3 (upstream issues 1171 and 1239, "missing private key": the
# private key lives in its privilege-separated "ca" process, whose RSA
# engine does not work with OpenSSL 3). It sends its certificate, then
# cannot sign: the client gets alert 80 (internal error), smtpd logs
# "io-error: error:0A080006:SSL routines::EVP lib". Its client side works.
# So its STARTTLS-offering listeners test the gateway's fallback to
# plaintext under `may` and its deferrals under `encrypt` and `verify`:
#
#   level     self (self-signed)  ca (test CA)  notls
#   none      plain               plain         plain
#   may       plain (fallback)    plain (fb.)   plain
#   encrypt   deferred            deferred      deferred
#   verify    deferred            deferred      deferred
#
# Prints one PASS/FAIL line per check and "opensmtpd interop: N passed,
# M failed", and exits non-zero if any check failed. Ports: 2900-2903
# (OpenSMTPD), 2921-2923 and 2930 (gateway), 2999 (Caddy admin).
# Needs: bash, swaks (with Net::SSLeay), openssl, jq, apt-get, dpkg-deb,
# unshare and setsid (util-linux). OPENSMTPD_KEEP=1 keeps the work
# directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=mta.sh
source "$(dirname "${BASH_SOURCE[0]}")/mta.sh"

mta_init opensmtpd OpenSMTPD "$@" # ci_init "opensmtpd interop", root, tools, $templates, $config, OPENSMTPD_KEEP

readonly PORT_SUBMIT=2900 PORT_SELF=2901 PORT_CA=2902 PORT_NOTLS=2903
readonly PORT_GW_NONE=2921 PORT_GW_MAY=2922 PORT_GW_ENCRYPT=2923 PORT_TO_MTA=2930 PORT_ADMIN=2999

on_failure() {
	print_tail "caddy stdout/stderr" 20 "$caddy_out"
	print_tail "caddy JSON log" 30 "$caddy_log"
	print_tail "smtpd log (no trace lines)" 40 <(grep -v -E '^(smtp: |<<< )' "$osd_log" 2>/dev/null)
	echo "----"
}
ci_traps

mta_make_work          # $work (smtpd runs as opensmtpd and opensmtpq), $caddy_log, $gw_maildir
osd=$work/opensmtpd    # the OpenSMTPD instance
osd_log=$osd/smtpd.log # its log and SMTP trace (stderr of smtpd -d -T smtp)
mta_vmail=$osd/vmail   # OpenSMTPD's Maildir
mkdir -p "$osd/spool/smtpd" "$osd/vmail"
chmod 711 "$osd/spool/smtpd" # smtpd insists

# ---- setup --------------------------------------------------------------

mta_unpack opensmtpd opensmtpd || exit 1
smtpd=$mta_tree/usr/sbin/smtpd
mta_ldd "$smtpd" "$mta_tree"/usr/libexec/opensmtpd/mail.maildir || exit 1
if ! mta_system_user opensmtpd /var/lib/opensmtpd/empty || ! mta_system_user opensmtpq /var/lib/opensmtpd/empty; then
	fail "setup: system users opensmtpd and opensmtpq"
	exit 1
fi
chown opensmtpd:opensmtpd "$osd/vmail"

mta_setup_certs || exit 1
chmod 600 "$work"/tls/*key*

mta_config smtpd.conf.in "$osd"
if "$smtpd" -n -f "$osd/smtpd.conf" >"$work/t/smtpd-n.log" 2>&1; then
	pass "opensmtpd: $smtpd -n -f smtpd.conf: configuration OK"
else
	fail "opensmtpd: config check (smtpd -n)" "$(show "$work/t/smtpd-n.log")"
	exit 1
fi

# The compiled-in paths, private in the namespace (see smtpd.conf.in).
ns_setup="mount -t tmpfs caddy-smtp-ci /run
mount -t tmpfs caddy-smtp-ci /var/lib
mkdir -p /var/lib/opensmtpd/empty
mount --bind '$osd/spool' /var/spool
mount -t tmpfs caddy-smtp-ci /usr/libexec
mkdir /usr/libexec/opensmtpd
mount --bind '$mta_tree/usr/libexec/opensmtpd' /usr/libexec/opensmtpd"
mta_start "$osd_log" "$osd" "$ns_setup" "$smtpd" -d -T smtp -f "$osd/smtpd.conf"
mta_check_started $PORT_SUBMIT "220 $MTA_NAME ESMTP OpenSMTPD" "$osd_log" || exit 1
osd_version=$(sed -n 's/^info: OpenSMTPD \([^ ]*\) starting.*/\1/p' "$osd_log" | head -n 1)

# The three next-hop listeners. On the two that offer STARTTLS the
# handshake fails (OpenSSL 3, see the top): checked, so that a fixed
# OpenSMTPD shows up here and the expectations below get revisited.
for variant in self ca; do
	port=${variant_port[$variant]}
	mark=$(wc -l <"$osd_log")
	starttls_probe "$work/t/probe-$variant.log" "$port" -CAfile "$work/tls/ca.pem"
	sleep 0.3
	reason=$(tail -n +$((mark + 1)) "$osd_log" | grep -o 'reason="io-error[^"]*"' | head -n 1)
	if grep -q 'alert internal error' "$work/t/probe-$variant.log" && [[ -n $reason ]]; then
		pass "opensmtpd: $port offers STARTTLS, the handshake fails (known: 6.8 with OpenSSL 3): openssl gets alert 80 (internal error), smtpd logs $reason"
	else
		fail "opensmtpd: $port offers STARTTLS and (OpenSSL 3) the handshake fails" "$(grep -v '^[A-Za-z0-9+/=]*$' "$work/t/probe-$variant.log" | head -n 30)"
	fi
done
starttls_probe "$work/t/probe-notls.log" $PORT_NOTLS
if ! grep -q 'BEGIN CERTIFICATE\|Ready to start TLS' "$work/t/probe-notls.log"; then
	pass "opensmtpd: $PORT_NOTLS offers no STARTTLS"
else
	fail "opensmtpd: $PORT_NOTLS offers no STARTTLS" "$(show "$work/t/probe-notls.log")"
fi

# ---- OpenSMTPD's log ----------------------------------------------------

# The Received: OpenSMTPD wrote: "with ESMTPS id ... (TLSv1.3:...)" or
# "with ESMTP id".
mta_received_tls() {
	local r
	r=$(received_header "$1")
	if [[ $r == *" by $MTA_NAME (OpenSMTPD) with ESMTPS id "* ]]; then
		echo tls
	elif [[ $r == *" by $MTA_NAME (OpenSMTPD) with ESMTP id "* ]]; then
		echo plain
	else
		echo "unknown: $r"
	fi
}
mta_log_mark() { wc -l <"$osd_log" 2>/dev/null || echo 0; }
# From the SMTP trace (-T smtp): "smtp: 0xSESSION: connected to listener
# ... port=P, ...", then "<<< EHLO ..." and "<<< STARTTLS" lines of that
# session; a session's address is reused by later sessions.
mta_ehlo_since() {
	tail -n +$(($1 + 1)) "$osd_log" 2>/dev/null | awk -v port="$2" '
		$1 == "smtp:" && / connected to listener / {
			if ($0 ~ ("port=" port ",")) { c[$2] = ++n; plain[n] = 0; tls[n] = 0; st[$2] = 0 } else delete c[$2]
			next
		}
		$1 == "smtp:" && ($2 in c) && $3 == "<<<" {
			cmd = toupper($4)
			if (cmd == "STARTTLS") st[$2] = 1
			else if (cmd == "EHLO" || cmd == "HELO") { if (st[$2]) tls[c[$2]]++; else plain[c[$2]]++ }
		}
		END { for (i = 1; i <= n; i++) print plain[i], tls[i] }'
}
mta_log_excerpt() { tail -n +$(($1 + 1)) "$osd_log" 2>/dev/null | grep -v '^<<< \[MSG\]' | head -n 40; }

# ---- caddy --------------------------------------------------------------

mta_gateway_start || exit 1

# ---- OpenSMTPD as the client --------------------------------------------

# Its client side does TLS with OpenSSL 3 fine.
client_cell none plain
client_cell may tls
client_cell encrypt tls

# Told not to use TLS (smtp+notls), OpenSMTPD meets 530 at MAIL at level
# encrypt; a 5xx, so it fails the recipient (PermFail) and bounces to the
# test sender (kept locally); nothing reaches the gateway's Maildir.
send client-encrypt-notls $PORT_SUBMIT someone@srv-encrypt-notls.test
deadline=$((SECONDS + 40))
pat='mta delivery .* to=<someone@srv-encrypt-notls.test> .*result="\(PermFail\|TempFail\)"'
until grep -q "$pat" "$osd_log" 2>/dev/null || ((SECONDS > deadline)); do
	sleep 0.2
done
line=$(grep "$pat" "$osd_log" 2>/dev/null | head -n 1)
client_notls_checks "$line" "$(grep -o 'result=.*' <<<"$line")" "no mta delivery line for someone@srv-encrypt-notls.test"

# ---- OpenSMTPD as the next hop ------------------------------------------

# See the table at the top. "may, notls" and the EHLO counts of the
# cells without TLS in the end assert the correct behaviour.
upstream_cell none self plain
upstream_cell none ca plain
upstream_cell none notls plain
upstream_cell may self plain
upstream_cell may ca plain
upstream_cell may notls plain
upstream_cell encrypt self deferred
upstream_cell encrypt ca deferred
upstream_cell encrypt notls deferred
upstream_cell verify self deferred
upstream_cell verify ca deferred
upstream_cell verify notls deferred
check_deferred_queued

# may over a listener that offers STARTTLS: the failed handshake is
# logged, and the plaintext retry is what delivered.
for variant in self ca; do
	id=$(jq -r --arg r "someone@may.$variant.test" 'select(.msg == "message accepted" and .to[0] == $r) | .queue_id' "$caddy_log" | head -n 1)
	line=$(jq -c --arg id "${id:-no-id}" 'select(.queue_id == $id and (.msg | test("plaintext")))' "$caddy_log" | head -n 1)
	if [[ -n $line ]]; then
		pass "upstream $variant/may: gateway log '$(jq -r .msg <<<"$line")' ($(jq -r '.reason // .error // ""' <<<"$line" | head -c 160))"
	else
		fail "upstream $variant/may: gateway log says the handshake failed and it retried in plaintext" \
			"$(jq -c --arg id "${id:-no-id}" 'select(.queue_id == $id)' "$caddy_log" | head -n 5)"
	fi
done

# ---- end ----------------------------------------------------------------

bad=$(grep -E '^(fatal|panic|error):' "$osd_log" 2>/dev/null)
if [[ -z $bad ]]; then
	pass "end: smtpd log has no fatal/panic/error lines (OpenSMTPD $osd_version)"
else
	fail "end: smtpd log has no fatal/panic/error lines" "$bad"
fi
mta_end_checks

((failed == 0)) # ci_finish prints the totals
