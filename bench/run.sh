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
# Ports 127.0.0.1:2951-2958 (-ports BASE moves them). The table also goes
# to $work/report.md, the raw numbers to $work/results.json; $work is
# deleted after a successful run unless BENCH_KEEP=1 (it is kept after a
# failure), so set BENCH_KEEP=1 to keep those and the configs, logs,
# maillogs and strace output.
# Extra arguments go to smtpbench run: e.g. -scale 0.25 for a quick run,
# -only tls-4k, -crosscheck=false, -strace=false, -systems gateway,postfix
# (no content checks), -check-cells '' (content checks in every cell),
# -rspamd-workers 2.
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
chmod 644 "$work/tls/cert.pem"
chmod 600 "$work/tls/key.pem" # Postfix reads it as root, before dropping privileges

# ---- run ------------------------------------------------------------------

echo "bench: build and setup took $((SECONDS - started)) s" >&2
"$work/smtpbench" run -caddy "$work/caddy" -work "$work" \
	-cert "$work/tls/cert.pem" -key "$work/tls/key.pem" "$@"
