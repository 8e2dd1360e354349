# shellcheck shell=bash
# Shared by the check scripts in .ci (interop, examples, postfix, nmap,
# testssl; exim and opensmtpd through mta.sh). Not run on its own; each
# script starts with
#
#   set -uo pipefail # no -e: every check runs and is counted
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   ci_init NAME "$@"    # usage check, sets $caddy_bin
#   ...
#   make_work NAME       # $work, Caddy's data and config in it
#   ci_traps             # from here on, exit prints "NAME: N passed, M failed"
#
# and counts its checks with pass and fail. A script may redefine the
# hooks at_exit (more to stop at exit) and on_failure (logs to print when
# a check failed), and set keep=1 to keep $work. The checks on the
# gateway's log (check_adapts, delivery_line, ...) read the Caddyfile
# $config and the JSON log $caddy_log, which the script sets.

readonly HOST=127.0.0.1
readonly SENDER=interop@client.example.net

passed=0 failed=0 caddy_pid='' work='' keep='' ci_name=''

# pass LABEL: count and print a passed check.
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }

# fail LABEL [DETAIL...]: count and print a failed check, each detail
# indented below it.
fail() {
	failed=$((failed + 1))
	printf 'FAIL  %s\n' "$1"
	shift
	(($# == 0)) || printf '%s\n' "$@" | sed 's/^/        /'
}

# show FILE: the end of a file, for a failure's details.
show() { tail -n 40 "$1" 2>&1 | sed 's/^/| /'; }

# print_tail LABEL N FILE: "---- LABEL (last N lines) ----" and the end
# of FILE, for the logs printed at exit after a failure.
print_tail() {
	echo "---- $1 (last $2 lines) ----"
	tail -n "$2" "$3" 2>/dev/null
}

# ci_init NAME "$@": NAME prefixes the script's own messages and its
# summary line. Checks the one argument, a caddy binary, and sets
# $caddy_bin to its absolute path; exits 2 if it is missing or not
# executable.
ci_init() {
	ci_name=$1
	shift
	if [[ $# -ne 1 ]]; then
		echo "usage: $0 <caddy-binary>" >&2
		exit 2
	fi
	caddy_bin=$(realpath "$1") || exit 2
	[[ -x $caddy_bin ]] || { echo "$ci_name: $1 is not executable" >&2; exit 2; }
}

# need_tools TOOL...: exit 2 unless each tool is on PATH.
need_tools() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "$ci_name: $tool not found" >&2; exit 2; }
	done
}

# apt_install PACKAGE...: install Debian packages (with sudo unless
# root); exit 2 if apt-get fails.
apt_install() {
	local sudo=()
	[[ $(id -u) -eq 0 ]] || sudo=(sudo)
	echo "$ci_name: installing $*"
	export DEBIAN_FRONTEND=noninteractive
	if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }; then
		echo "$ci_name: apt-get install $* failed" >&2
		exit 2
	fi
}

# make_work NAME: a new temporary directory /tmp/caddy-smtp-NAME.XXXXXX
# in $work, removed at exit; Caddy's data and autosaved config go there,
# not to $HOME.
make_work() {
	work=$(mktemp -d "/tmp/caddy-smtp-$1.XXXXXX") || exit 2
	export XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config
}

# The script's hooks, run by ci_finish; redefine them after sourcing.
# at_exit: stop what else the script started (caddy is stopped already).
at_exit() { :; }
# on_failure: print logs worth seeing when a check failed.
on_failure() { :; }

# ci_traps: run ci_finish at exit; INT and TERM exit with 130.
ci_traps() {
	trap ci_finish EXIT
	trap 'exit 130' INT TERM
}

# ci_finish: the EXIT trap. Stops caddy, runs the hooks, removes $work
# (kept if keep=1), prints "NAME: N passed, M failed", and exits with the
# script's status, or 1 if it was 0 but a check failed.
ci_finish() {
	local rc=$?
	caddy_stop
	at_exit
	if [[ -n $work ]]; then
		((rc == 0 && failed == 0)) || on_failure
		if [[ $keep == 1 ]]; then
			echo "$ci_name: kept $work"
		else
			rm -rf "$work"
		fi
	fi
	echo "$ci_name: $passed passed, $failed failed"
	((rc != 0 || failed == 0)) || rc=1
	exit "$rc"
}

# port_open PORT: something listens on $HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ports_free LABEL SECONDS PORT...: each port is free, or becomes free
# within SECONDS (a caddy stopped a moment ago may still be letting go);
# otherwise a failed check "LABEL: port P is free" and status 1.
ports_free() {
	local label=$1 deadline=$((SECONDS + $2)) p
	shift 2
	for p in "$@"; do
		while port_open "$p" && ((SECONDS < deadline)); do sleep 0.2; done
		if port_open "$p"; then
			fail "$label: port $p is free" "something already listens on $HOST:$p"
			return 1
		fi
	done
}

# caddy_start OUT ARG...: "caddy run ARG..." in the background, its
# stdout and stderr to the file OUT, its pid in $caddy_pid.
caddy_start() {
	local out=$1
	shift
	"$caddy_bin" run "$@" </dev/null >"$out" 2>&1 &
	caddy_pid=$!
}

# caddy_alive: the caddy started by caddy_start still runs.
caddy_alive() { [[ -n $caddy_pid ]] && kill -0 "$caddy_pid" 2>/dev/null; }

# caddy_stop: stop that caddy (TERM, KILL after 5s), if any.
caddy_stop() {
	[[ -n $caddy_pid ]] || return 0
	kill -TERM "$caddy_pid" 2>/dev/null
	for _ in $(seq 50); do
		kill -0 "$caddy_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$caddy_pid" 2>/dev/null
	wait "$caddy_pid" 2>/dev/null
	caddy_pid=''
}

# wait_listening ALIVE SECONDS PORT...: until something listens on all
# the ports; status 1 if the command ALIVE (is the server still running?)
# fails or SECONDS pass first.
wait_listening() {
	local alive=$1 deadline=$((SECONDS + $2)) p all
	shift 2
	while :; do
		all=1
		for p in "$@"; do port_open "$p" || all=''; done
		[[ -n $all ]] && return 0
		if ! "$alive" || ((SECONDS > deadline)); then
			return 1
		fi
		sleep 0.2
	done
}

# wait_ports SECONDS PORT...: until caddy listens on all the ports;
# status 1 if it exits or SECONDS pass first.
wait_ports() { wait_listening caddy_alive "$@"; }

# greeting PORT: the first line the server on PORT sends, without CR.
greeting() {
	timeout 10 bash -c "exec 3<>/dev/tcp/$HOST/$1 && IFS= read -r -t 5 line <&3 && printf '%s' \"\${line%\$'\r'}\" && printf 'QUIT\r\n' >&3" 2>/dev/null
}

# starttls_probe LOG PORT [S_CLIENT-OPTIONS...]: STARTTLS to $HOST:PORT
# with openssl s_client, its output to the file LOG; its exit status.
starttls_probe() {
	local log=$1 port=$2
	shift 2
	timeout 20 openssl s_client -starttls smtp -connect "$HOST:$port" "$@" </dev/null >"$log" 2>&1
}

# wait_cert LOG PORT: until a STARTTLS handshake with SNI localhost on
# PORT gets a certificate (Caddy's internal CA issues it asynchronously
# after start); status 1 if caddy exits or 30s pass first. The last
# probe's output is in LOG.
wait_cert() {
	local deadline=$((SECONDS + 30))
	while :; do
		starttls_probe "$1" "$2" -servername localhost &&
			grep -q -- '-----BEGIN CERTIFICATE-----' "$1" && return 0
		if ! caddy_alive || ((SECONDS > deadline)); then
			return 1
		fi
		sleep 0.2
	done
}

# send NAME PORT RCPT [SWAKS-OPTIONS...]: one message from $SENDER with
# swaks, subject "caddy-smtp $ci_name NAME"; the transcript goes to
# $work/t/NAME.log (in $swaks_log), the exit code to $swaks_rc, and the
# queue id of a "250 ... queued as ID" reply to $queue_id.
# shellcheck disable=SC2034 # the results are for the caller
send() {
	local name=$1 port=$2 rcpt=$3
	shift 3
	swaks_log=$work/t/$name.log
	timeout 60 swaks --server "$HOST" --port "$port" \
		--ehlo client.example.net --from "$SENDER" --to "$rcpt" \
		--header "Subject: caddy-smtp $ci_name $name" \
		--timeout 15 "$@" </dev/null >"$swaks_log" 2>&1
	swaks_rc=$?
	queue_id=$(sed -n 's/^<[-~] *250 .*queued as \([A-Za-z0-9_-]*\).*/\1/p' "$swaks_log" | tail -n 1)
}

# ---- checks on the gateway ----------------------------------------------

# check_adapts SERVERS LABEL: `caddy adapt` turns the Caddyfile $config
# into $work/adapted.json with apps.smtp.servers named SERVERS (a JSON
# array, sorted). Passed: the check "config: LABEL"; failed: "config:
# NAME adapts" (NAME, the Caddyfile's file name) and status 1.
# shellcheck disable=SC2154 # the script sets $config
check_adapts() {
	if "$caddy_bin" adapt --config "$config" --adapter caddyfile >"$work/adapted.json" 2>"$work/adapt.err" &&
		jq -e --argjson want "$1" '.apps.smtp.servers | keys == $want' "$work/adapted.json" >/dev/null; then
		pass "config: $2"
	else
		fail "config: ${config##*/} adapts" "$(show "$work/adapt.err")"
		return 1
	fi
}

# check_queued CHECK-NAME: the last send got a 250 with a queue id.
check_queued() {
	if [[ $swaks_rc -eq 0 && -n $queue_id ]]; then
		pass "$1 (swaks exit 0, queued as $queue_id)"
	else
		fail "$1" "swaks exit $swaks_rc, queue id '${queue_id}'" "$(show "$swaks_log")"
	fi
}

# delivery_line ID: the caddy log's first delivery line for a queue id.
# shellcheck disable=SC2154 # the script sets $caddy_log
delivery_line() {
	[[ -n $1 ]] || return 0
	jq -c --arg id "$1" 'select(.logger == "smtp.queue" and .queue_id == $id
		and (.msg | startswith("delivery ")))' "$caddy_log" 2>/dev/null | head -n 1
}

