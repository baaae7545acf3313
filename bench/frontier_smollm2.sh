#!/usr/bin/env bash
# The SmolLM2-135M frontier (issue 14, item 4) and its MOX variants (issue 17), run as shards that
# survive a stop: one `mox experiment frontier` invocation per (seed, method), each frontier.json kept in
# SHARDS, and the merged table written by `mox report` (docs/frontier.md, "Shards").
#
#   bash bench/frontier_smollm2.sh [WORK] [SHARDS]
#     WORK    heavy workspace: SmolLM2, fine-tunes, runs, evaluations (default runs/frontier-smollm2-work)
#     SHARDS  one frontier.json per finished shard (default docs/data/frontier-smollm2, small files)
#
# A shard whose file is in SHARDS is skipped (s<seed>-all.json covers every method of that seed), so
# running the script again continues where it stopped; within a shard, the workspace's own cache does the
# same. The protocol is docs/frontier.md's SmolLM2 section, fixed before any result: the preset
# configs/experiments/tofu-smollm2-mini.yaml, lr 5e-5 only, seeds 0-2, stopping epochs 3 and 5, α 2 and 4,
# then the variant list fixed in docs/frontier.md. On 2 CPU cores: the two fine-tunes about 35 min, a
# shard 14-19 min, a variant shard about 1 h. Set PYTHON to the interpreter (default python); OUT and BASE
# override WORK/workspace and WORK/smollm2 (the workspace keys its cache on these paths as written, so an
# interrupted frontier continues only from the same two paths).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/frontier-smollm2-work}
SHARDS=${2:-docs/data/frontier-smollm2}
PY=${PYTHON:-python}
DATA=$(realpath "${DATA:-../shared/data/tofu}")
mkdir -p "$WORK" "$SHARDS"
OUT=${OUT:-$WORK/workspace}
BASE=${BASE:-$WORK/smollm2}
[ -f "$BASE/model.safetensors" ] || $PY -m mox_unlearn.cli models import-smollm2 --out "$BASE"

frontier() {  # frontier SHARD_FILE key=value...: run one shard unless its file exists, then keep its json
  local file=$1
  shift
  if [ -f "$SHARDS/$file" ]; then
    echo "=== $file: done before"
    return
  fi
  echo "=== $file: $(date -u +%FT%TZ)"
  $PY -m mox_unlearn.cli experiment frontier --config configs/experiments/tofu-smollm2-mini.yaml \
    --out "$OUT" base="$BASE" data="$DATA" \
    "frontier_lrs=[5e-5]" "frontier_epochs=[3,5]" "$@"
  cp "$OUT/frontier/frontier.json" "$SHARDS/$file.tmp" && mv "$SHARDS/$file.tmp" "$SHARDS/$file"
  # merged at once: a shard that is not of the same frontier as the others (say, fine-tunes that came out
  # different on another CPU) stops the script here, not after hours
  $PY -m mox_unlearn.cli report "$SHARDS"/*.json --out "$WORK/merged-so-far" > /dev/null
}

VARIANTS='[{keep_fraction: 0.2}, {keep_fraction: 0.5}, {drop_rate: 0.5}, {only: mlp}, {skip: "embed|norm|lm_head"}, {alpha_by_depth: "linear:0.5,1.5"}]'
for seed in 0 1 2; do
  for method in mox npo graddiff simnpo ga; do
    [ -f "$SHARDS/s$seed-all.json" ] || frontier "s$seed-$method.json" "frontier_seeds=[$seed]" "frontier_methods=[$method]"
  done
done
for seed in 0 1 2; do
  frontier "s$seed-mox-variants.json" "frontier_seeds=[$seed]" "frontier_methods=[mox]" "frontier_variants=$VARIANTS"
done
# issue 14's table (plain MOX and the baselines), then with issue 17's variants
$PY -m mox_unlearn.cli report $(ls "$SHARDS"/*.json | grep -v -- -variants.json) --out "$WORK/merged-plain"
$PY -m mox_unlearn.cli report "$SHARDS"/*.json --out "$WORK/merged-variants"
echo "=== merged: $WORK/merged-plain/frontier.md, $WORK/merged-variants/frontier.md $(date -u +%FT%TZ)"
