#!/bin/sh
# Install what the real-xenstored test bed needs on a fresh Debian 12 machine.
#
# Why these packages:
#   xen-utils-4.17  ships the real C daemon /usr/lib/xen-4.17/bin/xenstored that the tests run
#   xenstore-utils  ships xenstore-read/-write/-ls/-rm/-chmod: the tests check the tree with Debian's
#                   own client, independent of the agent's pyxs adapter
#   gcc, libc6-dev  build the LD_PRELOAD shim (tests/xenstored/shim.c) that lets the daemon run
#                   without a hypervisor
#   iproute2        ip netns / veth: the live rtnetlink tests and the latency benchmark
#   dpkg-dev        dpkg-buildpackage and dpkg-deb: tests/test_packaging.py builds and inspects the .deb
#   debhelper       dh and dh_installsystemd, which packaging/debian/rules builds the .deb with
#   dh-python       dh's python3 addon (byte-compiles the private module directory, ${python3:Depends})
#   python3-setuptools  Debian's own setuptools builds the sdist and wheel (docs/packaging.md)
#   python3-wheel   bdist_wheel for Debian 12's setuptools 66
#   rpm             rpmbuild builds the EL9 .rpm; rpm -qp inspects it in tests/test_packaging.py
# Not installed: openrc.  It conflicts with sysv-rc and its postinst moves /etc/rc?.d into
# /etc/runlevels; tests/test_openrc.py fetches it with apt-get download and runs it in a private root.
#
# Idempotent: when everything is present it does nothing (no apt-get update, no network). Starting
# services is refused for the duration of the install (xen-utils-common ships init scripts for the
# host's own xenstored), and any xenstored that appears during the install anyway is stopped, so the
# machine is left without a stray daemon. Exits non-zero naming what could not be installed.
set -eu

PACKAGES="xen-utils-4.17 xenstore-utils gcc libc6-dev iproute2 dpkg-dev debhelper dh-python
          python3-setuptools python3-wheel rpm"
XENSTORED=/usr/lib/xen-4.17/bin/xenstored

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

installed() {
    # dpkg-query prints "install ok installed" only for a fully configured package.
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# Pids of daemonised xenstoreds (parent is init), read from /proc so that procps is not needed.
# Test beds run xenstored as a child of the test process; those are never touched.
daemon_xenstoreds() {
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = xenstored ] || continue
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm has no spaces here.
        set -- $(cat "$d/stat" 2>/dev/null)
        [ "${4:-}" = 1 ] && echo "${d#/proc/}"
    done
    return 0
}

missing=""
for pkg in $PACKAGES; do
    installed "$pkg" || missing="$missing $pkg"
done

if [ -z "$missing" ]; then
    log "all present:$(printf ' %s' $PACKAGES)"
else
    log "missing:$missing"
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install$missing by hand"
    else
        SUDO=
    fi
    export DEBIAN_FRONTEND=noninteractive

    # Forbid service starts during the install unless the machine already forbids them (containers
    # usually ship a policy-rc.d that exits 101). Ours is removed again on any exit.
    POLICY=/usr/sbin/policy-rc.d
    our_policy=""
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# temporary, written by xenguest-agent .ci/install-deps.sh\nexit 101\n' \
            | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod 755 "$POLICY"
        our_policy=1
    fi
    cleanup() { [ -n "$our_policy" ] && $SUDO rm -f "$POLICY"; return 0; }
    trap cleanup EXIT INT TERM

    before=$(daemon_xenstoreds)

    # One apt-get update, only because something is missing.
    # Wait for a concurrent apt/dpkg (another job on the machine) instead of failing at once.
    LOCK="-o DPkg::Lock::Timeout=600"
    # shellcheck disable=SC2086
    $SUDO apt-get $LOCK update -q >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086
    $SUDO apt-get $LOCK install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        $missing >&2 || die "apt-get install failed for:$missing"

    # A daemonised xenstored that was not running before the install was started by it: stop it.
    for pid in $(daemon_xenstoreds); do
        case " $(echo $before) " in
            *" $pid "*) ;;
            *) log "stopping xenstored pid $pid started by the install"; $SUDO kill "$pid" || true ;;
        esac
    done

    for pkg in $PACKAGES; do
        installed "$pkg" || die "package $pkg is still not installed"
    done
fi

[ -x "$XENSTORED" ] || die "$XENSTORED not found (package xen-utils-4.17)"
for tool in xenstore-read xenstore-write xenstore-ls xenstore-rm xenstore-chmod; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (package xenstore-utils)"
done
command -v gcc >/dev/null 2>&1 || die "gcc not found (package gcc)"
log "ok"
