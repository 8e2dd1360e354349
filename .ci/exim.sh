#!/usr/bin/env bash
# Interop test with a real Exim 4 (Debian's exim4-daemon-light, 4.96 on
# Debian 12), both ways, on loopback.
#
#   .ci/exim.sh <caddy-binary>
#
# Runs as root. Exim is never installed (Debian's MTAs conflict, and
# Postfix stays installed for .ci/postfix.sh): exim4-daemon-light,
# exim4-base and exim4-config are fetched with apt-get download and
# unpacked with dpkg -x into /var/cache/caddy-smtp-ci (reused by later
# runs); missing libraries they link against are installed with apt-get;
# the system user Debian-exim (compiled into the binary) is created if
# missing. A private Exim (`exim4 -C DIR/exim.conf -bdf`, config from
# .ci/exim/exim.conf.in) runs from a temporary directory, in a mount
# namespace whose resolv.conf names 127.0.0.1 only; the caddy binary runs
# with .ci/exim/exim.Caddyfile.
#
#  - Exim as the client, for each receiving level of the gateway (none,
#    may, encrypt): a message handed to Exim (swaks to 127.0.0.1:2800) is
#    relayed to the gateway, which files it in a Maildir; the gateway's
#    Received: says ESMTPS where Exim used STARTTLS, ESMTP where not. An
#    Exim told to avoid TLS is refused at level encrypt (530).
#  - Exim as the next hop, for each client level (none, may, encrypt,
#    verify) and three Exim listeners (STARTTLS with a self-signed
#    certificate; with one from a test CA the script makes; no
#    STARTTLS): delivered (with or without TLS) or deferred, as the
#    level says; delivered mail is looked for in Exim's Maildir, deferred
#    mail in the gateway's log and queue (admin API).
#
# Prints one PASS/FAIL line per check and "exim interop: N passed, M
# failed", and exits non-zero if any check failed. Ports: 2800-2803
# (Exim), 2821-2823 and 2830 (gateway), 2899 (Caddy admin).
# Needs: bash, swaks (with Net::SSLeay), openssl, jq, apt-get, dpkg-deb,
# unshare and setsid (util-linux). EXIM_KEEP=1 keeps the work directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=mta.sh
source "$(dirname "${BASH_SOURCE[0]}")/mta.sh"

mta_init exim Exim "$@" # ci_init "exim interop", root, tools, $templates, $config, EXIM_KEEP

readonly PORT_SUBMIT=2800 PORT_SELF=2801 PORT_CA=2802 PORT_NOTLS=2803
readonly PORT_GW_NONE=2821 PORT_GW_MAY=2822 PORT_GW_ENCRYPT=2823 PORT_TO_MTA=2830 PORT_ADMIN=2899

on_failure() {
	print_tail "caddy stdout/stderr" 20 "$caddy_out"
	print_tail "caddy JSON log" 30 "$caddy_log"
	print_tail "exim mainlog" 40 "$ex/log/mainlog"
	print_tail "exim paniclog" 10 "$ex/log/paniclog"
	print_tail "exim stdout/stderr" 10 "$ex/exim.out"
	echo "----"
}
ci_traps

mta_make_work       # $work (Exim runs as Debian-exim), $caddy_log, $gw_maildir
ex=$work/exim       # the Exim instance
mta_vmail=$ex/vmail # Exim's Maildir
mkdir -p "$ex/spool" "$ex/log" "$ex/vmail"

# ---- setup --------------------------------------------------------------

mta_unpack exim exim4-daemon-light exim4-base exim4-config || exit 1
exim=$mta_tree/usr/sbin/exim4
mta_ldd "$exim" || exit 1
if ! mta_system_user Debian-exim /var/spool/exim4; then
	fail "setup: system user Debian-exim"
	exit 1
fi
chown -R Debian-exim:Debian-exim "$ex/spool" "$ex/log" "$ex/vmail"

mta_setup_certs || exit 1
chgrp Debian-exim "$work"/tls/*key*
chmod 640 "$work"/tls/*key*

mta_config exim.conf.in "$ex" -e "s|@EXIM@|$exim|g"
ex_version=$("$exim" -C "$ex/exim.conf" -bV 2>"$work/t/exim-bV.err" | sed -n 's/^Exim version \([^ ]*\).*/\1/p')
if [[ -n $ex_version ]] && ! grep -qi 'error\|failed' "$work/t/exim-bV.err"; then
	pass "exim: $exim -C exim.conf -bV: Exim $ex_version, config OK"
else
	fail "exim: config check (exim -bV)" "$(show "$work/t/exim-bV.err")"
	exit 1
fi

mta_start "$ex/exim.out" "$ex" "" "$exim" -C "$ex/exim.conf" -bdf
mta_check_started $PORT_SELF "220 $MTA_NAME ESMTP Exim $ex_version" "$ex/exim.out" "$ex/log/paniclog" || exit 1

# The three next-hop listeners, as the gateway will see them.
starttls_probe "$work/t/probe-self.log" $PORT_SELF -CAfile "$work/tls/ca.pem"
if grep -q '^subject=.*CN *= *mta.test' "$work/t/probe-self.log" && grep -q 'Verify return code: 18 ' "$work/t/probe-self.log"; then
	pass "exim: STARTTLS on $PORT_SELF serves the self-signed certificate (openssl: self-signed, code 18)"
else
	fail "exim: STARTTLS on $PORT_SELF serves the self-signed certificate" "$(show "$work/t/probe-self.log")"
