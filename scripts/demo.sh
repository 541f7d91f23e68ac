#!/usr/bin/env bash
# The embedded default: synthetic multi-domain data -> dvc repro (shards, models, evaluation).
# Idempotent: unchanged data and stages are reused; only what changed is recomputed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
export DVC_NO_ANALYTICS=1 PATH="$PWD/$BIN:$PATH"
start=$(date +%s)

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "make demo runs dvc inside a git checkout; clone the repository (git clone ...) and retry" >&2
  exit 2
fi
reidflow synth --output data/synth --reuse
dvc add -q data            # data.dvc records the raw data's md5 (unchanged when the bytes are the same)
dvc repro
echo
echo "== metrics (dvc metrics show)"
dvc metrics show --precision 3 2>/dev/null | grep -E "Path|summary|same_domain_mAP|cross_domain_mAP" | head -40 || true
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "report: $PWD/artifacts/evaluate/report.html (Markdown: artifacts/evaluate/report.md)"
echo "lineage: reidflow lineage show artifacts/evaluate"
