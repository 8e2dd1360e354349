# shellcheck shell=bash
# shellcheck disable=SC2154 # lib.sh and the sourcing script set the variables
# Sourced by .ci/exim.sh and .ci/opensmtpd.sh (after lib.sh): running a
# Debian MTA that is not installed, next to an installed Postfix.
#
# Debian's MTAs conflict with each other (mail-transport-agent), so the
# packages are never installed: mta_unpack fetches them with
# `apt-get download`, unpacks them with `dpkg -x` into a cache directory
# (reused by later runs), and installs with apt-get only the libraries
# they link against. Each MTA then runs from that tree with a private
# configuration, spool and log under $work, on loopback ports, inside a
# private mount namespace (mta_start) whose /etc/resolv.conf names
# 127.0.0.1 only: whatever the MTA looks up, no query leaves the host.
#
# Also here: what both scripts do around their MTA (mta_init,
# mta_make_work, mta_config, mta_check_started, mta_gateway_start,
# mta_end_checks), the test certificates (mta_certs) and the checks both
# make on the gateway's log, queue and the MTAs' maildirs. A script
# defines its ports (PORT_SUBMIT, PORT_SELF, PORT_CA, PORT_NOTLS: the
# MTA's; PORT_GW_NONE, PORT_GW_MAY, PORT_GW_ENCRYPT, PORT_TO_MTA,
# PORT_ADMIN: the gateway's) after mta_init.

readonly MTA_CACHE=${MTA_CACHE:-/var/cache/caddy-smtp-ci}
# The name the MTAs' certificates are for, and the gateway's server_name
# under `verify`.
readonly MTA_NAME=mta.test

mta_pid='' mta_tree='' mta_name='' mta_label=''
# The next-hop listeners by variant (self, ca, notls), from mta_make_work;
# the deferred cells' queue ids and names, from upstream_cell.
declare -A variant_port=()
deferred_ids=() deferred_cells=()

# The MTA stops with caddy at exit.
at_exit() { mta_stop; }

# mta_init NAME LABEL "$@": what the script NAME (exim, opensmtpd) does
# first: ci_init "NAME interop"; $mta_name NAME and $mta_label LABEL (the
# MTA's name in check lines); $templates, .ci/NAME, and $config, its
# NAME.Caddyfile; /usr/sbin and /sbin on PATH; exit 2 unless root and the
# tools are there; keep from $NAME_KEEP (upper case: EXIM_KEEP).
mta_init() {
	local keep_var=${1^^}_KEEP
	mta_name=$1 mta_label=$2
	shift 2
	ci_init "$mta_name interop" "$@"
	templates=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$mta_name
	config=$templates/$mta_name.Caddyfile
	PATH=$PATH:/usr/sbin:/sbin
	mta_need_root
	need_tools swaks openssl jq timeout setsid unshare apt-get dpkg-deb ldd
	# shellcheck disable=SC2034 # read by ci_finish (lib.sh)
	keep=${!keep_var:-}
}

# mta_make_work: exit 1 unless all the ports are free; then $work (with
# $work/t), readable by the MTA's users, in $NAME_CI_DIR for the
# Caddyfile; $caddy_log, $caddy_out, $gw_maildir (the gateway's Maildir,
# mail from the MTA); $variant_port.
mta_make_work() {
	ports_free start 0 "$PORT_SUBMIT" "$PORT_SELF" "$PORT_CA" "$PORT_NOTLS" "$PORT_GW_NONE" "$PORT_GW_MAY" \
		"$PORT_GW_ENCRYPT" "$PORT_TO_MTA" "$PORT_ADMIN" || exit 1
	make_work "$mta_name"
	chmod 755 "$work" # the MTA's processes run as its system users
	echo "$ci_name: work directory $work"
	export "${mta_name^^}_CI_DIR=$work"
	caddy_log=$work/caddy.log caddy_out=$work/caddy.out
	gw_maildir=$work/gw-maildir
	mkdir -p "$work/t"
	variant_port=([self]=$PORT_SELF [ca]=$PORT_CA [notls]=$PORT_NOTLS)
}

