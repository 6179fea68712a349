#!/usr/bin/env bash
# Record-and-adapt, end to end in the embedded simulator (README "Fine-tuning after the robot changes").
#
# The robot changes (every joint re-zeroed by 0.2-0.25 rad, every drive at half gain): the shipped
# model's plans now miss. Record at most 10 simulated minutes of play on the changed robot as rosbags,
# fine-tune the dynamics with the encoder frozen, and evaluate again. Prints the wall time of each step;
# results land in runs/changed_robot/*/report.json.
#
#   bash experiments/changed_robot.sh [MODEL]        (default: models/sim.safetensors)
set -euo pipefail
MODEL=${1:-models/sim.safetensors}
OUT=runs/changed_robot
CHANGE=(--joint-offset 0.2 0.25 -0.25 --joint-gain-scale 0.5 0.5 0.5)
export MUJOCO_GL=${MUJOCO_GL:-egl}
mkdir -p "$OUT"

step() {  # step NAME COMMAND...: run it and report its wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: $*"
    "$@"
    echo "== $name took $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
}

: > "$OUT/times.txt"
step "shipped model, unchanged robot" jepa-wm eval --model "$MODEL" --surprise-episodes 0 --out "$OUT/before_unchanged"
step "shipped model, changed robot" jepa-wm eval --model "$MODEL" --surprise-episodes 10 "${CHANGE[@]}" --out "$OUT/before_changed"
# 60 episodes x 100 steps x 0.1 s = 10 simulated minutes; seeds disjoint from the training data's.
rm -rf "$OUT/bags"
step "record 10 simulated minutes" jepa-wm collect --out "$OUT/bags" --episodes 60 --steps 100 --seed 100000 --workers 2 "${CHANGE[@]}"
rm -rf "$OUT/adapted"
step "fine-tune, encoder frozen" jepa-wm finetune --model "$MODEL" --bags "$OUT/bags" --freeze encoder --out "$OUT/adapted"
step "adapted model, changed robot" jepa-wm eval --model "$OUT/adapted/model.safetensors" --surprise-episodes 10 "${CHANGE[@]}" --out "$OUT/after_changed"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [("shipped, unchanged robot", "before_unchanged"), ("shipped, changed robot", "before_changed"),
        ("fine-tuned, changed robot", "after_changed")]
print(f"{'':28s} {'success':>8s} {'final err (rad)':>16s} {'pred error':>11s}")
for label, d in rows:
    r = json.load(open(f"{out}/{d}/report.json"))
    pe = r.get("surprise", {}).get("nominal_prediction_error")
    print(f"{label:28s} {r['reach']['planner']['success_rate']:8.0%} {r['reach']['planner']['final_error_mean']:16.3f} "
          f"{'-' if pe is None else format(pe, '.4f'):>11s}")
PY
