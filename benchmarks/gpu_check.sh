#!/usr/bin/env bash
# The GPU check, one short script for a session that has a CUDA GPU (about 6-10 minutes on one H200):
#   1. the tests marked gpu (tests/test_gpu.py: finetune device=cuda + bf16, predict --device cuda, serve --device cuda)
#   2. a bf16 fine-tune and a TPP run with device=$DEVICE on the shared BreastMNIST data and backbone
#   3. tpp predict --device $DEVICE over PNGs of the test split, timed
#   4. tpp serve --device $DEVICE: one request, its probabilities against the offline CSV (must agree)
#   5. throughput: benchmarks/serving.py with the CPU and $DEVICE side by side (28 px), and $DEVICE at 224 px
#   6. only when PARTS names it (resnet): the suite's ResNet-18 (28) cells (benchmarks/suite_resnet.yaml) on the
#      GPU for RESNET_MIN minutes (default 5); cells under $OUT/suite_cache/suite_resnet/cells (see that file)
# Results: $OUT/gpu_check.json (every step's exit code, wall time and numbers) beside the serving reports.
#
#   bash benchmarks/gpu_check.sh                                    # on the GPU machine
#   DEVICE=cpu TINY=1 OUT=/tmp/gpu_check_dry bash benchmarks/gpu_check.sh   # the same commands on a CPU, tiny budgets
#   PARTS="tests train predict serve" bash benchmarks/gpu_check.sh; PARTS=throughput bash benchmarks/gpu_check.sh
#                                       # in two commands (e.g. a device tool that allows 10 minutes a command)
#
# Settings (environment): DEVICE (cuda), PYTHON (python), BACKBONE, DATA (default ../shared or ./shared),
# OUT (benchmarks/results/gpu_check), WORK (benchmarks/.cache/gpu_check, kept between parts), PARTS (all five:
# tests train predict serve throughput), MIXED (bf16: train.mixed_precision of the training runs; a CPU without
# native bf16 takes ~20x longer per step: MIXED=no there), TINY=1 (2 steps, few images, 32-px "large" size),
# TIME_SCALE (1: multiplies every step's time limit, a hang guard sized for the GPU machine; e.g. 4 on a slow CPU).
set -u -o pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
SHARED="$REPO/../shared"; [ -d "$REPO/shared" ] && SHARED="$REPO/shared"
DEVICE="${DEVICE:-cuda}"
MIXED="${MIXED:-bf16}"
PYTHON="${PYTHON:-python}"
BACKBONE="${BACKBONE:-$SHARED/models/mae-vit-tiny-med}"
DATA="${DATA:-$SHARED/data}"
OUT="${OUT:-$REPO/benchmarks/results/gpu_check}"
WORK="${WORK:-$REPO/benchmarks/.cache/gpu_check}"
PARTS=" ${PARTS:-tests train predict serve throughput} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
if [ "${TINY:-0}" = 1 ]; then
  STEPS=2; IMAGES=16; LARGE=32; BENCH=(--quick --repeats 2 --seconds 2 --rounds 1 --sites 8 --clients 2 --site-steps 2)
else
  STEPS=200; IMAGES=156; LARGE=224; BENCH=(--quick --sites 8)
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" TPP_DATA_ROOT="$DATA" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT" "$WORK"
STEPS_LOG="$WORK/steps.jsonl"; touch "$STEPS_LOG"
FT="recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml"
TP="recipes/configs/breast_us/mae_vit_tiny_lora_tpp.yaml"
COMMON=("backbone.path=$BACKBONE" "data.root=$DATA" "device=$DEVICE" "train.max_steps=$STEPS")

step() {  # step NAME TIMEOUT_S COMMAND...: run it, log output to $WORK/NAME.log, record rc and wall seconds
  local name="$1" limit=$(( $2 * ${TIME_SCALE:-1} )); shift 2
  local start=$SECONDS
  echo "== $name: $*" >&2
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  grep -v "\"step\": \"$name\"" "$STEPS_LOG" > "$STEPS_LOG.tmp"; mv "$STEPS_LOG.tmp" "$STEPS_LOG"  # a rerun replaces
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - start))}" >> "$STEPS_LOG"
  [ $rc -eq 0 ] || { echo "   $name failed (rc $rc); last lines of $WORK/$name.log:" >&2; tail -5 "$WORK/$name.log" >&2; }
  return 0
}

# 1. the gpu-marked tests (on a CPU they are skipped: the command still runs)
part tests && step tests 420 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
# 2. training on the device: bf16 fine-tune, TPP
part train && step finetune 300 "$PYTHON" -m tpp.cli run finetune --config "$FT" "${COMMON[@]}" "train.mixed_precision=$MIXED" \
  "output_dir=$WORK/finetune" --overwrite
part train && step tpp 300 "$PYTHON" -m tpp.cli run tpp --config "$TP" "${COMMON[@]}" "train.mixed_precision=$MIXED" \
  "output_dir=$WORK/tpp" --overwrite
# 3. offline prediction on the device over PNGs of the test split (needs the fine-tuned site of part train)
part predict && step images 120 "$PYTHON" -c "
import sys, numpy as np
from pathlib import Path
from PIL import Image
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for i, im in enumerate(np.load(sys.argv[2])['test_images'][:int(sys.argv[3])]):
    Image.fromarray(im).save(out / f'{i:04d}.png')