# mta_need_root: exit 2 unless root (namespaces, system users, apt-get).
mta_need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		echo "$ci_name: must run as root" >&2
		exit 2
	fi
}

# mta_version PKG: the version apt-get download would fetch; runs
# apt-get update once if apt knows no candidate.
mta_version() {
	local v
	v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
	if [[ -z $v || $v == "(none)" ]]; then
		timeout 300 apt-get update -qq >/dev/null 2>&1
		v=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
	fi
	[[ -n $v && $v != "(none)" ]] && printf '%s\n' "$v"
}

# mta_lib_depends DEB...: the library packages (lib*, zlib*) the packages
# depend on, first alternative of each, without versions.
mta_lib_depends() {
	local deb
	for deb in "$@"; do
		dpkg-deb -f "$deb" Depends Pre-Depends
	done | tr ',' '\n' | sed -e 's/^\(Pre-\)\{0,1\}Depends: *//' -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/ //g' |
		grep -E '^(lib|zlib)' | sort -u
}

# mta_unpack NAME PKG...: sets $mta_tree to a directory holding the
# packages' files (usr/sbin/..., as dpkg would install them). Cached in
# $MTA_CACHE/NAME-<versions>; a tree with a .complete stamp is reused.
# Then installs (apt-get) the library packages the packages depend on
# that are missing. Status 1 (with a failed check) on any error.
mta_unpack() {
	local name=$1 pkg v versions='' dl deb missing=() lib
	shift
	for pkg in "$@"; do
		v=$(mta_version "$pkg") || { fail "setup: apt-cache knows $pkg" "no candidate version"; return 1; }
		versions+="-$pkg=$v"
	done
	mta_tree=$MTA_CACHE/$name$(tr -c 'A-Za-z0-9._=+-' '_' <<<"$versions" | sed 's/_$//')
	if [[ ! -e $mta_tree/.complete ]]; then
		echo "$ci_name: fetching $* (apt-get download, dpkg -x into $mta_tree)"
		rm -rf "$mta_tree" "$mta_tree.tmp"
		dl=$mta_tree.tmp/debs
		mkdir -p "$dl" || return 1
		# apt's sandbox user must be able to write the download directory.
		chmod 777 "$dl"
		if ! (cd "$dl" && timeout 300 apt-get download -qq "$@" >"$mta_tree.tmp/download.log" 2>&1); then
			fail "setup: apt-get download $*" "$(show "$mta_tree.tmp/download.log")"
			return 1
		fi
		for deb in "$dl"/*.deb; do
			dpkg-deb -x "$deb" "$mta_tree.tmp/root" || { fail "setup: dpkg -x $deb"; return 1; }
		done
		mta_lib_depends "$dl"/*.deb >"$mta_tree.tmp/root/.lib-depends"
		mv "$mta_tree.tmp/root" "$mta_tree" && rm -rf "$mta_tree.tmp" && touch "$mta_tree/.complete" || return 1
	fi
	while read -r lib; do
		dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q 'install ok installed' || missing+=("$lib")
	done <"$mta_tree/.lib-depends"
	if ((${#missing[@]} > 0)); then
		echo "$ci_name: installing libraries: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		if ! timeout 300 apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$work/t/apt-libs.log" 2>&1; then
			timeout 300 apt-get update -qq >/dev/null 2>&1
			if ! timeout 300 apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$work/t/apt-libs.log" 2>&1; then
				fail "setup: apt-get install ${missing[*]}" "$(show "$work/t/apt-libs.log")"
				return 1
			fi
		fi
	fi
}

# mta_ldd BINARY...: a check that each binary finds all its libraries.
mta_ldd() {
	local bin out bad=''
	for bin in "$@"; do
		out=$(ldd "$bin" 2>&1) || bad+="$bin: $out"$'\n'
		grep -q 'not found' <<<"$out" && bad+="$bin: $(grep 'not found' <<<"$out")"$'\n'
	done
	if [[ -z $bad ]]; then
		pass "setup: ldd finds every library of ${*##*/}"
	else
		fail "setup: ldd finds every library" "$bad"
		return 1
	fi
}

