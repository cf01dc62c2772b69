#!/bin/sh
# One libFuzzer harness for SECONDS (RPA_FUZZ_SECONDS overrides) from its checked-in seeds: new inputs go
# to WORK/corpus (the seeds are only read), a failing input to WORK/crash-*, statistics to the output.
# Usage: sh tests/fuzz/run.sh FUZZER SEEDS WORK SECONDS
set -eu
fuzzer=$1 seeds=$2 work=$3 seconds=${RPA_FUZZ_SECONDS:-$4}
mkdir -p "$work/corpus"
# libFuzzer's own failure status is 77, which Meson reports as a skipped test: make a finding a failure.
exec "$fuzzer" "$work/corpus" "$seeds" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 \
  -error_exitcode=1 -print_final_stats=1 -artifact_prefix="$work/"