" "$WORK/pngs" "$DATA/medmnist/breastmnist.npz" "$IMAGES"
part predict && step publish 120 "$PYTHON" -m tpp.cli adapters publish "$WORK/finetune" "$WORK/store" --site gpu_site
part predict && step predict 300 "$PYTHON" -m tpp.cli predict --backbone "$BACKBONE" --store "$WORK/store" --site gpu_site \
  "$WORK/pngs" --out "$WORK/predict.csv" --device "$DEVICE"
part predict && step predict_bf16 300 "$PYTHON" -m tpp.cli predict --backbone "$BACKBONE" --store "$WORK/store" --site gpu_site \
  "$WORK/pngs" --out "$WORK/predict_bf16.csv" --device "$DEVICE" --precision bf16
# 4. the service on the device: one request of 8 images, compared with the offline CSV of part predict
if part serve; then
PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PYTHON" -m tpp.cli serve --backbone "$BACKBONE" --store "$WORK/store" --port "$PORT" --device "$DEVICE" \
  > "$WORK/serve_server.log" 2>&1 &
SERVER=$!
step serve 240 "$PYTHON" -c "
import csv, json, sys, time, urllib.request, uuid
url, folder, offline, out = sys.argv[1:5]
for _ in range(900):
    try:
        urllib.request.urlopen(url + '/healthz', timeout=5); break
    except OSError:
        time.sleep(0.2)
names = [f'{i:04d}.png' for i in range(8)]
boundary = uuid.uuid4().hex
body = b''.join(f'--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{n}\"\r\n\r\n'.encode()
                + open(f'{folder}/{n}', 'rb').read() + b'\r\n' for n in names) + f'--{boundary}--\r\n'.encode()
req = urllib.request.Request(url + '/v1/sites/gpu_site/predict', body,
                             {'Content-Type': f'multipart/form-data; boundary={boundary}'})
start = time.perf_counter()
served = json.load(urllib.request.urlopen(req, timeout=600))
seconds = time.perf_counter() - start
rows = {r['image'].rsplit('/', 1)[-1]: r for r in csv.DictReader(open(offline))}
diff = max(abs(float(rows[p['file']]['prob_' + k]) - v) for p in served['predictions'] for k, v in p['probabilities'].items())
json.dump({'served_vs_offline_max_abs_diff': diff, 'request_s': seconds, 'images': len(names)}, open(out, 'w'))
print('served vs offline: max |diff|', diff)
sys.exit(0 if diff <= 1e-5 else 1)
" "http://127.0.0.1:$PORT" "$WORK/pngs" "$WORK/predict.csv" "$WORK/serve.json"
kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
fi
# 5. throughput: CPU and the device side by side at 28 px (bank + service), the device alone at $LARGE px
part throughput && step serving_28px 420 "$PYTHON" benchmarks/serving.py --device "cpu,$DEVICE" "${BENCH[@]}" \
  --backbone "$BACKBONE" --data-root "$DATA" --work "$WORK/serving" --out "$OUT/serving_28px"
part throughput && step "serving_${LARGE}px" 420 "$PYTHON" benchmarks/serving.py --device "$DEVICE" --input-size "$LARGE" --no-service \
  "${BENCH[@]}" --backbone "$BACKBONE" --data-root "$DATA" --work "$WORK/serving" --out "$OUT/serving_${LARGE}px"
# 6. the suite's ResNet-18 cells on the device (opt-in: PARTS=resnet); a cell unfinished at the budget pauses
part resnet && step resnet $(( ${RESNET_MIN:-5} * 60 + 600 )) "$PYTHON" benchmarks/suite.py --grid benchmarks/suite_resnet.yaml \
  --budget-min "${RESNET_MIN:-5}" --no-memory --data-root "$DATA" --cache "$OUT/suite_cache" --out "$OUT/suite_resnet"

"$PYTHON" - "$WORK" "$OUT" "$DEVICE" "$LARGE" <<'EOF'
import csv, json, sys, time
from pathlib import Path

import torch

work, out, device, large = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
wall = {s["step"]: s["wall_s"] for s in steps}
predict_rows = list(csv.DictReader(open(work / "predict.csv"))) if (work / "predict.csv").is_file() else []
bf16_rows = list(csv.DictReader(open(work / "predict_bf16.csv"))) if (work / "predict_bf16.csv").is_file() else []
probs = lambda rows: [float(r[k]) for r in rows for k in r if k.startswith("prob_")]  # noqa: E731
summary = {
    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "device": device,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__,
    "steps": steps,
    "all_passed": all(s["rc"] == 0 for s in steps),
    "tests_log_tail": (work / "tests.log").read_text().strip().splitlines()[-1:] if (work / "tests.log").is_file() else [],
    "finetune": read(work / "finetune" / "metrics.json"),
    "tpp": read(work / "tpp" / "metrics.json"),
    "predict": {"images": len(predict_rows), "wall_s_including_start": wall.get("predict"),
                "bf16_vs_fp32_max_abs_diff": max((abs(a - b) for a, b in zip(probs(predict_rows), probs(bf16_rows))),
                                                 default=None)},
    "serve": read(work / "serve.json"),
    "serving_28px": (read(out / "serving_28px" / "serving.json") or {}).get("devices"),
    f"serving_{large}px": (read(out / f"serving_{large}px" / "serving.json") or {}).get("devices"),
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: summary[k] for k in ("device", "gpu", "all_passed", "steps")}, indent=1))
EOF
echo "results: $OUT/gpu_check.json (logs in $WORK)" >&2