# wait_delivery SECONDS ID...: until each id has a delivery line.
wait_delivery() {
	local deadline=$((SECONDS + $1)) id missing
	shift
	while :; do
		missing=0
		for id in "$@"; do
			[[ -z $id || -n $(delivery_line "$id") ]] || missing=1
		done
		((missing == 0)) && return 0
		((SECONDS > deadline)) && return 1
		sleep 0.2
	done
}

# check_caddy_running: the check "end: caddy still running".
check_caddy_running() {
	if caddy_alive; then
		pass "end: caddy still running"
	else
		fail "end: caddy still running" "it exited"
	fi
}

# ---- checks on mail files -----------------------------------------------

# received_header FILE [N]: the message's Nth (default first) Received:
# header, unfolded, CR removed (the gateway's Maildir files have CRLF
# line ends, the MTAs' LF), each run of blanks one space.
received_header() {
	awk -v want="${2:-1}" '
		function flush() { if (cur != "" && ++n == want) { gsub(/[ \t]+/, " ", cur); print cur; exit } cur = "" }
		{ sub(/\r$/, "") }
		/^$/ { flush(); exit }
		/^[ \t]/ { if (cur != "") { sub(/^[ \t]+/, " "); cur = cur $0 } next }
		{ flush(); if (tolower($0) ~ /^received:/) cur = $0 }' "$1"
}
