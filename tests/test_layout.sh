#!/bin/bash
# test_layout.sh BUILD_DIR - the build enforces the subsystem graph of common/
# (README "Layout"): in a scratch copy of the sources, a probe that crosses a line
# fails to build, and the same probe where the line allows it builds.
#   1. engine/ including wire/'s header fails to compile (engine does not use wire);
#   2. base/ including tokenizer/'s header fails (base is the leaf);
#   3. tokenizer/ calling libsodium fails to link its --no-undefined check object
#      (tokenizer does not declare libsodium) while privacy/ making the same call links.
# BUILD_DIR is unused: the copy is configured on its own, Release, without tests.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$T/src"
cp -r "$SRC/CMakeLists.txt" "$SRC/proto" "$SRC/common" "$SRC/tools" "$SRC/coordinator" \
      "$SRC/worker" "$SRC/configs" "$SRC/packaging" "$SRC/README.md" "$SRC/docs" "$T/src/"
B=$T/build
configure() { cmake -S "$T/src" -B "$B" -DCMAKE_BUILD_TYPE=Release -DFEDPEFT_TESTS=OFF >"$T/cmake.log" 2>&1 ||
                  { cat "$T/cmake.log" >&2; fail "cmake could not configure the scratch copy"; }; }
build() { cmake --build "$B" --target "$1" -j2 >"$T/build.log" 2>&1; }

# control: untouched, the check objects build
configure
build fp_check_tokenizer || { tail -30 "$T/build.log" >&2; fail "untouched tokenizer does not build"; }
build fp_check_privacy || { tail -30 "$T/build.log" >&2; fail "untouched privacy does not build"; }
echo "ok: the untouched subsystems build and link"

# 1. engine -> wire is not a declared edge
printf '#include "wire.h"\nint fp_layout_probe1(void) { return 0; }\n' >"$T/src/common/engine/zz_probe.c"
configure
if build fp_engine_obj; then fail "engine/ could include wire/wire.h"; fi
grep -q 'wire.h: No such file' "$T/build.log" || { tail -20 "$T/build.log" >&2; fail "engine probe failed for another reason"; }
rm "$T/src/common/engine/zz_probe.c"
echo "ok: engine/ cannot include wire/wire.h"

# 2. base is the leaf: it cannot see tokenizer/
printf '#include "tokenizer.h"\nint fp_layout_probe2(void) { return 0; }\n' >"$T/src/common/base/zz_probe.c"
configure
if build fp_base_obj; then fail "base/ could include tokenizer/tokenizer.h"; fi
grep -q 'tokenizer.h: No such file' "$T/build.log" || { tail -20 "$T/build.log" >&2; fail "base probe failed for another reason"; }
rm "$T/src/common/base/zz_probe.c"
echo "ok: base/ cannot include tokenizer/tokenizer.h"

# 3. a libsodium call: refused in tokenizer/, allowed in privacy/
probe='#include <sodium.h>
void fp_layout_probe3(unsigned char *p) { sodium_memzero(p, 1); }'
echo "$probe" >"$T/src/common/tokenizer/zz_probe.c"
configure
if build fp_check_tokenizer; then fail "tokenizer/ linked a libsodium call it does not declare"; fi
grep -q "undefined reference to .sodium_memzero" "$T/build.log" || { tail -20 "$T/build.log" >&2; fail "tokenizer probe failed for another reason"; }
rm "$T/src/common/tokenizer/zz_probe.c"
echo "ok: tokenizer/ cannot link libsodium"
echo "$probe" >"$T/src/common/privacy/zz_probe.c"
configure
build fp_check_privacy || { tail -20 "$T/build.log" >&2; fail "privacy/ could not link a libsodium call it declares"; }
echo "ok: privacy/ links the same call"
echo "test_layout: 5 passed, 0 failed"
