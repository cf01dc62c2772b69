#!/bin/sh
# The README's commands: `sh tools/quickstart.sh main` (the benchmark-and-validate main job),
# `sh tools/quickstart.sh test` (every test, then tools/sanitize.sh ci: the unit tests under ASan + UBSan,
# a smoke run of each fuzzer, the concurrency tests under TSan) and `sh tools/quickstart.sh sanitize [JOB]`
# (tools/sanitize.sh: sanitizers and fuzzing, JOB defaults to all). Each installs the Debian 12 packages
# that are missing, then builds and runs. Needs root (or sudo) only when something must be installed.
set -eu
cd "$(dirname "$0")/.."
job=${1:-}
case "$job" in main | test | sanitize) ;; *) echo "usage: sh tools/quickstart.sh main|test|sanitize [JOB]" >&2; exit 2 ;; esac

packages="g++ meson ninja-build pkg-config binutils libhwy-dev libtbb-dev libboost-test-dev nlohmann-json3-dev
  libcli11-dev python3 python3-numpy python3-pytest python3-matplotlib python3-mesonpy python3-pip python3-venv cmake
  hipcc libamdhip64-dev"
# Debian 12's clang is clang 14; libclang-rt-14-dev holds its sanitizer and libFuzzer runtimes.
[ "$job" = main ] || packages="$packages clang libclang-rt-14-dev"
missing=""
for package in $packages; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
fi

[ "$job" = sanitize ] && exec sh tools/sanitize.sh "${2:-all}"

[ -f build/build.ninja ] || meson setup build
ninja -C build

# The plugins built here are found without installing them.
export RPA_PLUGIN_PATH="$PWD/build/plugins${RPA_PLUGIN_PATH:+:$RPA_PLUGIN_PATH}"
if [ "$job" = main ]; then
  build/tools/rpa info
  exec build/tools/rpa bench --goals bench/goals.json
fi

status=0
meson test -C build --no-rebuild --print-errorlogs || status=$?
# The sanitizer builds' tests count in the summary too (a failed build: one failure).
rm -f build-asan/meson-logs/testlog.json build-tsan/meson-logs/testlog.json
sh tools/sanitize.sh ci || status=$?
/usr/bin/python3 - "$status" build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
    build-tsan/meson-logs/testlog.json <<'PY'
import json, os, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in sys.argv[2:]:
    if not os.path.exists(path):
        counts["failed"] += 1
        continue
    for line in open(path):
        result = json.loads(line)["result"]
        counts["passed" if result == "OK" else "skipped" if result == "SKIP" else "failed"] += 1
if sys.argv[1] != "0" and counts["failed"] == 0:
    counts["failed"] = 1  # a build or setup step failed
print("%(passed)d passed, %(failed)d failed, %(skipped)d skipped" % counts)
PY
exit $status