# mta_system_user USER [HOME]: a system user and group of that name, as
# the package's maintainer script would create (the binaries have the
# names compiled in).
mta_system_user() {
	getent group "$1" >/dev/null || groupadd --system "$1" || return 1
	id -u "$1" >/dev/null 2>&1 ||
		useradd --system --gid "$1" --home-dir "${2:-/nonexistent}" --no-create-home \
			--shell /usr/sbin/nologin "$1"
}

# mta_certs DIR: in DIR, with openssl:
#   ca.pem ca.key          a test CA ("caddy-smtp CI test CA")
#   ca-cert.pem ca-key.pem a certificate for $MTA_NAME signed by it
#   self-cert.pem self-key.pem a self-signed certificate for $MTA_NAME
# Both leaf certificates have $MTA_NAME and 127.0.0.1 in the SAN, so a
# failure under `verify` is about trust, never the name.
mta_certs() {
	local d=$1 san="subjectAltName=DNS:$MTA_NAME,IP:127.0.0.1"
	mkdir -p "$d" &&
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=caddy-smtp CI test CA" \
			-keyout "$d/ca.key" -out "$d/ca.pem" \
			-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
		openssl req -new -newkey rsa:2048 -nodes -subj "/CN=$MTA_NAME" \
			-keyout "$d/ca-key.pem" -out "$d/ca-cert.csr" &&
		openssl x509 -req -in "$d/ca-cert.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
			-days 2 -out "$d/ca-cert.pem" \
			-extfile <(printf '%s\n' "$san" basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment extendedKeyUsage=serverAuth) &&
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$MTA_NAME" \
			-keyout "$d/self-key.pem" -out "$d/self-cert.pem" -addext "$san" &&
		openssl verify -CAfile "$d/ca.pem" "$d/ca-cert.pem" >/dev/null
}

# mta_setup_certs: the check that mta_certs made them in $work/tls;
# status 1 if not.
mta_setup_certs() {
	if mta_certs "$work/tls" >"$work/t/certs.log" 2>&1; then
		pass "setup: test CA, a certificate for $MTA_NAME from it, a self-signed one (openssl)"
	else
		fail "setup: test certificates" "$(show "$work/t/certs.log")"
		return 1
	fi
}

# mta_config TEMPLATE DIR [SED-ARG...]: the MTA's configuration
# DIR/NAME, from $templates/TEMPLATE (NAME.in) with @DIR@ (DIR), @TLS@
# ($work/tls) and each @PORT_...@ filled in, then the SED-ARGs
# (-e "s|@MORE@|...|g"); mode 644.
mta_config() {
	local template=$1 dir=$2 out=$2/${1%.in}
	shift 2
	sed -e "s|@DIR@|$dir|g" -e "s|@TLS@|$work/tls|g" -e "s|@PORT_SUBMIT@|$PORT_SUBMIT|g" -e "s|@PORT_SELF@|$PORT_SELF|g" \
		-e "s|@PORT_CA@|$PORT_CA|g" -e "s|@PORT_NOTLS@|$PORT_NOTLS|g" -e "s|@PORT_GW_NONE@|$PORT_GW_NONE|g" \
		-e "s|@PORT_GW_MAY@|$PORT_GW_MAY|g" -e "s|@PORT_GW_ENCRYPT@|$PORT_GW_ENCRYPT|g" "$@" \
		"$templates/$template" >"$out"
	chmod 644 "$out"
}

