#!/usr/bin/env bash
# Reproduce models/sim.safetensors from nothing, in one command (models/README.md): collect rosbags in the
# embedded simulator, train, calibrate surprise on simulated closed-loop and exploration runs. Prints the
# wall time of each step and the total (the bar: 30 minutes on a 2-core CPU); the evaluation after it is
# not part of the reproduction. Output: runs/reproduce/sim.safetensors and runs/reproduce/eval/report.json.
#
#   bash experiments/reproduce_sim_model.sh [--no-eval]
set -euo pipefail
OUT=runs/reproduce
export MUJOCO_GL=${MUJOCO_GL:-egl}
if [ -e "$OUT/data" ]; then
    echo "$OUT/data exists: move it away first (collect refuses to overwrite bags)" >&2
    exit 1
fi
mkdir -p "$OUT"

step() {  # step NAME COMMAND...: run it and report its wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    "$@"
    echo "== $name took $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
}

: > "$OUT/times.txt"
start=$SECONDS
step collect jepa-wm collect --out "$OUT/data" --episodes 240 --steps 100 --workers 2
step train jepa-wm train --bags "$OUT/data" --out "$OUT/train"
step calibrate jepa-wm calibrate --model "$OUT/train/model.safetensors" --out "$OUT/sim.safetensors" \
    --sim-goals 100 --sim-explore 100 --whiten --quantile 1.0 --margin 1.2 --consecutive 1 --workers 2
echo "== reproduction took $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
if [ "${1:-}" != "--no-eval" ]; then
    step eval jepa-wm eval --model "$OUT/sim.safetensors" --push --out "$OUT/eval"
fi
