#!/usr/bin/env bash
# Short, prepared CUDA check (issue 15): run it on a machine with one GPU, from the repository root:
#     bash benchmarks/gpu_check.sh [OUT]          (default OUT: reports/gpu_check)
# 1. every experiment's paper profile resolves and validates with device=cuda (no run);
# 2. a Tab. 1 style grid (benchmarks/gpu/tab1_resnet18.yaml: ResNet-18, 32 px, U in {1, 4},
#    GIA-O and GIA-L with its generator trained on the GPU, 2 seeds, 300 iterations) runs end to
#    end with device=cuda; expected well under 8 minutes on one H100/H200-class GPU;
# 3. prints seconds per attack iteration (median over the runs) for each attack.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-reports/gpu_check}"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
for name in $("$PY" -m gradleak experiment list | awk '/^[a-z]/ {print $1}'); do
  "$PY" -m gradleak experiment show "$name" --profile paper device=cuda > /dev/null
done
echo "paper profiles: all validate with device=cuda"
start=$(date +%s)
"$PY" -m gradleak experiment run benchmarks/gpu/tab1_resnet18.yaml --out "$OUT" --quiet device=cuda
echo "grid wall time: $(( $(date +%s) - start )) s"
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
per: dict[str, list[float]] = {}
for f in Path(sys.argv[1]).glob("runs/*/result.json"):
    r = json.loads(f.read_text())
    cfg = r["config"]
    assert cfg["device"].startswith("cuda"), f
    its = sum(r.get("iterations_used") or [r["iterations"]])
    per.setdefault(cfg["attack"]["name"], []).append(r["attack_seconds"] / max(1, its))
for name, v in sorted(per.items()):
    print(f"{name}: median {statistics.median(v) * 1000:.1f} ms per attack iteration over {len(v)} runs")
PYEOF
"$PY" -m gradleak report "$OUT" > /dev/null && echo "report: $OUT/index.html"
