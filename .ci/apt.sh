# shellcheck shell=bash
# Sourced by .ci/postfix.sh and bench/run.sh: installing Postfix for a
# private instance, without configuring or starting the system's own.

# apt_install_unstarted PACKAGE...: apt-get install the packages with
# Postfix's debconf question answered "No configuration" and, while it
# runs, a policy-rc.d that keeps maintainer scripts from starting
# services (invoke-rc.d and deb-systemd-invoke honour it). It returns
# apt-get's status. $policy_rc_d_ours is set while the policy file is
# ours, so that an exit trap can remove it after an interruption.
apt_install_unstarted() {
	local rc
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy_rc_d_ours=1
	fi
	timeout 300 apt-get update -qq &&
		timeout 300 apt-get install -y -qq --no-install-recommends "$@" >/dev/null
	rc=$?
	if [[ -n ${policy_rc_d_ours:-} ]]; then
		rm -f /usr/sbin/policy-rc.d
		policy_rc_d_ours=
	fi
	return "$rc"
}
