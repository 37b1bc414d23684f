#!/usr/bin/env bash
# Builds one fuzz target with cargo-fuzz and runs it for the given number of seconds, at the
# lowest CPU priority. Prints the executions and whether a crash was found; exits non-zero if one
# was (its input is under fuzz/artifacts/<target>/).
#
#   fuzz/run.sh frame_decoder 600
#   fuzz/run.sh storage_record 600
#   fuzz/run.sh storage_recovery 600
#
# Extra arguments go to libFuzzer (e.g. -max_len=65536). Builds in $CARGO_TARGET_DIR, by default
# target/fuzz-target of the repository (never the workspace's debug/release directories), with
# optimizations, debug assertions and overflow checks. SANITIZER=address adds AddressSanitizer
# (cargo-fuzz's default; about 5-10x fewer executions per second, and the fuzzed crates have no
# unsafe code of their own); the default is none. Switching it rebuilds everything.
# With a sanitizer, cargo-fuzz passes the nightly-only rustc flag -Zsanitizer=...; RUSTC_BOOTSTRAP=1
# (set here only then) lets the pinned stable toolchain accept it. Without one, plain stable works.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 <frame_decoder|storage_record|storage_recovery> <seconds> [libFuzzer args...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2
case "$target" in
    frame_decoder | storage_record | storage_recovery) ;;
    *) echo "unknown target: $target" >&2; exit 2 ;;
esac

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "$fuzz_dir"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$fuzz_dir/../target/fuzz-target}

if ! cargo fuzz --version >/dev/null 2>&1; then
    nice -n 19 cargo install cargo-fuzz --version 0.13.2 --locked
fi
if [ ! -d "corpus/$target" ]; then
    nice -n 19 cargo run --quiet --bin gen_corpus
fi
sanitizer=${SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
nice -n 19 cargo fuzz build --sanitizer "$sanitizer" "$target"
binary=$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/$target

# New inputs the fuzzer finds go to a working corpus outside the repository; the checked-in
# seeds are read only.
work=$CARGO_TARGET_DIR/corpus/$target
artifacts=$fuzz_dir/artifacts/$target
mkdir -p "$work" "$artifacts"
logs=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$logs"
log=$logs/$target.log
scratch=$(mktemp -d /dev/shm/weir-fuzz-run.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export WEIR_FUZZ_SCRATCH=$scratch
before=$(ls "$artifacts")

echo "running $binary for $seconds s (libFuzzer output: $log)"
status=0
nice -n 19 "$binary" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$@" "$work" "corpus/$target" >"$log" 2>&1 || status=$?

new_artifacts=$(comm -13 <(echo "$before") <(ls "$artifacts"))
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
echo "target:     $target"
echo "seconds:    $seconds"
echo "sanitizer:  $sanitizer"
echo "executions: ${execs:-unknown} (${rate:-?}/s)"
if [ "$status" -ne 0 ] || [ -n "$new_artifacts" ]; then
    echo "crashes:    found (libFuzzer exit status $status); the end of its report:"
    grep -v '^#[0-9]' "$log" | tail -n 40 | sed 's/^/    /'
    echo "inputs:"
    echo "$new_artifacts" | sed "s|^|    $artifacts/|"
    echo "reproduce:  $binary <input>"
    exit 1
fi
echo "crashes:    0"
