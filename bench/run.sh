#!/usr/bin/env bash
# Benchmark: the caddy-smtp gateway side by side with Postfix (GitHub
# issue 5). One command, as root on Debian 12 with Go at /usr/local/go:
#
#   bash bench/run.sh [smtpbench run flags...]
#
# It installs what it needs (postfix, without configuring or starting the
# system's instance; strace; openssl), builds Caddy with this plugin from
# the checkout and the harness (bench/smtpbench), makes an ECDSA P-256
# certificate with openssl, and runs `smtpbench run`, which for every cell
# (plaintext or STARTTLS in and out; 4 KiB or 100 KiB; 1 or 50
# connections) starts a fresh gateway and a fresh private Postfix instance
# (postfix -c DIR) relaying to the harness's own STARTTLS sink, drives
# each the same way with the harness's load generator, cross-checks the
# plaintext cells with Postfix's smtp-source and smtp-sink, counts each
# system's syscalls per message with strace, and prints a markdown table
# with the ratios gateway/Postfix, beside the machine's fsync and TLS
# handshake rates. In the STARTTLS 4 KiB cells it also runs the gateway
# with a content check (issue 14): gateway+rspamd against an rspamd and
# gateway+clamav against a clamd that the harness starts with private
# configs (offline: no redis, DNS to a closed port, an EICAR-only ClamAV
# database) and stops at the end; each is left out, saying so, when
# rspamd (package rspamd) or clamd (clamav-daemon) is not installed
# (this script does not install them). About 3-4 minutes on 2 cores,
# plus the build.
#
# The peers (issue 16): in the STARTTLS 4 KiB cells c=20 with 1 message
# per connection and c=50 with 10, also maddy, chasquid and Haraka, each
# relaying to the same sink through its own durable queue. This script
# sets them up once into $BENCH_PEERS_DIR (default
# /var/cache/caddy-smtp-bench): maddy v0.8.1 with go install from a
# scratch module (which carries maddy's replace directives: go install
# pkg@version refuses them, and a dependency's are not applied), chasquid
# from Debian's package with apt-get download and dpkg -x (it conflicts
# with Postfix, so it is never installed), Haraka 3.3.4 from npm. A peer
# that cannot be set up is left out, saying so, here and in the report.
# About 2 minutes more, plus the first set-up (maddy's build: minutes).
#
# Ports 127.0.0.1:2951-2961 (-ports BASE moves them) and 127.0.29.53:53,
# the DNS stub chasquid resolves through (-dns moves it). The table also goes
# to $work/report.md, the raw numbers to $work/results.json; $work is
# deleted after a successful run unless BENCH_KEEP=1 (it is kept after a
# failure), so set BENCH_KEEP=1 to keep those and the configs, logs,
# maillogs and strace output.
# Extra arguments go to smtpbench run: e.g. -scale 0.25 for a quick run,
# -only tls-4k, -crosscheck=false, -strace=false, -systems gateway,postfix
# (no content checks), -check-cells '' (content checks in every cell),
# -rspamd-workers 2, -systems gateway,postfix,maddy,chasquid,haraka (no
# content checks), -peer-cells ''.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=../.ci/apt.sh
source .ci/apt.sh
export PATH=/usr/local/go/bin:$PATH:/usr/sbin:/sbin
started=$SECONDS

if [[ $(id -u) -ne 0 ]]; then
	echo "bench: must run as root (it runs a Postfix instance and smtp-sink)" >&2
	exit 2
fi

# ---- packages -------------------------------------------------------------

policy_rc_d_ours=
work=
cleanup() {
	local rc=$?
	[[ -z $policy_rc_d_ours ]] || rm -f /usr/sbin/policy-rc.d
	if [[ -n $work ]]; then
		if [[ ${BENCH_KEEP:-} == 1 || $rc -ne 0 ]]; then
			echo "bench: kept $work" >&2
		else
			rm -rf "$work"
		fi
	fi
	echo "bench: $((SECONDS - started)) s in all (exit $rc)" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

missing=()
for p in postfix strace openssl; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
	echo "bench: installing ${missing[*]}" >&2
	apt_install_unstarted "${missing[@]}"
fi
for tool in postfix postconf smtp-source smtp-sink strace openssl go; do
	command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 2; }
done
# The content-check engines are optional: smtpbench leaves out the
# system whose engine is missing.
command -v rspamd >/dev/null ||
	echo "bench: rspamd not installed: no gateway+rspamd cells (apt-get install rspamd to have them)" >&2
command -v clamd >/dev/null ||
	echo "bench: clamd not installed: no gateway+clamav cells (apt-get install clamav-daemon to have them)" >&2

