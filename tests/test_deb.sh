#!/bin/bash
# test_deb.sh BUILD_DIR - builds the .deb with cpack and checks it: the programs in
# /usr/bin, the configs under /etc/fedpeft (conffiles), the systemd units, Depends on
# the runtime libraries, the maintainer scripts; then unpacks it into a scratch root
# and runs the unpacked fedpeft --version from there. Needs cpack, dpkg-deb and
# dpkg-shlibdeps (Debian package dpkg-dev).
set -euo pipefail
BUILD=$(cd "${1:?usage: test_deb.sh BUILD_DIR}" && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || fail "dpkg-deb not found (a Debian system is required)"
command -v dpkg-shlibdeps >/dev/null || fail "dpkg-shlibdeps not found: apt-get install dpkg-dev"
CPACK=$(dirname "$(command -v cmake)")/cpack
[ -x "$CPACK" ] || CPACK=cpack

# Package into the scratch directory, so that parallel runs do not share files.
(cd "$BUILD" && "$CPACK" -G DEB -B "$SCRATCH/pkg" >"$SCRATCH/cpack.log" 2>&1) ||
    { cat "$SCRATCH/cpack.log" >&2; fail "cpack -G DEB failed"; }
DEB=$(ls "$SCRATCH"/pkg/fedpeft_*.deb 2>/dev/null | head -n1)
[ -n "$DEB" ] || { cat "$SCRATCH/cpack.log" >&2; fail "no fedpeft_*.deb in $SCRATCH/pkg"; }
echo "package: $(basename "$DEB")"

dpkg-deb -c "$DEB" | awk '{print $NF}' | sed 's|^\./|/|' >"$SCRATCH/contents"
for f in /usr/bin/fedpeft /usr/bin/fedpeft-coordinator /usr/bin/fedpeft-worker \
         /etc/fedpeft/coordinator.ini /etc/fedpeft/worker.ini \
         /usr/lib/systemd/system/fedpeft-coordinator.service \
         /usr/lib/systemd/system/fedpeft-worker.service \
         /usr/lib/systemd/system/fedpeft-worker@.service \
         /usr/share/doc/fedpeft/README.md; do
    grep -qx -- "$f" "$SCRATCH/contents" || fail "$f is not in the package"
done
if grep -E '^/usr/bin/test_|/build-' "$SCRATCH/contents"; then
    fail "test binaries or build paths are in the package"
fi
# Nothing under /lib, /bin, /sbin: on merged-/usr Debian those are symlinks into /usr.
if grep -E '^/(lib|bin|sbin)/.' "$SCRATCH/contents"; then
    fail "the package ships files under /lib, /bin or /sbin (use /usr/...)"
fi

dpkg-deb -I "$DEB" >"$SCRATCH/info"
depends=$(dpkg-deb -f "$DEB" Depends)
echo "Depends: $depends"
for lib in libopenblas libzmq5 libsodium23 libprotobuf-c1 libcjson1 libinih1 libpcre2-8-0 passwd; do
    grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib"
done
for s in postinst prerm postrm conffiles; do
    grep -qw "$s" "$SCRATCH/info" || fail "control member $s is missing"
done
mkdir "$SCRATCH/ctl"
dpkg-deb -e "$DEB" "$SCRATCH/ctl"
grep -qx /etc/fedpeft/coordinator.ini "$SCRATCH/ctl/conffiles" || fail "coordinator.ini is not a conffile"
[ -x "$SCRATCH/ctl/postinst" ] || fail "postinst is not executable"
grep -q 'useradd --system' "$SCRATCH/ctl/postinst" || fail "postinst does not create the user"
sh -n "$SCRATCH/ctl/postinst" && sh -n "$SCRATCH/ctl/prerm" && sh -n "$SCRATCH/ctl/postrm" ||
    fail "a maintainer script has a syntax error"

# The units: a dedicated user, restart on failure, state under /var/lib/fedpeft.
mkdir "$SCRATCH/root"
dpkg -x "$DEB" "$SCRATCH/root"
for u in fedpeft-coordinator.service fedpeft-worker.service fedpeft-worker@.service; do
    unit="$SCRATCH/root/usr/lib/systemd/system/$u"
    for want in '^User=fedpeft$' '^Restart=on-failure$' '^StateDirectory=fedpeft$' \
                '^ExecStart=/usr/bin/fedpeft-' '^WantedBy=multi-user.target$'; do
        grep -q "$want" "$unit" || fail "$u lacks $want"
    done
done
if command -v systemd-analyze >/dev/null 2>&1; then
    # Syntax only: the scratch root has no systemd, so missing programs are expected.
    systemd-analyze verify "$SCRATCH"/root/usr/lib/systemd/system/fedpeft-*.service \
        >"$SCRATCH/verify" 2>&1 || true
    if grep -Ei 'unknown (key|section)|failed to parse|invalid|bad-setting|ignoring' "$SCRATCH/verify"; then
        fail "systemd-analyze verify rejects a unit"
    fi
fi

# The unpacked programs run from the scratch root with the system's libraries.
out=$("$SCRATCH/root/usr/bin/fedpeft" --version) || fail "unpacked fedpeft --version failed"
echo "$out" | head -n1
grep -q "0\.\|fedpeft" <<<"$out" || fail "unexpected --version output: $out"
"$SCRATCH/root/usr/bin/fedpeft-coordinator" --help >/dev/null || fail "unpacked coordinator --help failed"
"$SCRATCH/root/usr/bin/fedpeft-worker" --help >/dev/null || fail "unpacked worker --help failed"

# The packaged configs load, once the programs know [security] (the CURVE keys).
if "$SCRATCH/root/usr/bin/fedpeft-coordinator" --help 2>&1 | grep secret_key >/dev/null; then
    "$SCRATCH/root/usr/bin/fedpeft-coordinator" --config "$SCRATCH/root/etc/fedpeft/coordinator.ini" \
        --print-config >/dev/null || fail "/etc/fedpeft/coordinator.ini does not load"
fi
echo "PASS: $(basename "$DEB")"