# mta_start LOG DIR SETUP COMMAND...: COMMAND in the background, in its
# own session and process group (setsid) and a private mount namespace
# (unshare -m), stdout and stderr to LOG. In the namespace, before the
# command: /etc/resolv.conf is DIR/resolv.conf (nameserver 127.0.0.1),
# then the shell commands SETUP run (bind mounts of the MTA's own). The
# pid, which is also the process group, goes to $mta_pid.
mta_start() {
	local log=$1 dir=$2 setup=$3
	shift 3
	printf 'nameserver 127.0.0.1\nlookup file\noptions attempts:1 timeout:1\n' >"$dir/resolv.conf"
	cat >"$dir/ns-start.sh" <<-EOF
		set -e
		mount --make-rprivate / 2>/dev/null || true
		resolv=\$(realpath -m /etc/resolv.conf)
		$setup
		[ -e "\$resolv" ] || { mkdir -p "\$(dirname "\$resolv")"; touch "\$resolv"; }
		mount --bind '$dir/resolv.conf' "\$resolv"
		exec "\$@"
	EOF
	setsid unshare --mount --propagation private sh "$dir/ns-start.sh" "$@" </dev/null >"$log" 2>&1 &
	mta_pid=$!
}

# mta_alive: the process mta_start started still runs.
mta_alive() { [[ -n $mta_pid ]] && kill -0 "$mta_pid" 2>/dev/null; }

