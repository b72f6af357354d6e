#!/usr/bin/env bash
# The one script a session with a GPU machine runs (issue #17), from the repository root:
#     bash benchmarks/gpu_run.sh            # through the device tool: run(command="bash benchmarks/gpu_run.sh", timeout_s=540)
# That machine has torch but no Ray and no MLflow, so this runs only what needs neither: the CUDA
# tests of ssl_models, then benchmarks/gpu_step.py (training-step throughput and the GPU probes),
# with an nvidia-smi utilisation sampler beside it. Everything lands under $OUT; it ends inside ~7 minutes.
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
echo "writing to $OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/env.txt"

nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
  --format=csv -lms 500 > "$OUT/utilization.csv" 2>&1 &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

# --noconftest: the suite's conftest starts Ray and MLflow, which this machine does not have.
timeout 90 $PY -m pytest -q --noconftest -p no:cacheprovider -rs tests/ssl_models > "$OUT/tests.txt" 2>&1
echo "tests exit $? ($(tail -1 "$OUT/tests.txt"))"

timeout 360 $PY benchmarks/gpu_step.py --budget-s 300 --out "$OUT/gpu_step.json" 2>&1 | tee "$OUT/gpu_step.txt"
echo "gpu_step exit ${PIPESTATUS[0]}"

kill $SAMPLER 2>/dev/null
$PY - "$OUT/utilization.csv" <<'PYEOF' | tee "$OUT/utilization_summary.txt"
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))[1:]
util = [float(r[1].split()[0]) for r in rows if len(r) > 1 and r[1].strip().split()[0].replace(".", "").isdigit()]
if util:
    print(f"GPU utilisation over {len(util)} samples: mean {sum(util) / len(util):.0f}%, max {max(util):.0f}%")
PYEOF
