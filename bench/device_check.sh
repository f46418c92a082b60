#!/usr/bin/env bash
# Every device check in one run: the suite's device-marked tests on DEVICE, a short default training run with bf16
# autocast, the equivalence check on its checkpoint, and the generation and solver benchmarks on DEVICE.
#
#   bench/device_check.sh [DEVICE] [OUT]       DEVICE: cuda (default), cuda:N or cpu; OUT: bench/results/device
#   QUICK=1 bench/device_check.sh cpu OUT      tiny sizes and data (the suite runs this on CPU to test the script)
#   ONLY="train equivalence" ...               run only these steps (tests, train, equivalence, generation, solvers)
#
# Installs nothing: it needs the project (pip install -e ".[dev]") and a torch that sees DEVICE. Each step's exit
# code, seconds and log go to OUT (summary.json, *.log); the benchmarks write their JSON there. It goes on after a
# failed step and exits 1 if any failed, 2 if DEVICE is unusable.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${1:-cuda}"
OUT="${2:-bench/results/device}"
QUICK="${QUICK:-0}"
ONLY="${ONLY:-tests train equivalence generation solvers}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if ! python - "$DEVICE" > "$OUT/env.json" <<'EOF'
import json, platform, sys
import torch
device = torch.device(sys.argv[1])
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit(f"device {device} asked for, but torch {torch.__version__} sees no CUDA device")
info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(), "bf16": device.type == "cpu" or torch.cuda.is_bf16_supported()}
print(json.dumps(info, indent=2))
EOF
then
    echo "device_check: $DEVICE is not usable here" >&2
    exit 2
fi

if [ "$QUICK" = 1 ]; then
    STEPS=6; EVERY=3; LENGTHS="64"; NEW=4; REPEATS=1; TOKENS=8; DATA="stdlib:max_bytes=300000"
else
    STEPS=300; EVERY=100; LENGTHS="64 256 1024"; NEW=16; REPEATS=5; TOKENS=64; DATA="stdlib:max_bytes=4000000"
fi
RUN="$OUT/runs"
STEPS_JSON="$OUT/steps.jsonl"
: > "$STEPS_JSON"
failed=0

step() {  # step NAME COMMAND...: run it, log its output, record exit code and seconds
    local name="$1"; shift
    local start end rc
    case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
    start=$(date +%s.%N)
    echo "== $name: $*"
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    tail -n 5 "$OUT/$name.log"
    python -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "rc": int(sys.argv[2]),
        "seconds": round(float(sys.argv[4]) - float(sys.argv[3]), 2), "log": sys.argv[5]}))' \
        "$name" "$rc" "$start" "$end" "$OUT/$name.log" >> "$STEPS_JSON"
    [ "$rc" = 0 ] || { echo "== $name FAILED (exit $rc)"; failed=1; }
}

step tests env DEQSEQ_TEST_DEVICE="$DEVICE" python -m pytest -m device tests -q -p no:cacheprovider
step train python train.py run.device="$DEVICE" run.amp=bf16 run.out_dir="$RUN" run.name=bf16 \
    data.source="$DATA" train.max_steps="$STEPS" train.eval_every="$EVERY" train.save_every="$EVERY" tracking.mode=disabled
step equivalence python generate.py --checkpoint "$RUN/bf16/last.pt" --device "$DEVICE" --prompt "def " \
    --max-new-tokens "$TOKENS" --temperature 0 --check-equivalence
# shellcheck disable=SC2086  # LENGTHS is a list of numbers
step generation python bench/generation.py --device "$DEVICE" --lengths $LENGTHS --new "$NEW" \
    --out "$OUT/generation.json"
step solvers python bench/solvers.py --device "$DEVICE" --repeats "$REPEATS" --out "$OUT/solvers.json"

python - "$OUT" "$failed" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
summary = {"env": json.loads((out / "env.json").read_text()), "ok": sys.argv[2] == "0", "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(f"device_check: {'ok' if summary['ok'] else 'FAILED'}; wrote {out / 'summary.json'}")
EOF
exit "$failed"