fi
starttls_probe "$work/t/probe-ca.log" $PORT_CA -CAfile "$work/tls/ca.pem" -verify_hostname $MTA_NAME
if grep -q 'Verify return code: 0 (ok)' "$work/t/probe-ca.log"; then
	pass "exim: STARTTLS on $PORT_CA serves the test CA's certificate (openssl verifies it for $MTA_NAME)"
else
	fail "exim: STARTTLS on $PORT_CA serves a certificate that verifies" "$(show "$work/t/probe-ca.log")"
fi
starttls_probe "$work/t/probe-notls.log" $PORT_NOTLS
if ! grep -q 'BEGIN CERTIFICATE' "$work/t/probe-notls.log"; then
	pass "exim: $PORT_NOTLS offers no STARTTLS"
else
	fail "exim: $PORT_NOTLS offers no STARTTLS" "$(show "$work/t/probe-notls.log")"
fi

# ---- Exim's log ---------------------------------------------------------

# The Received: Exim wrote: "with esmtps (TLS1.3) tls ..." or "with esmtp".
mta_received_tls() {
	local r
	r=$(received_header "$1")
	if [[ $r == *" by $MTA_NAME with esmtps ("* ]]; then
		echo tls
	elif [[ $r == *" by $MTA_NAME with esmtp ("* ]]; then
		echo plain
	else
		echo "unknown: $r"
	fi
}
mta_log_mark() { wc -l <"$ex/log/mainlog" 2>/dev/null || echo 0; }
# From the acl_helo "ehlo-trace" lines: per client port, EHLOs in
# plaintext and inside TLS.
mta_ehlo_since() {
	tail -n +$(($1 + 1)) "$ex/log/mainlog" 2>/dev/null | awk -v port="$2" '
		$0 ~ ("ehlo-trace port=" port " ") {
			peer = $0; sub(/.* peer=/, "", peer); sub(/ .*/, "", peer)
			if (!(peer in plain)) { order[++n] = peer; plain[peer] = 0; tls[peer] = 0 }
			if ($0 ~ / tls=yes /) tls[peer]++; else plain[peer]++
		}
		END { for (i = 1; i <= n; i++) print plain[order[i]], tls[order[i]] }'
}
mta_log_excerpt() { tail -n +$(($1 + 1)) "$ex/log/mainlog" 2>/dev/null | grep -v 'lost privilege for using -C' | head -n 20; }

# ---- caddy --------------------------------------------------------------

mta_gateway_start || exit 1

# ---- Exim as the client -------------------------------------------------

client_cell none plain
client_cell may tls
client_cell encrypt tls

# Told to avoid TLS (hosts_avoid_tls), Exim meets 530 at MAIL at level
# encrypt. A 5xx: Exim fails the recipient and bounces (to the test
# sender's domain, which it keeps); nothing reaches the gateway's Maildir.
send client-encrypt-notls $PORT_SUBMIT someone@srv-encrypt-notls.test
ex_id=$(sed -n 's/^<- *250 .*id=\([A-Za-z0-9-]*\).*/\1/p' "$swaks_log" | tail -n 1)
deadline=$((SECONDS + 30))
until grep -q "${ex_id:-no-id} \(\*\*\|==\) someone@srv-encrypt-notls.test" "$ex/log/mainlog" 2>/dev/null || ((SECONDS > deadline)); do
	sleep 0.2
done
line=$(grep "${ex_id:-no-id} \(\*\*\|==\) someone@srv-encrypt-notls.test" "$ex/log/mainlog" 2>/dev/null | head -n 1)
client_notls_checks "$line" "${line#* * }" "no ** or == line for Exim id '$ex_id'"

# ---- Exim as the next hop -----------------------------------------------

# level     self (self-signed)  ca (test CA)      notls
# none      plain               plain             plain
# may       TLS                 TLS               plain
# encrypt   TLS                 TLS               deferred
# verify    deferred (trust)    TLS, verified     deferred
upstream_cell none self plain
upstream_cell none ca plain
upstream_cell none notls plain
upstream_cell may self tls
upstream_cell may ca tls
upstream_cell may notls plain
upstream_cell encrypt self tls
upstream_cell encrypt ca tls
upstream_cell encrypt notls deferred
upstream_cell verify self deferred
upstream_cell verify ca tls
upstream_cell verify notls deferred
check_deferred_queued

# The reasons, as the README words them.
for cell in "encrypt notls TLS is required, but was not offered" "verify notls TLS is required, but was not offered" \
	"verify self certificate not verified"; do
	read -r level variant reason <<<"$cell"
	for i in "${!deferred_cells[@]}"; do
		[[ ${deferred_cells[$i]} == "$variant/$level" ]] || continue
		line=$(delivery_line "${deferred_ids[$i]}")
		if jq -e --arg r "$reason" '.reply | contains($r)' <<<"$line" >/dev/null 2>&1; then
			pass "upstream $variant/$level: deferred because '$reason'"
		else
			fail "upstream $variant/$level: deferred because '$reason'" "${line:-no line}"
		fi
	done
done

# ---- end ----------------------------------------------------------------

# Each re-exec of Exim by its own user with -C notes "exim user lost
# privilege for using -C option" in the paniclog (the private config is
# not in /etc/exim4/trusted_configs; harmless here); anything else counts.
panics=$(grep -v 'exim user lost privilege for using -C option' "$ex/log/paniclog" 2>/dev/null)
if [[ -z $panics ]]; then
	pass "end: Exim's paniclog has nothing but the -C privilege notes ($(grep -c . "$ex/log/paniclog" 2>/dev/null || echo 0))"
else
	fail "end: Exim's paniclog has nothing but the -C privilege notes" "$panics"
fi
mta_end_checks

((failed == 0)) # ci_finish prints the totals
