#!/usr/bin/env bash
# Cross-check of `caddy smtp-dns` with a real DANE peer: Postfix (smtp
# client, smtp_tls_security_level dane, smtp_dns_support_level dnssec)
# delivers to the gateway by MX lookup, through a validating Unbound, and
# authenticates it with the TLSA record that `caddy smtp-dns` printed.
#
#   .ci/postfix-dane.sh <caddy-binary>
#
# Runs as root, after .ci/postfix.sh has installed Postfix (packages
# postfix, nsd, unbound, ldnsutils, swaks, openssl, jq). Everything is
# private and on loopback:
#
#  - the gateway (.ci/postfix-dane/dane.json.in): server mx on
#    MX_IP:25 (127.0.0.2, or 127.0.0.3.. if something listens there;
#    127.0.0.1 is Postfix's own address, see below),
#    hostname mx.dane.test, TLS may, accept_domains dane.test and
#    bad.dane.test into a Maildir; its certificate comes from Caddy's
#    internal CA with a 20s lifetime, renewed at half of it (the tls
#    app checks every second), reusing the key;
#  - NSD on 127.0.0.154:53 serving the zone dane.test, signed here with
#    ldns-keygen and ldns-signzone (as internal/dnssectest does):
#      dane.test MX 10 mx.dane.test, mx.dane.test A MX_IP, and the TLSA
#      line exactly as `caddy smtp-dns --domain mx.dane.test` printed it;
#      bad.dane.test MX 10 mxbad.dane.test, mxbad.dane.test A MX_IP, and
#      a TLSA 3 1 1 of a key the gateway does not have;
#  - Unbound on 127.0.0.153:53, validating with the zone's DS as its only
#    trust anchor, asking NSD only (everything else refused);
#  - a Postfix instance (`postfix -c DIR`, .ci/postfix-dane/main.cf.in
#    and master.cf; inet_interfaces and smtpd on 127.0.0.1, port 2730,
#    for the test messages), started inside `unshare --mount` with a private /etc/resolv.conf
#    naming Unbound (options trust-ad): the system's resolver and
#    services are untouched.
#
# Checks: Postfix delivers rcpt@dane.test with "Verified TLS connection
# established to mx.dane.test" and it arrives in the gateway's Maildir;
# mail for bad.dane.test (TLSA mismatch) is deferred and does not arrive;
# after the gateway renews its certificate (new serial seen by openssl)
# `caddy smtp-dns` prints the same TLSA and a second message is again
# Verified and arrives.
#
# Prints one PASS/FAIL line per check and "postfix dane: N passed, M
# failed", and exits non-zero if any check failed (about 15 s). Ports:
# 127.0.0.1:2730 (Postfix), 127.0.0.1:2898 (Caddy admin), 53 on
# 127.0.0.153 and .154, 25 on the gateway's address. Needs drill
# (ldnsutils), ss (iproute2), unshare (util-linux) besides the above.
# Set POSTFIX_DANE_KEEP=1 to keep the temporary directory.
set -uo pipefail # no -e: every check runs and is counted
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ci_init "postfix dane" "$@"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
templates=$here/postfix-dane

PATH=$PATH:/usr/sbin:/sbin
if [[ $(id -u) -ne 0 ]]; then
	echo "postfix dane: must run as root (port 25, port 53, a mount namespace)" >&2
	exit 2
fi
need_tools postfix postconf nsd nsd-checkzone unbound unbound-checkconf ldns-keygen ldns-signzone drill \
	swaks openssl jq timeout unshare ss

readonly DNS_IP=127.0.0.153 NSD_IP=127.0.0.154 PF_IP=127.0.0.1 PF_PORT=2730 ADMIN=127.0.0.1:2898
readonly DANE_SENDER=dane@client.dane-ci.test

nsd_pid='' unbound_pid='' postfix_started=''
keep=${POSTFIX_DANE_KEEP:-}

