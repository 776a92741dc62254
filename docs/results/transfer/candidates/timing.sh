#!/bin/bash
# The user's command (500 labels of lab-los, the default mode) timed in several code trees
# alternating, each run from a fresh copy of the shipped models/:
#   timing.sh LABS.h5 ROUNDS NAME:TREE [NAME:TREE ...]
# 2026-12-07: A:<main before> B:<with training.allocator> C:<and auto_gradual_max 500>.
set -euo pipefail
labs=$1 rounds=$2
shift 2
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for arm in "$@"; do
    name=${arm%%:*} tree=${arm#*:}
    rm -rf "$out/models" && cp -r "$tree/models" "$out/models"
    log="$out/$name-$r.log"
    PYTHONPATH=$tree /usr/bin/time -f "%e s wall, %U s user, %S s kernel" \
      python3 -c "from service.cli import main; main()" train site --data "$labs" \
      --env lab-los --site t500 --out "$out/models" --fraction 0.125 --seed 0 -q > "$log" 2>&1
    echo "$name round $r (load $(cut -d' ' -f1 /proc/loadavg)): $(tail -1 "$log")"
    grep "│ test" "$log"
  done
done