# mta_tree_pids: the pids of processes running a binary of $mta_tree
# (what the MTA forked, should any have left the process group).
mta_tree_pids() {
	local p exe
	[[ -n $mta_tree ]] || return 0
	for p in /proc/[0-9]*; do
		exe=$(readlink "$p/exe" 2>/dev/null) || continue
		[[ $exe == "$mta_tree"/* ]] && printf '%s\n' "${p#/proc/}"
	done
}

# mta_stop: TERM to the process group of mta_start (KILL after 5 s),
# then to any process left running a binary of $mta_tree.
mta_stop() {
	local pids
	if [[ -n $mta_pid ]]; then
		kill -TERM -- "-$mta_pid" 2>/dev/null
		for _ in $(seq 50); do
			kill -0 -- "-$mta_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$mta_pid" 2>/dev/null
		wait "$mta_pid" 2>/dev/null
		mta_pid=''
	fi
	pids=$(mta_tree_pids)
	if [[ -n $pids ]]; then
		# shellcheck disable=SC2086 # one pid a word
		kill -TERM $pids 2>/dev/null
		sleep 0.5
		pids=$(mta_tree_pids)
		# shellcheck disable=SC2086
		[[ -z $pids ]] || kill -KILL $pids 2>/dev/null
	fi
}

# mta_check_started PORT GREETING LOG...: the check that the MTA
# mta_start started listens on $PORT_SUBMIT-$PORT_NOTLS within 20s and
# greets on PORT with a line that starts with GREETING; failed: the ends
# of the LOG files, status 1.
mta_check_started() {
	local port=$1 want=$2 f details=()
	shift 2
	if wait_listening mta_alive 20 "$PORT_SUBMIT" "$PORT_SELF" "$PORT_CA" "$PORT_NOTLS" &&
		[[ $(greeting "$port") == "$want"* ]]; then
		pass "$mta_name: started (pid $mta_pid), listens on $PORT_SUBMIT-$PORT_NOTLS, greets '$(greeting "$PORT_SUBMIT")'"
	else
		for f in "$@"; do details+=("$(show "$f")"); done
		fail "$mta_name: started and listening on $PORT_SUBMIT-$PORT_NOTLS" "${details[@]}"
		return 1
	fi
}

# mta_end_checks: the checks that caddy and the MTA still run.
mta_end_checks() {
	check_caddy_running
	if mta_alive; then pass "end: $mta_label still running"; else fail "end: $mta_label still running" "it exited"; fi
}

# ---- checks on the gateway ----------------------------------------------

# mta_gateway_start: caddy with $config (checked by check_adapts: the
# servers from_none, from_may, from_encrypt, to_mta), then the check that
# it listens on the gateway's ports within 30s, TLS ready on may and
# encrypt. Status 1 if a check failed.
mta_gateway_start() {
	echo "$ci_name: $("$caddy_bin" version)"
	check_adapts '["from_encrypt","from_may","from_none","to_mta"]' \
		"${config##*/} adapts (servers from_none, from_may, from_encrypt, to_mta)" || return 1
	caddy_start "$caddy_out" --config "$config" --adapter caddyfile
	if wait_ports 30 "$PORT_GW_NONE" "$PORT_GW_MAY" "$PORT_GW_ENCRYPT" "$PORT_TO_MTA" &&
		wait_cert "$work/t/gw-may-ready.log" "$PORT_GW_MAY" && wait_cert "$work/t/gw-encrypt-ready.log" "$PORT_GW_ENCRYPT"; then
		pass "start: caddy (pid $caddy_pid) listens on $PORT_GW_NONE, $PORT_GW_MAY, $PORT_GW_ENCRYPT, $PORT_TO_MTA; TLS ready"
	else
		fail "start: caddy listens, TLS ready on $PORT_GW_MAY and $PORT_GW_ENCRYPT" "$(show "$caddy_out")"
		return 1
	fi
}

# queue_json: the admin API's queue listing (GET /smtp/queue, through
# `caddy smtp-queue list --json`).
queue_json() {
	timeout 20 "$caddy_bin" smtp-queue list --json --address "localhost:$PORT_ADMIN" 2>/dev/null
}

# ---- checks on mail files (received_header: lib.sh) ---------------------

# subject_of FILE: the Subject: header's value, CR removed.
subject_of() { tr -d '\r' <"$1" | sed -n '/^$/q; s/^Subject: //p' | head -n 1; }

# file_with_subject DIR SUBJECT: the first file in DIR/new and DIR/cur
# whose Subject: is SUBJECT.
file_with_subject() {
	local f
	for f in "$1"/new/* "$1"/cur/*; do
		[[ -f $f ]] || continue
		if [[ $(subject_of "$f") == "$2" ]]; then
			printf '%s\n' "$f"
			return 0
		fi
	done
	return 1
}

# wait_subject SECONDS DIR SUBJECT: until file_with_subject finds one;
# prints it.
wait_subject() {
	local deadline=$((SECONDS + $1))
	until file_with_subject "$2" "$3"; do
		((SECONDS > deadline)) && return 1
		sleep 0.2
	done
}

# count_with_subject DIR SUBJECT: how many files have that Subject:.
count_with_subject() {
	local f n=0
	for f in "$1"/new/* "$1"/cur/*; do
		[[ -f $f && $(subject_of "$f") == "$2" ]] && n=$((n + 1))
	done
	echo "$n"
}

# ---- the two roles, one check a line ------------------------------------
#
# The script defines, for its MTA (besides what mta_init and
# mta_make_work set):
#   $mta_vmail (the MTA's Maildir)
#   mta_received_tls FILE: "tls" or "plain", from the MTA's own Received:
#   mta_log_mark: a mark (a line count) in the log mta_ehlo_since reads
#   mta_ehlo_since MARK PORT: one line "PLAIN TLS" per connection to PORT
#     since MARK: how many EHLO/HELO it got before and after STARTTLS
#   mta_log_excerpt MARK: the MTA's log since MARK, for a failure.

# client_cell LEVEL EXPECT: the MTA is handed a message for
# srv-LEVEL.test and relays it to the gateway's server at receiving
# level LEVEL; it must arrive in $gw_maildir with the gateway's Received:
# saying ESMTPS (EXPECT tls) or ESMTP (EXPECT plain).
client_cell() {
	local level=$1 expect=$2 name=client-$1 f received gw_id line proto
	local label="client $level: $mta_label -> gateway (server level $level)"
	send "$name" "$PORT_SUBMIT" "someone@srv-$level.test"
	if ((swaks_rc == 0)); then
		pass "$label: $mta_label accepts the message ($(grep -a -E '^<- +250 ' "$swaks_log" | tail -n 1 | sed 's/^<- *//'))"
	else
		fail "$label: $mta_label accepts the message" "swaks exit $swaks_rc" "$(show "$swaks_log")"
		return
	fi
	if ! f=$(wait_subject 60 "$gw_maildir" "caddy-smtp $ci_name $name"); then
		fail "$label: arrives in the gateway's Maildir within 60s" "$(find "$gw_maildir" -type f 2>&1 | head)"
		return
	fi
	pass "$label: arrived in the gateway's Maildir (new/${f##*/})"
	received=$(received_header "$f")
	gw_id=$(sed -n 's/.* with ESMTPS\{0,1\}A\{0,1\} id \([A-Za-z0-9]*\).*/\1/p' <<<"$received")
	if [[ $expect == tls ]]; then
		proto=ESMTPS
		[[ $received == *"(using TLSv1."[23]" with cipher "*") by localhost (caddy-smtp) with ESMTPS id "* ]]
	else
		proto=ESMTP
		[[ $received == *") by localhost (caddy-smtp) with ESMTP id "* && $received != *"(using TLS"* ]]
	fi
	# shellcheck disable=SC2181 # the test just above
	if (($? == 0)); then
		pass "$label: the gateway's Received: says 'with $proto'$([[ $expect == tls ]] && grep -o ' (using [^)]*)' <<<"$received")"
	else
		fail "$label: the gateway's Received: says 'with $proto'" "$received"
	fi
	line=$(jq -c --arg id "${gw_id:-no-id}" 'select(.msg == "message accepted" and .queue_id == $id)' "$caddy_log" 2>/dev/null | head -n 1)
	if [[ -n $line ]] && jq -e --arg s "from_$level" --arg p "$proto" '.server == $s and .protocol == $p' <<<"$line" >/dev/null; then
		pass "$label: caddy log 'message accepted' $gw_id on from_$level, protocol $proto"
	else
		fail "$label: caddy log 'message accepted' on from_$level, protocol $proto" "${line:-"none for '$gw_id'"}"
	fi
}

# upstream_cell LEVEL VARIANT EXPECT: the gateway relays a message for
# LEVEL.VARIANT.test at client level LEVEL to the MTA's VARIANT
# listener. EXPECT: tls (sent over TLS; verified at level verify),
# plain (sent without TLS), deferred (the gateway defers it; checked
# again in the queue listing by check_deferred_queued). Also checks
# that the MTA saw one EHLO per connection (one more after STARTTLS).
upstream_cell() {
	local level=$1 variant=$2 expect=$3 name=up-$1-$2 mark id line f got conns bad
	local label="upstream $variant/$level:" port=${variant_port[$2]}
	local subj="caddy-smtp $ci_name $name"
	mark=$(mta_log_mark)
	send "$name" "$PORT_TO_MTA" "someone@$level.$variant.test"
	if [[ $swaks_rc -ne 0 || -z $queue_id ]]; then
		fail "$label the gateway accepts the message" "swaks exit $swaks_rc" "$(show "$swaks_log")"
		return
	fi
	id=$queue_id
	wait_delivery 45 "$id"
	line=$(delivery_line "$id")
	case $expect in
	tls | plain)
		local want_tls=false verified=''
		[[ $expect == tls ]] && want_tls=true
		[[ $level == verify ]] && verified=' and .tls_verified == true'
		if [[ -n $line ]] && jq -e --argjson t "$want_tls" ".msg == \"delivery sent\" and .tls == \$t$verified" <<<"$line" >/dev/null; then
			pass "$label delivered $id, gateway log 'delivery sent', $(jq -r 'if .tls then "TLS (\(.tls_version) \(.tls_cipher), verified \(.tls_verified))" else "no TLS" end' <<<"$line"), reply '$(jq -r .reply <<<"$line")'"
		else
			fail "$label gateway log 'delivery sent' for $id with tls $want_tls${verified:+, verified}" "${line:-"no delivery line for $id"}"
		fi
		# (Not long, when the gateway did not send it.)
		local wait=20
		jq -e '.msg == "delivery sent"' <<<"$line" >/dev/null 2>&1 || wait=3
		if f=$(wait_subject "$wait" "$mta_vmail" "$subj"); then
			got=$(mta_received_tls "$f")
			if [[ $got == "$expect" ]]; then
				pass "$label arrived in $mta_label's Maildir; its Received: says $got ($(received_header "$f" | grep -o -i -E 'with [a-z]+( \([^)]*\))?( tls [^ ]*)?' | head -n 1))"
			else
				fail "$label arrived in $mta_label's Maildir with its Received: saying $expect" "it says $got: $(received_header "$f")"
			fi
		else
			fail "$label arrives in $mta_label's Maildir within ${wait}s" "$(mta_log_excerpt "$mark")"
		fi
		;;
	deferred)
		if [[ -n $line ]] && jq -e '.msg == "delivery deferred" and .status == "deferred"' <<<"$line" >/dev/null; then
			pass "$label deferred $id, gateway log 'delivery deferred', reply '$(jq -r .reply <<<"$line")'"
		else
			fail "$label gateway log 'delivery deferred' for $id" "${line:-"no delivery line for $id"}"
		fi
		deferred_ids+=("$id") deferred_cells+=("$variant/$level")
		;;
	esac
	# EHLOs on each connection the MTA saw on the variant's port since.
	conns=$(mta_ehlo_since "$mark" "$port")
	bad=$(awk '$1 != 1 || $2 > 1' <<<"$conns")
	if [[ -z $conns ]]; then
		fail "$label $mta_label saw an EHLO on $port" "no connection in its log"
	elif [[ -z $bad ]]; then
		pass "$label one EHLO per connection at $mta_label ($(awk '{ printf "%s%s", sep, ($2 ? "EHLO, STARTTLS, EHLO" : "EHLO"); sep = "; " }' <<<"$conns"))"
	else
		fail "$label one EHLO per connection at $mta_label (plus one after STARTTLS)" \
			"EHLOs before/after STARTTLS on each connection: $(paste -sd, <<<"$conns" | sed 's/ /\//g')" \
			"$(mta_log_excerpt "$mark")"
	fi
}

