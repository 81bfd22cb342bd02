#!/bin/sh
# Builds the frame-decoder fuzz target with clang's libFuzzer and runs it for a
# bounded time from the seed corpus. Usage: run_fuzz.sh CLANGXX SRC_DIR WORK_DIR SECONDS
# Exit 77 (ctest: skipped) when clang cannot build libFuzzer targets here.
set -eu
CXX=$1
SRC=$2
WORK=$3
SECS=${4:-20}
mkdir -p "$WORK/corpus"
if ! "$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
     -I"$SRC" "$SRC/tests/net/fuzz_frame.cpp" "$SRC/net/frame.cpp" -o "$WORK/fuzz_frame" 2>"$WORK/build.log"; then
  echo "fuzz_frame: cannot build with $CXX -fsanitize=fuzzer (install clang and libclang-rt-14-dev); skipping"
  cat "$WORK/build.log"
  exit 77
fi
# New inputs go to WORK/corpus; the checked-in seeds are read only.
nice -n 10 "$WORK/fuzz_frame" -max_total_time="$SECS" -max_len=8192 -rss_limit_mb=1024 -timeout=10 \
  -print_final_stats=1 "$WORK/corpus" "$SRC/tests/net/fuzz_corpus"