# ---- peers (issue 16) -----------------------------------------------------

# Each set-up runs once: what is there is used as it is. A failure leaves
# the peer out (smtpbench says so); the log of the set-up is kept.
peers=${BENCH_PEERS_DIR:-/var/cache/caddy-smtp-bench}
mkdir -p "$peers"
peer_args=()
declare -A peer_bin=(
	[maddy]=$peers/maddy/bin/maddy
	[chasquid]=$peers/chasquid/root/usr/bin/chasquid
	[haraka]=$peers/haraka/node_modules/Haraka/bin/haraka
)

setup_maddy() {
	local mod=$peers/maddy/mod
	rm -rf "$peers/maddy" && mkdir -p "$mod" && cd "$mod" || return
	# maddy's own go.mod replaces these with its forks; go install
	# pkg@version will not build a module with replace directives and a
	# dependency's are not applied, so a scratch module carries them.
	cat >go.mod <<-'EOF'
		module bench.invalid/maddy

		go 1.23

		replace github.com/emersion/go-imap => github.com/foxcpp/go-imap v1.0.0-beta.1.0.20220623182312-df940c324887

		replace github.com/emersion/go-smtp => github.com/foxcpp/go-smtp v1.21.4-0.20250124171104-c8519ae4fb23

		replace github.com/libdns/gandi => github.com/foxcpp/libdns-gandi v1.0.4-0.20240127130558-4782f9d5ce3e
	EOF
	go get github.com/foxcpp/maddy@v0.8.1 &&
		GOBIN=$peers/maddy/bin go install github.com/foxcpp/maddy/cmd/maddy
}

setup_chasquid() {
	rm -rf "$peers/chasquid" && mkdir -p "$peers/chasquid" && cd "$peers/chasquid" || return
	# Not apt-get install: chasquid and Postfix both provide
	# mail-transport-agent, and installing one removes the other.
	apt-get download chasquid || { timeout 300 apt-get update -qq && apt-get download chasquid; } || return
	dpkg -x chasquid_*.deb root
}

setup_haraka() {
	command -v npm >/dev/null || { echo "npm not found"; return 1; }
	rm -rf "$peers/haraka" && mkdir -p "$peers/haraka" || return
	npm install --prefix "$peers/haraka" --no-audit --no-fund --loglevel=error Haraka@3.3.4
}

for peer in maddy chasquid haraka; do
	bin=${peer_bin[$peer]}
	if [[ ! -x $bin ]]; then
		echo "bench: setting up $peer in $peers/$peer (log: $peers/$peer.log)" >&2
		if ! (set +e; "setup_$peer") >"$peers/$peer.log" 2>&1 || [[ ! -x $bin ]]; then
			echo "bench: $peer could not be set up (see $peers/$peer.log): it is left out" >&2
			continue
		fi
	fi
	peer_args+=("-$peer" "$bin")
done
command -v node >/dev/null || echo "bench: node not found: Haraka will not start" >&2

# ---- build ----------------------------------------------------------------

# Postfix's daemons (user postfix) must reach the instance directories.
work=$(mktemp -d /tmp/caddy-smtp-bench.XXXXXX)
chmod 755 "$work"
echo "bench: work directory $work" >&2

echo "bench: building caddy (./cmd/caddy) and the harness (./bench/smtpbench)" >&2
go build -o "$work/caddy" ./cmd/caddy
go build -o "$work/smtpbench" ./bench/smtpbench

# ---- certificate ----------------------------------------------------------

# One self-signed ECDSA P-256 certificate, served by both systems and
# the sink.
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
	-subj /CN=bench.test -addext 'subjectAltName=DNS:bench.test,IP:127.0.0.1' \
	-keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" >"$work/tls/openssl.log" 2>&1
# Haraka's DH parameters: the RFC 7919 group ffdhe2048 (instant; without
# a file, Haraka runs openssl dhparam 2048 at every start).
openssl genpkey -genparam -algorithm DH -pkeyopt dh_param:ffdhe2048 -out "$work/tls/dhparams.pem" >>"$work/tls/openssl.log" 2>&1 &&
	peer_args+=(-dhparam "$work/tls/dhparams.pem")
chmod 644 "$work/tls/cert.pem"
chmod 600 "$work/tls/key.pem" # Postfix reads it as root, before dropping privileges

# ---- run ------------------------------------------------------------------

echo "bench: build and setup took $((SECONDS - started)) s" >&2
"$work/smtpbench" run -caddy "$work/caddy" -work "$work" \
	-cert "$work/tls/cert.pem" -key "$work/tls/key.pem" ${peer_args[@]+"${peer_args[@]}"} "$@"