# check_deferred_queued: each deferred cell's message is listed by the
# admin API (GET /smtp/queue) with its recipient deferred; and none of
# them reached the MTA.
check_deferred_queued() {
	local json i id entry
	json=$(queue_json)
	for i in "${!deferred_ids[@]}"; do
		id=${deferred_ids[$i]}
		entry=$(jq -c --arg id "$id" '.messages[]? | select(.id == $id)' <<<"$json" 2>/dev/null)
		if [[ -n $entry ]] && jq -e '.recipients[0].status == "deferred"' <<<"$entry" >/dev/null; then
			pass "upstream ${deferred_cells[$i]}: GET /smtp/queue lists $id deferred (last_error '$(jq -r '.recipients[0].last_error // .last_error' <<<"$entry")')"
		else
			fail "upstream ${deferred_cells[$i]}: GET /smtp/queue lists $id deferred" "${entry:-"not listed: $(head -c 600 <<<"$json")"}"
		fi
		if [[ $(count_with_subject "$mta_vmail" "caddy-smtp $ci_name up-${deferred_cells[$i]#*/}-${deferred_cells[$i]%/*}") == 0 ]]; then
			pass "upstream ${deferred_cells[$i]}: nothing arrived at $mta_label"
		else
			fail "upstream ${deferred_cells[$i]}: nothing arrived at $mta_label" "a copy is in $mta_vmail"
		fi
	done
}

# client_notls_checks LINE SHOWN MISSING: the MTA, told not to use TLS
# to srv-encrypt-notls.test, was handed the message "client-encrypt-notls"
# (the last send) and relayed it to the gateway's server at level
# encrypt. LINE, the MTA's log line on that recipient, must have the 530
# (passed: SHOWN in the check line; failed: LINE, or MISSING when it is
# empty); nothing may arrive in the gateway's Maildir.
client_notls_checks() {
	local label="client encrypt, $mta_label without TLS"
	if [[ $1 == *"530 5.7.0 Must issue a STARTTLS command first"* ]]; then
		pass "$label: refused with 530 ($2)"
	else
		fail "$label: refused with '530 5.7.0 Must issue a STARTTLS command first'" "${1:-$3}" "$(show "$swaks_log")"
	fi
	if [[ $(count_with_subject "$gw_maildir" "caddy-smtp $ci_name client-encrypt-notls") == 0 ]]; then
		pass "$label: nothing in the gateway's Maildir"
	else
		fail "$label: nothing in the gateway's Maildir"
	fi
}