# listening PROTO ADDR:PORT: something listens there (tcp or udp).
listening() {
	local flag=-lnt
	[[ $1 == udp ]] && flag=-lnu
	[[ -n $(ss -H "$flag" "src $2" 2>/dev/null) ]]
}

postfix_master_pid() { sed -n 's/^ *\([0-9][0-9]*\).*/\1/p' "$pf/queue/pid/master.pid" 2>/dev/null; }
postfix_alive() {
	local pid
	pid=$(postfix_master_pid)
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}
stop_postfix() {
	[[ -n $postfix_started ]] || return 0
	local pid
	pid=$(postfix_master_pid)
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
# stop_pid PID: TERM, KILL after 5s, reap.
stop_pid() {
	[[ -n $1 ]] || return 0
	kill -TERM "$1" 2>/dev/null
	for _ in $(seq 50); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}
at_exit() {
	stop_postfix
	stop_pid "$unbound_pid"
	stop_pid "$nsd_pid"
	unbound_pid='' nsd_pid=''
}
on_failure() {
	print_tail "caddy stdout/stderr" 20 "$caddy_out"
	print_tail "caddy JSON log" 20 "$caddy_log"
	print_tail "unbound log" 20 "$work/unbound/unbound.log"
	print_tail "nsd log" 10 "$work/nsd/nsd.log"
	print_tail "postfix maillog" 40 "$maillog"
	echo "----"
}
ci_traps

# ---- setup ----------------------------------------------------------------

echo "postfix dane: $("$caddy_bin" version); postfix $(postconf -d -h mail_version 2>/dev/null)"

# The gateway's address: not 127.0.0.1, Postfix's inet_interfaces (an
# MX on an address of its own is "mail loops back to myself"; and
# Postfix takes only addresses configured on an interface, so it cannot
# have another loopback address instead): 127.0.0.2, or the next one
# whose port 25 is free.
MX_IP=
for ip in 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5; do
	if ! listening tcp "$ip:25" && ! listening tcp "0.0.0.0:25"; then
		MX_IP=$ip
		break
	fi
done
busy=()
for a in tcp/$DNS_IP:53 udp/$DNS_IP:53 tcp/$NSD_IP:53 udp/$NSD_IP:53 tcp/$PF_IP:$PF_PORT tcp/$ADMIN; do
	! listening "${a%%/*}" "${a#*/}" || busy+=("$a")
done
if [[ -z $MX_IP || ${#busy[@]} -gt 0 ]]; then
	fail "start: loopback ports free" "MX address: '${MX_IP:-none free on port 25}'; busy: ${busy[*]}"
	exit 1
fi

make_work postfix-dane
chmod 755 "$work" # Postfix's daemons run as the postfix user
echo "postfix dane: work directory $work; gateway on $MX_IP:25"
caddy_log=$work/caddy.log caddy_out=$work/caddy.out
gw_maildir=$work/maildir
pf=$work/postfix maillog=$work/postfix/maillog
mkdir -p "$work/t" "$work/zone" "$work/nsd" "$work/unbound" "$pf/etc" "$pf/queue" "$pf/data"

# served_serial: the serial of the certificate the gateway serves to SNI
# mx.dane.test (empty if none).
served_serial() {
	timeout 10 openssl s_client -starttls smtp -connect "$MX_IP:25" -servername mx.dane.test </dev/null 2>/dev/null |
		openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//'
}
# served_spki: the SHA-256 of the served certificate's public key.
served_spki() {
	timeout 10 openssl s_client -starttls smtp -connect "$MX_IP:25" -servername mx.dane.test </dev/null 2>/dev/null |
		openssl x509 -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}
# smtp_dns: `caddy smtp-dns --domain mx.dane.test` into $work/t/$1.
smtp_dns() {
	timeout 20 "$caddy_bin" smtp-dns --domain mx.dane.test --address "$ADMIN" >"$work/t/$1" 2>&1
}
# maildir_count: messages in the gateway's Maildir.
maildir_count() { find "$gw_maildir/new" -type f 2>/dev/null | wc -l; }
# arrived SUBJECT: a file of the gateway's Maildir with that subject.
arrived() { grep -l -s -F "Subject: caddy-smtp postfix dane $1" "$gw_maildir"/new/* | head -n 1; }

# ---- the gateway ------------------------------------------------------------

sed -e "s|@DIR@|$work|g" -e "s|@MX_IP@|$MX_IP|g" -e "s|@ADMIN@|$ADMIN|g" \
	"$templates/dane.json.in" >"$work/dane.json"
caddy_start "$caddy_out" --config "$work/dane.json"
deadline=$((SECONDS + 30))
serial0=
until [[ -n $serial0 ]] || ! caddy_alive || ((SECONDS > deadline)); do
	sleep 0.2
	serial0=$(served_serial)
done
if [[ -n $serial0 ]]; then
	pass "gateway: caddy (pid $caddy_pid) on $MX_IP:25 serves an internal-CA certificate for mx.dane.test (serial $serial0)"
else
	fail "gateway: caddy serves a certificate on $MX_IP:25 within 30s" "$(caddy_alive && echo running || echo exited)"
	exit 1
fi

# smtp-dns answers 503 while the certificate is still being obtained.
deadline=$((SECONDS + 15))
until smtp_dns dns-1.txt || ((SECONDS > deadline)); do sleep 0.5; done
tlsa_line=$(grep -E '^_25\._tcp\.mx\.dane\.test\. [0-9]+ IN TLSA 3 1 1 [0-9a-f]{64}$' "$work/t/dns-1.txt")
if [[ $(wc -l <"$work/t/dns-1.txt") -eq 1 && -n $tlsa_line ]]; then
	pass "smtp-dns: prints '$tlsa_line'"
else
	fail "smtp-dns --domain mx.dane.test prints one TLSA 3 1 1 line for _25._tcp.mx.dane.test" "$(show "$work/t/dns-1.txt")"
	exit 1
fi
# The same hash by hand, from the key the gateway serves.
hand=$(served_spki)
if [[ $tlsa_line == *" $hand" ]]; then
	pass "smtp-dns: the hash is the SHA-256 of the served SPKI"
else
	fail "smtp-dns: the hash is the SHA-256 of the served SPKI" "served: $hand"
fi

# ---- the signed zone, NSD and Unbound --------------------------------------

# A key the gateway does not have, for bad.dane.test's TLSA.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$work/t/other.key" 2>/dev/null
other=$(openssl pkey -in "$work/t/other.key" -pubout -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1)
cat >"$work/zone/dane.test.zone" <<EOF
\$ORIGIN dane.test.
\$TTL 300
@ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 900 604800 300
@ IN NS ns.dane.test.
ns IN A $NSD_IP
@ IN MX 10 mx.dane.test.
mx IN A $MX_IP
$tlsa_line
bad IN MX 10 mxbad.dane.test.
mxbad IN A $MX_IP
_25._tcp.mxbad IN TLSA 3 1 1 $other
EOF
(
	cd "$work/zone" || exit 1
	ksk=$(ldns-keygen -a ECDSAP256SHA256 -k dane.test) && zsk=$(ldns-keygen -a ECDSAP256SHA256 dane.test) &&
		ldns-signzone -o dane.test -i "$(date -u -d '-1 hour' +%Y%m%d%H%M%S)" -e "$(date -u -d '+30 days' +%Y%m%d%H%M%S)" \
			-f dane.test.signed dane.test.zone "$zsk" "$ksk" &&
		nsd-checkzone dane.test dane.test.signed &&
		tr -s '\t ' ' ' <"$ksk.ds" >ds.txt
) >"$work/t/sign.log" 2>&1
ds=$(cat "$work/zone/ds.txt" 2>/dev/null)
if [[ $ds == "dane.test."*" DS "* ]] && grep -q 'RRSIG' "$work/zone/dane.test.signed"; then
	pass "zone: dane.test signed (ldns-signzone), trust anchor '$ds'"
else
	fail "zone: dane.test signed with ldns-keygen and ldns-signzone" "$(show "$work/t/sign.log")"
	exit 1
fi

cat >"$work/nsd/nsd.conf" <<EOF
server:
	ip-address: $NSD_IP@53
	do-ip4: yes
	do-ip6: no
	reuseport: no
	server-count: 1
	username: ""
	chroot: ""
	database: ""
	zonesdir: "$work/zone"
	zonelistfile: "$work/nsd/zone.list"
	xfrdfile: "$work/nsd/xfrd.state"
	xfrdir: "$work/nsd"
	pidfile: "$work/nsd/nsd.pid"
	logfile: "$work/nsd/nsd.log"
	verbosity: 1
remote-control:
	control-enable: no
zone:
	name: "dane.test"
	zonefile: "dane.test.signed"
EOF
{
	cat <<EOF
server:
	interface: $DNS_IP@53
	outgoing-interface: $DNS_IP
	do-ip4: yes
	do-ip6: no
	do-udp: yes
	do-tcp: yes
	so-reuseport: no
	num-threads: 1
	username: ""
	chroot: ""
	directory: "$work/unbound"
	pidfile: "$work/unbound/unbound.pid"
	use-syslog: no
	logfile: "$work/unbound/unbound.log"
	log-time-ascii: yes
	verbosity: 1
	val-log-level: 2
	trust-anchor-signaling: no
	module-config: "validator iterator"
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	local-zone: "." refuse
	local-zone: "dane.test" transparent
	trust-anchor: "$ds"
EOF
	# every address but 127.0.0.0/8: queries go to loopback only
	for a in 0.0.0.0/2 64.0.0.0/3 96.0.0.0/4 112.0.0.0/5 120.0.0.0/6 124.0.0.0/7 126.0.0.0/8 128.0.0.0/1 ::/0; do
		printf '\tdo-not-query-address: %s\n' "$a"
	done
	cat <<EOF
remote-control:
	control-enable: no
stub-zone:
	name: "."
	stub-addr: $NSD_IP@53
	stub-prime: no
stub-zone:
	name: "dane.test"
	stub-addr: $NSD_IP@53
	stub-prime: no
EOF
} >"$work/unbound/unbound.conf"

nsd -d -c "$work/nsd/nsd.conf" </dev/null >"$work/nsd/nsd.stderr" 2>&1 &
nsd_pid=$!
if unbound-checkconf "$work/unbound/unbound.conf" >"$work/t/checkconf.log" 2>&1; then
	unbound -d -c "$work/unbound/unbound.conf" </dev/null >"$work/unbound/unbound.stderr" 2>&1 &
	unbound_pid=$!
else
	fail "unbound: unbound-checkconf" "$(show "$work/t/checkconf.log")"
	exit 1
fi

deadline=$((SECONDS + 15))
until { listening udp "$DNS_IP:53" && listening udp "$NSD_IP:53"; } || ((SECONDS > deadline)); do sleep 0.1; done

# dns_query NAME TYPE: Unbound's answer (drill, with DO) as "RCODE AD
# ANSWERS", e.g. "NOERROR 1 1".
dns_query() {
	timeout 5 drill -D -p 53 "$1" @"$DNS_IP" "$2" 2>/dev/null | awk '
		/^;; ->>HEADER<<-/ { for (i = 1; i <= NF; i++) if ($i == "rcode:") { rc = $(i + 1); sub(/,$/, "", rc) } }
		/^;; flags:/ { ad = ($0 ~ / ad[ ;]/) ? 1 : 0; for (i = 1; i <= NF; i++) if ($i == "ANSWER:") { n = $(i + 1); sub(/,$/, "", n) } }
		END { if (rc != "") print rc, ad, n }'
}
deadline=$((SECONDS + 15))
ans=''
until [[ $ans == "NOERROR 1 "[1-9]* ]] || ((SECONDS > deadline)); do
	ans=$(dns_query _25._tcp.mx.dane.test TLSA)
	[[ $ans == "NOERROR 1 "[1-9]* ]] || sleep 0.2
done
if [[ $ans == "NOERROR 1 "[1-9]* ]]; then
	pass "unbound: $DNS_IP:53 answers _25._tcp.mx.dane.test TLSA with NOERROR, AD=1 (validated)"
else
	fail "unbound: answers _25._tcp.mx.dane.test TLSA validated (NOERROR, AD=1) within 15s" "last: rcode, ad, answers: '$ans'"
	exit 1
fi

# ---- Postfix ------------------------------------------------------------------

sed -e "s|@PF_DIR@|$pf|g" -e "s|@PF_IP@|$PF_IP|g" "$templates/main.cf.in" >"$pf/etc/main.cf"
sed -e "s|@PF_IP@|$PF_IP|g" -e "s|@PF_PORT@|$PF_PORT|g" "$templates/master.cf" >"$pf/etc/master.cf"
chown postfix:postfix "$pf/data"
printf 'nameserver %s\noptions trust-ad attempts:2 timeout:2\n' "$DNS_IP" >"$pf/resolv.conf"
if ! timeout 60 postfix -c "$pf/etc" check >"$work/t/postfix-check.log" 2>&1; then
	fail "postfix: postfix -c $pf/etc check" "$(show "$work/t/postfix-check.log")"
	exit 1
fi
postfix_started=1
# The master and every process it forks stay in this mount namespace,
# where /etc/resolv.conf (or what it links to) is $pf/resolv.conf.
# shellcheck disable=SC2016 # expanded by the inner sh
timeout 60 unshare --mount --propagation private sh -c '
	set -e
	resolv=$(realpath -m /etc/resolv.conf)
	[ -e "$resolv" ] || { mkdir -p "$(dirname "$resolv")"; touch "$resolv"; }
	mount --bind "$1/resolv.conf" "$resolv"
	exec postfix -c "$1/etc" start' sh "$pf" </dev/null >"$work/t/postfix-start.log" 2>&1
rc=$?
deadline=$((SECONDS + 20))
until (exec 3<>"/dev/tcp/$PF_IP/$PF_PORT") 2>/dev/null || ((rc != 0 || SECONDS > deadline)); do sleep 0.2; done
if ((rc == 0)) && postfix_alive && (exec 3<>"/dev/tcp/$PF_IP/$PF_PORT") 2>/dev/null; then
	pass "postfix: started in a mount namespace (master pid $(postfix_master_pid)), smtpd on $PF_IP:$PF_PORT"
else
	fail "postfix: started, smtpd on $PF_IP:$PF_PORT" "exit $rc" "$(show "$work/t/postfix-start.log")" "$(show "$maillog")"
	exit 1
fi
pf_ns=$(readlink "/proc/$(postfix_master_pid)/ns/mnt") my_ns=$(readlink /proc/self/ns/mnt)
if [[ -n $pf_ns && $pf_ns != "$my_ns" ]] && grep -q "nameserver $DNS_IP" "/proc/$(postfix_master_pid)/root/etc/resolv.conf"; then
	pass "postfix: its master has its own mount namespace, /etc/resolv.conf names $DNS_IP; ours is unchanged"
else
	fail "postfix: master in its own mount namespace with resolv.conf naming $DNS_IP" "$pf_ns vs $my_ns"
fi

# pf_send NAME RCPT: a message into Postfix's smtpd; its queue id in
# $pf_id.
pf_send() {
	swaks_log=$work/t/$1.log
	timeout 60 swaks --server "$PF_IP" --port "$PF_PORT" --ehlo client.dane-ci.test --from "$DANE_SENDER" --to "$2" \
		--header "Subject: caddy-smtp postfix dane $1" --timeout 15 </dev/null >"$swaks_log" 2>&1
	pf_id=$(sed -n 's/^<[-~] *250 .*queued as \([A-Za-z0-9]*\).*/\1/p' "$swaks_log" | tail -n 1)
}
# wait_status ID RCPT: until Postfix logs a status= for the message;
# the line in $status_line.
wait_status() {
	local deadline=$((SECONDS + 30))
	status_line=
	while [[ -n $1 && -z $status_line ]] && ((SECONDS <= deadline)); do
		status_line=$(grep -F "$1: to=<$2>" "$maillog" 2>/dev/null | grep ' status=' | tail -n 1)
		[[ -n $status_line ]] || sleep 0.2
	done
}
# smtp_log: the smtp client's lines for the delivery of $status_line:
# that process's lines after its previous status= line, up to this one
# (one smtp process may deliver several messages in turn).
smtp_log() {
	local proc
	proc=$(sed -n 's/.*\(postfix-dane\/smtp\[[0-9]*\]\): .*/\1/p' <<<"$status_line")
	[[ -n $proc ]] || return 0
	awk -v proc="$proc: " -v want="$status_line" '
		index($0, proc) == 0 { next }
		$0 == want { printf "%s", buf; print; exit }
		/ status=/ { buf = ""; next }
		{ buf = buf $0 "\n" }' "$maillog"
}

# ---- 1. DANE delivery -----------------------------------------------------------

# deliver N LABEL: message N (subject dane-N) through Postfix to
# rcpt@dane.test; checks Verified, status=sent, arrival.
deliver() {
	local n=$1 label=$2 verified gw_file
	pf_send "dane-$n" rcpt@dane.test
	if [[ -z $pf_id ]]; then
		fail "$label: Postfix accepts a message for rcpt@dane.test" "$(show "$swaks_log")"
		return
	fi
	wait_status "$pf_id" rcpt@dane.test
	verified=$(smtp_log | grep -F 'Verified TLS connection established to mx.dane.test['"$MX_IP"']:25')
	if [[ -n $verified ]]; then
		pass "$label: Postfix log: '$(sed 's/.*\]: \(Verified TLS connection established to [^:]*:25\): \(.*\)/\1 (\2)/' <<<"$verified")'"
	else
		fail "$label: Postfix log: 'Verified TLS connection established to mx.dane.test[$MX_IP]:25'" \
			"$(smtp_log)" "${status_line:-"no status line for $pf_id"}"
	fi
	if [[ $status_line == *"relay=mx.dane.test[$MX_IP]:25,"*" status=sent (250 "* ]]; then
		pass "$label: Postfix log: $pf_id relay=mx.dane.test[$MX_IP]:25 status=sent"
	else
		fail "$label: Postfix log: status=sent via mx.dane.test[$MX_IP]:25" "${status_line:-"none for $pf_id"}"
	fi
	deadline=$((SECONDS + 10))
	gw_file=''
	until [[ -n $gw_file ]] || ((SECONDS > deadline)); do
		gw_file=$(arrived "dane-$n")
		[[ -n $gw_file ]] || sleep 0.2
	done
	if [[ -n $gw_file ]] && received_header "$gw_file" | grep -q 'with ESMTPS'; then
		pass "$label: the message arrived in the gateway's Maildir, received with ESMTPS"
	else
		fail "$label: the message arrives in the gateway's Maildir (ESMTPS)" "${gw_file:-none}" \
			"$(received_header "${gw_file:-/dev/null}")"
	fi
}

deliver 1 "dane"

# ---- 2. TLSA mismatch: deferred, nothing arrives ------------------------------

before=$(maildir_count)
pf_send bad rcpt@bad.dane.test
wait_status "$pf_id" rcpt@bad.dane.test
if [[ -n $pf_id && $status_line == *" status=deferred "* ]] && ! smtp_log | grep -q 'Verified TLS'; then
	pass "mismatch: mail for bad.dane.test deferred, $(sed 's/.*\(dsn=[^,]*\), status=deferred (\(.*\))$/\1: \2/' <<<"$status_line")"
else
	fail "mismatch: mail for bad.dane.test (TLSA of another key) is deferred" "${status_line:-"no status for '$pf_id'"}" \
		"$(smtp_log)"
fi
reason=$(smtp_log | grep -F 'no matching DANE TLSA records' | head -n 1)
if [[ -n $reason ]] && smtp_log | grep -qF "Untrusted TLS connection established to mxbad.dane.test[$MX_IP]:25"; then
	pass "mismatch: Postfix log: '$(sed 's/.*postfix-dane\/smtp\[[0-9]*\]: //' <<<"$reason")', then 'Untrusted TLS connection'"
else
	fail "mismatch: Postfix log: 'no matching DANE TLSA records' and 'Untrusted TLS connection established to mxbad.dane.test'" "$(smtp_log)"
fi
sleep 1
if [[ $(maildir_count) -eq $before && -z $(arrived bad) ]]; then
	pass "mismatch: nothing arrived in the gateway's Maildir"
else
	fail "mismatch: nothing arrives" "$(maildir_count) messages, was $before"
fi

# ---- 3. renewal with the reused key ---------------------------------------------

deadline=$((SECONDS + 30))
serial1=$serial0
until [[ -n $serial1 && $serial1 != "$serial0" ]] || ((SECONDS > deadline)); do
	sleep 0.5
	serial1=$(served_serial)
done
renewals=$(jq -r 'select(.msg == "certificate renewed successfully" and .identifier == "mx.dane.test") | .msg' "$caddy_log" 2>/dev/null | wc -l)
if [[ -n $serial1 && $serial1 != "$serial0" ]] && ((renewals > 0)); then
	pass "renewal: the served certificate changed (serial $serial0 -> $serial1; caddy log: $renewals x 'certificate renewed successfully')"
else
	fail "renewal: the served certificate changes within 30s, renewed by caddy" "serial '$serial0' then '$serial1'; $renewals renewals logged"
fi
hand2=$(served_spki)
if [[ $hand2 == "$hand" ]]; then
	pass "renewal: the renewed certificate has the same key (SPKI SHA-256 by openssl unchanged)"
else
	fail "renewal: the renewed certificate has the same key" "before $hand, now $hand2"
fi
smtp_dns dns-2.txt
if [[ $(cat "$work/t/dns-2.txt") == "$tlsa_line" ]]; then
	pass "renewal: smtp-dns prints the same TLSA record"
else
	fail "renewal: smtp-dns prints the same TLSA record" "before: $tlsa_line" "after: $(cat "$work/t/dns-2.txt")"
fi

deliver 2 "after renewal"

# ---- end --------------------------------------------------------------------------

bad=$(grep -E 'postfix-dane/[^:]*: (fatal|panic|error):' "$maillog" 2>/dev/null)
if [[ -z $bad ]]; then
	pass "end: Postfix log has no fatal/panic/error lines"
else
	fail "end: Postfix log has no fatal/panic/error lines" "$bad"
fi
grep -E 'postfix-dane/[^:]*: warning:' "$maillog" 2>/dev/null | sed 's/^/        note: /'
# Postfix's dnssec_probe (at the first DNSSEC lookup) found AD=1.
if grep -q 'DNSSEC validation may be unavailable' "$maillog" 2>/dev/null; then
	fail "postfix: its dnssec_probe (ns:dane.test) validates" "$(grep 'DNSSEC' "$maillog")"
else
	pass "postfix: its dnssec_probe (ns:dane.test) raised no 'DNSSEC validation may be unavailable'"
fi
check_caddy_running
if postfix_alive; then
	pass "end: Postfix instance still running"
else
	fail "end: Postfix instance still running" "its master exited"
fi

((failed == 0)) # ci_finish prints the totals
