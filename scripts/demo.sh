#!/usr/bin/env bash
# The embedded default: dvc repro runs synth (synthetic multi-domain data) -> shards -> models ->
# evaluation. Idempotent: unchanged data and stages are reused; only what changed is recomputed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
export DVC_NO_ANALYTICS=1 PATH="$PWD/$BIN:$PATH"
start=$(date +%s)

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "make demo runs dvc inside a git checkout; clone the repository (git clone ...) and retry" >&2
  exit 2
fi
dvc repro                  # the synthetic domains are the `synth` stage's output (data/synth)
echo
echo "== results (all metrics: dvc metrics show; plots: dvc plots show)"
"$BIN/python" - <<'PY'
import json, pathlib
for model in sorted(pathlib.Path("artifacts/models").glob("*/metrics.json")):
    ev = json.loads(model.read_text()).get("eval")
    if ev:
        print(f"{model.parent.name:>18}: same-domain mAP {100 * ev['same_domain_mAP']:5.1f}   "
              f"cross-domain (target) mAP {100 * ev.get('cross_domain_mAP', float('nan')):5.1f}")
summary = json.loads(pathlib.Path("artifacts/evaluate/metrics.json").read_text())["summary"]
for dataset, per_model in summary.items():
    for name, v in per_model.items():
        print(f"{dataset:>14} {name:>18}: mAP {100 * v['mAP']:5.1f}  rank-1 {100 * v['rank1']:5.1f}  "
              f"mINP {100 * v['mINP']:5.1f}")
PY
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "report: $PWD/artifacts/evaluate/report.html (Markdown: artifacts/evaluate/report.md)"
echo "lineage: reidflow lineage show artifacts/evaluate"
