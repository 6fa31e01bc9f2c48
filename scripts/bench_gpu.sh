#!/usr/bin/env bash
# scripts/bench_gpu.sh: every GPU measurement this project needs, in one go, ending with a Markdown report.
#
# What it measures (bf16 autocast, channels_last, batch 256, 224 px, cudnn.benchmark on; each figure beside
# its baseline from the same process):
#   1. first, the kernel parity check (scnet-bench kernels, on the first model): one training step by the
#      shipped kernels (on CUDA the fused Triton ones), by the lean kernels and by the plain layers under bf16
#      autocast, each against the plain layers' float64 step (relative L2 errors of the logits and
#      gradients), whether the shipped step repeats bit for bit, and SC-ResNeXt's grouped 3x3s timed as two
#      convolutions against one of twice the groups (the command's default sizes: its step at batch 16, the
#      grouped 3x3s at batch 256);
#   2. training img/s of scnet50, scnet50_v1d, scnet101 and sc_resnext50_32x4d, each against its own
#      baseline (resnet50, resnet50d, resnet101, resnext50_32x4d: scnet.models.BASELINES), on synthetic
#      input, eager and torch.compile'd (scnet-bench model --train), with peak memory and the activations
#      saved for backward per image; the same for the first model's plain layers (MODEL:layerwise) and its
#      lean kernels without the Triton ones (MODEL:lean), against the same baseline, so that each kernel is
#      shown against the code it replaces; and a per-kernel table of the first model's eager training step
#      and its baseline's (torch.profiler; json/train-eager-MODEL.kernels.md, included in the report);
#   3. inference img/s of the same models (scnet-bench model --infer), eager and compiled;
#   4. who waits, on generated ImageNet-sized JPEGs (500x375 / 375x500, quality 90, ~100 kB each;
#      python -m scnet.data.synthetic): the input path's img/s (files to normalised float images on the GPU)
#      with the JPEGs decoded in the loader workers (data.decode=cpu) and on the GPU (data.decode=gpu: nvjpeg)
#      at 1, 4 and all-cores workers, beside torchvision's ImageFolder + PIL, and a short training loop of the
#      first model fed by each: its img/s and the share of its time spent waiting for data (scnet-bench data);
#   5. two 300-step scnet-train runs of the first model (bf16, channels_last, workers = all cores) on those
#      JPEGs, one with data.decode=cpu and one with data.decode=gpu: img/s and the share of time spent waiting
#      for data, beside step 2's synthetic-input figure.
# It ends by printing the report (device, torch, date, one row per measurement, the goals of
# BENCHMARKS.md) and writes it, every raw JSON and every step's log into the output folder.
#
# How long: about 8 minutes on one H100/H200 with 16 CPU cores, never more than ~9: --budget (default 480 s)
# skips a step whose estimate no longer fits (the report says so) and stops a running step 60 s after it. On
# an H200 (2026-12-04) the steps up to scnet50's compiled training took ~7.5 minutes with inductor's cache
# cold (BENCHMARKS.md, "GPU run"), before the kernel check (~1 minute: Triton compiles its kernels on first
# use) came first; the rest (inference, the other compiled models) is then skipped: run it next on the same
# machine with --only, where the cache is warm. Since the loader compares both decode paths and the training run
# is made once per data.decode (~3.5 more minutes, estimated, not yet measured), the default budget may skip the
# second training run too; the JPEG steps alone take ~6 minutes: --only 'jpeg-gen loader train-run-*'.
#
# How to run, on a GPU machine, from the repository root:
#   pip install -e .
#   bash scripts/bench_gpu.sh                    # writes bench-gpu-out/<UTC date-time>/
#   bash scripts/bench_gpu.sh --out /tmp/bench   # a given folder, which must be missing or empty
#   bash scripts/bench_gpu.sh --dry-run          # the same steps on CPU at tiny sizes (~2 min on 2 cores)
# Without installing (torch, torchvision, timm and the other dependencies present): PYTHON=python3 bash
# scripts/bench_gpu.sh; the checkout is put first on PYTHONPATH either way, so its code is what is measured.
#
# Options:
#   --out DIR       output folder; must be missing or empty (default: bench-gpu-out/<UTC date-time>[-dry],
#                   a new folder each run, so nothing is ever overwritten)
#   --dry-run       CPU, batch 2, 112 px, 1 warm-up + 1 step (1 profiled), compile backend "eager", one model
#                   (and its :lean row, eager only), the kernel check in float32 (grouped 3x3s at batch 2,
#                   32 px), a tiny JPEG set, the loader at 1 and 2 workers (gpu decoding: the CPU decoder
#                   standing in) and two 2-step training runs: the same commands as the real run, fewer and
#                   smaller
#   --models LIST   SC models, comma- or space-separated (default: scnet50,scnet50_v1d,scnet101,
#                   sc_resnext50_32x4d; dry run: scnet50); the first one is also the training run's model and
#                   the one whose kernel check, :layerwise and :lean rows and kernel table are measured
#   --baseline M    compare every model with M (default: each with its own baseline, scnet.models.BASELINES)
#   --budget S      seconds for the whole run, 0 = no limit (default: 480; dry run: 900). The skip decisions
#                   use an H100's step times, also in a dry run
#   --only GLOBS    run only the steps whose names match one of these space-separated globs, e.g. after a
#                   run that skipped some for time: --only 'train-compiled-* infer-compiled-*'. Step names:
#                   kernels, {train,infer}-{eager,compiled}-MODEL (a suffix written with '.', not ':', so
#                   that file names have no colon: train-eager-scnet50.lean), jpeg-gen, loader, train-run-cpu,
#                   train-run-gpu (the last three need jpeg-gen; 'train-run-*' selects both runs); the
#                   preflight always runs
#   --data DIR      where the JPEGs go; must be missing or empty (default: OUT/jpeg). Put it outside OUT
#                   when OUT is copied back from the GPU machine: the set is 7-8 GB
#   --keep-data     keep the generated JPEGs and the training run's checkpoints (default: removed at exit)
# The interpreter is ${PYTHON:-the one of the installed scnet-bench script, else python}; with PYTHON set,
# the commands run as "$PYTHON -m scnet.cli.<name>", otherwise through the installed console scripts.
#
# Output folder: report.md, steps.tsv (step, status, seconds), env.json, json/<step>.json (raw results;
# json/kernels.json: the kernel check's),
# json/train-eager-MODEL.kernels.md (the kernel table), logs/<step>.log, train-run-cpu/ and train-run-gpu/
# (config.yaml, metrics.jsonl, TensorBoard events).
# Exit status: 0 when every step ran or was skipped (time, --only); 1 when a step failed (each is named on
# stderr and its log's end shown; the other steps still run and the report is still printed); 2 for bad
# usage or an output or data folder that is not empty.

set -euo pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }
die() {
    echo "bench_gpu.sh: error: $2" >&2
    exit "$1"
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# This checkout's code is what is measured, installed or not (with an editable install it is the same code).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT=""
DRY_RUN=0
MODELS=""
BASELINE="" # empty: each model against its own baseline (scnet-bench's default)
BUDGET=""
ONLY=""
DATA=""
KEEP_DATA=0
while (($#)); do
    case $1 in
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --models) MODELS=${2:?--models needs a list}; shift 2 ;;
    --baseline) BASELINE=${2:?--baseline needs a model name}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --only) ONLY=${2:?--only needs step names}; shift 2 ;;
    --data) DATA=${2:?--data needs a folder}; shift 2 ;;
    --keep-data) KEEP_DATA=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die 2 "unknown argument: $1 (see --help)" ;;
    esac
done
[[ -z $BUDGET || $BUDGET =~ ^[0-9]+$ ]] || die 2 "--budget wants whole seconds, got $BUDGET"

# The machine's CPUs (affinity), whatever OMP_NUM_THREADS says: GNU nproc would report that instead.
NPROC=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
DEFAULT_MODELS=scnet50,scnet50_v1d,scnet101,sc_resnext50_32x4d
# ------------------------------------------------------------------------------------------- sizes
# The real run and the dry run differ only in these variables; every command below is shared.
if ((DRY_RUN)); then
    DEVICE=cpu
    MODELS=${MODELS:-scnet50}
    BUDGET=${BUDGET:-900} # never binding; it puts every step under timeout, as in the real run
    BATCH=2 IMAGE=112 WARMUP=1 STEPS=1 KERNEL_STEPS=1 COMPILE_BACKEND=eager
    # The kernel check in float32 (--amp none) at tiny sizes: ~10 s.
    KERNEL_CHECK_SIZES=(--batch-size 2 --image-size 112 --conv-batch-size 2 --conv-image-size 32)
    KERNEL_CHECK_AMP=none
    # The first model's other kernels: one eager row shows the command works (each row is a process, ~7 s here).
    EAGER_SUFFIXES=(:lean) COMPILED_SUFFIXES=()
    TRAIN_STEPS=2 LOG_EVERY=1 CLASSES=2 VAL_PER_CLASS=1
    # One warm-up and one measured batch of the two the JPEG set holds, for each worker count.
    LOADER_COUNTS=(--warmup 1 --batches 1)
    LOADER_REPEATS=1
else
    DEVICE=cuda
    MODELS=${MODELS:-$DEFAULT_MODELS}
    BUDGET=${BUDGET:-480}
    BATCH=256 IMAGE=224 WARMUP=5 STEPS=20 KERNEL_STEPS=3 COMPILE_BACKEND=inductor
    # The kernel check at scnet-bench kernels' sizes, under the run's autocast (set below).
    KERNEL_CHECK_SIZES=() KERNEL_CHECK_AMP=""
    # The first model's other kernels (scnet-bench's name suffixes): the plain layers and the lean ones.
    EAGER_SUFFIXES=(:layerwise :lean) COMPILED_SUFFIXES=(:layerwise :lean)
    TRAIN_STEPS=300 LOG_EVERY=50 CLASSES=10 VAL_PER_CLASS=50
    # scnet-bench data's default counts, per worker count: each worker makes whole batches, so the first batches
    # arrive together: one warm-up batch per worker, then three rounds of them measured. One pass each: the
    # 2 decode paths x 3 worker counts (+ torchvision's, + the training loops) take ~2 minutes already.
    LOADER_COUNTS=()
    LOADER_REPEATS=1
fi
# The loader's worker counts: 1, 4 and all cores, none above the cores, each once.
LOADER_WORKERS=()
for workers in 1 4 "$NPROC"; do
    if ((workers <= NPROC)) && [[ " ${LOADER_WORKERS[*]} " != *" $workers "* ]]; then LOADER_WORKERS+=("$workers"); fi
done
AMP=bf16
KERNEL_CHECK_AMP=${KERNEL_CHECK_AMP:-$AMP}
THREADS=$NPROC
if ((DRY_RUN)); then
    # One intra-op thread per process: on a small, shared CPU, OpenMP's spinning barriers make multi-threaded
    # convolutions of these tiny tensors 10-50x slower and the dry run's time a lottery.
    THREADS=1
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
read -r -a MODEL_LIST <<<"${MODELS//,/ }"
((${#MODEL_LIST[@]})) || die 2 "--models is empty"
TRAIN_MODEL=${MODEL_LIST[0]}
# The names the preflight checks (and pairs with their baselines): a dry run also checks the real run's.
CHECK_MODELS=("${MODEL_LIST[@]}" "$TRAIN_MODEL:layerwise" "$TRAIN_MODEL:lean")
if ((DRY_RUN)); then read -r -a CHECK_MODELS <<<"${CHECK_MODELS[*]} ${DEFAULT_MODELS//,/ }"; fi
# One epoch of exactly TRAIN_STEPS steps: the trainer has no step limit, so the training split is sized
# for it (and the loader benchmark reads no more than one pass over it: its default counts are cut to fit).
TRAIN_IMAGES=$((TRAIN_STEPS * BATCH))
PER_CLASS=$(((TRAIN_IMAGES + CLASSES - 1) / CLASSES))
# Seconds a step takes on an H100/H200 with 16 cores, rounded up from the H200 run of 2026-12-04 (the budget's
# skip decision; BENCHMARKS.md). The first compiled step compiles resnet50 too, cold: ~180 s.
# The loader (not yet measured on a GPU): 3 worker counts x (2 decode paths + torchvision, + 2 training loops),
# ~5 s each, the model built and the process started. EST_TRAIN_RUN: each of the two (data.decode=cpu, gpu).
EST_TRAIN_EAGER=30 EST_INFER_EAGER=20 EST_JPEG=90 EST_LOADER=100 EST_TRAIN_RUN=90
EST_KERNEL_TABLE=15 # the kernel table's profiled steps, on top of the first model's eager training
EST_KERNELS=60      # the kernel check: Triton compiles its kernels on first use; the grouped 3x3s at batch 256
EST_TRAIN_COMPILED=200 EST_INFER_COMPILED=60
GRACE=60 # a running step is stopped this long after the budget

# ------------------------------------------------------------------------------------------- commands
PY=${PYTHON:-}
USE_SCRIPTS=0
if [[ -z $PY ]] && script=$(command -v scnet-bench) && command -v scnet-train >/dev/null; then
    # The installed console scripts, and the interpreter they run on (their #! line), so that the
    # report's torch version is the one measured.
    read -r shebang <"$script" || true
    if [[ $shebang == '#!/'* && -x ${shebang#\#!} ]]; then
        PY=${shebang#\#!}
        USE_SCRIPTS=1
    fi
fi
PY=${PY:-python}
if ((USE_SCRIPTS)); then
    BENCH=(scnet-bench)
    TRAIN=(scnet-train)
else
    BENCH=("$PY" -m scnet.cli.bench)
    TRAIN=("$PY" -m scnet.cli.train)
fi
REPORT=("$PY" "$REPO/scripts/bench_gpu_report.py")

# ------------------------------------------------------------------------------------------- output folder
if [[ -z $OUT ]]; then
    OUT=bench-gpu-out/$(date -u +%Y%m%d-%H%M%S)
    if ((DRY_RUN)); then OUT+=-dry; fi
fi
if [[ -e $OUT ]]; then
    [[ -d $OUT ]] || die 2 "$OUT exists and is not a folder"
    [[ -z $(ls -A "$OUT") ]] || die 2 "$OUT is not empty (give a new or empty folder, or leave --out out)"
fi
if [[ -n $DATA && -e $DATA ]]; then
    [[ -d $DATA && -z $(ls -A "$DATA") ]] || die 2 "$DATA exists and is not an empty folder"
fi
mkdir -p "$OUT/json" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
DATA=${DATA:-$OUT/jpeg}
[[ $DATA == /* ]] || DATA=$PWD/$DATA
STEPS_TSV=$OUT/steps.tsv
: >"$STEPS_TSV"

cleanup() {
    if ((!KEEP_DATA)); then
        rm -rf -- "$DATA"
        rm -f -- "$OUT"/train-run-*/*.pth
    fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------- steps
FAILED=()

log_line() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STEPS_TSV"; }
succeeded() { grep -q "^$1"$'\t'"ok"$'\t' "$STEPS_TSV"; }

# run_step NAME ESTIMATE_S COMMAND...: run it with its output in logs/NAME.log, record the outcome.
run_step() {
    local name=$1 estimate=$2 start=$SECONDS rc=0 limit=0
    shift 2
    if ! selected "$name"; then
        record "$name" "skipped: not in --only" 0
        return 0
    fi
    if ((BUDGET > 0)); then
        if ((start + estimate > BUDGET)); then
            log_line "$name: skipped, needs ~${estimate}s and $((BUDGET - start))s of the ${BUDGET}s budget are left"
            record "$name" "skipped: time budget" 0
            return 0
        fi
        limit=$((BUDGET + GRACE - start))
    fi
    log_line "$name ..."
    if ((limit > 0)); then
        timeout -k 10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
    else
        "$@" >"$OUT/logs/$name.log" 2>&1 || rc=$?
    fi
    local took=$((SECONDS - start))
    if ((rc == 0)); then
        log_line "$name: ok (${took}s)"
        record "$name" ok "$took"
    else
        local why="failed (exit $rc)"
        if ((limit > 0 && (rc == 124 || rc == 137))); then why="failed (stopped after ${limit}s: over the budget)"; fi
        record "$name" "$why" "$took"
        FAILED+=("$name")
        {
            echo "bench_gpu.sh: step $name $why; the end of $OUT/logs/$name.log:"
            tail -n 20 "$OUT/logs/$name.log" | sed 's/^/    /'
        } >&2
    fi
}

# True when --only is empty or one of its globs matches the step name.
selected() {
    [[ -z $ONLY ]] && return 0
    local glob globs
    read -r -a globs <<<"$ONLY"
    for glob in "${globs[@]}"; do
        # shellcheck disable=SC2053 # a glob on purpose
        [[ $1 == $glob ]] && return 0
    done
    return 1
}

# A step that needs another one's output: skipped (and said so) when that one did not succeed.
needs() {
    local name=$1 dependency=$2
    succeeded "$dependency" && return 0
    selected "$name" || { record "$name" "skipped: not in --only" 0; return 1; }
    log_line "$name: skipped, $dependency did not succeed"
    record "$name" "skipped: needs $dependency" 0
    return 1
}

bench_model() { # bench_model train|infer eager|compiled MODEL ESTIMATE_S [kernel-table]
    local mode=$1 variant=$2 model=$3 estimate=$4 table=${5:-}
    local name=$mode-$variant-${model//:/.}
    local args=(model --model "$model" "--$mode" --amp "$AMP" --channels-last
        --batch-size "$BATCH" --image-size "$IMAGE" --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP"
        --threads "$THREADS" --json "$OUT/json/$name.json")
    # Without --vs, scnet-bench compares the model with its own baseline.
    if [[ -n $BASELINE ]]; then args+=(--vs "$BASELINE"); fi
    if [[ $variant == compiled ]]; then args+=(--compile --compile-backend "$COMPILE_BACKEND"); fi
    if [[ -n $table ]]; then
        args+=(--kernel-table "$OUT/json/$name.kernels.md" --kernel-steps "$KERNEL_STEPS")
        estimate=$((estimate + EST_KERNEL_TABLE))
    fi
    run_step "$name" "$estimate" "${BENCH[@]}" "${args[@]}"
}

preflight() {
    # The commands take every option used below (checked in the env step), the models exist, the device
    # works, and there is room for the JPEGs.
    if ((BUDGET > 0)); then command -v timeout >/dev/null || { echo "no timeout command" >&2; return 1; }; fi
    local need_kb=$(((PER_CLASS + VAL_PER_CLASS) * CLASSES * 120)) free_kb
    local probe=$DATA
    while [[ ! -e $probe ]]; do probe=$(dirname "$probe"); done
    free_kb=$(df -Pk "$probe" | awk 'NR == 2 {print $4}')
    ((free_kb > need_kb)) || { echo "$probe: ${free_kb} kB free, the JPEGs need ~${need_kb} kB" >&2; return 1; }
    "${REPORT[@]}" env --json "$OUT/env.json" --device "$DEVICE" --models "${CHECK_MODELS[@]}" \
        ${BASELINE:+--baseline "$BASELINE"} \
        --setting dry_run="$DRY_RUN" --setting baseline="$BASELINE" --setting batch_size="$BATCH" \
        --setting image_size="$IMAGE" --setting amp="$AMP" --setting warmup="$WARMUP" --setting steps="$STEPS" \
        --setting compile_backend="$COMPILE_BACKEND" --setting train_model="$TRAIN_MODEL" \
        --setting train_steps="$TRAIN_STEPS" --setting budget="$BUDGET" --setting kernel_steps="$KERNEL_STEPS" \
        --setting loader_workers="${LOADER_WORKERS[*]}"
}

KIND="real run"
if ((DRY_RUN)); then KIND="DRY RUN"; fi
log_line "bench_gpu.sh: $KIND, device $DEVICE, models ${MODEL_LIST[*]} vs ${BASELINE:-their own baselines}," \
    "budget ${BUDGET}s, output $OUT"
log_line "commands: ${BENCH[*]} / ${TRAIN[*]} (python: $PY)"
log_line "preflight ..."
if ! preflight >"$OUT/logs/preflight.log" 2>&1; then
    record preflight failed "$SECONDS"
    {
        echo "bench_gpu.sh: step preflight failed; nothing was measured. The end of $OUT/logs/preflight.log:"
        tail -n 20 "$OUT/logs/preflight.log" | sed 's/^/    /'
    } >&2
    exit 1
fi
record preflight ok "$SECONDS"
log_line "preflight: ok ($(tail -n 1 "$OUT/logs/preflight.log"))"
if [[ $COMPILE_BACKEND == inductor ]] && ! command -v cc >/dev/null && ! command -v gcc >/dev/null; then
    log_line "warning: no C compiler (cc, gcc) on PATH; torch.compile's inductor backend needs one for its" \
        "CPU-side code, so the compiled rows may fail (the others do not need it)"
fi

# In order of what matters most, so that a tight budget drops the least important steps (the last ones):
# the kernel check first (the shipped kernels are right on this GPU before their speed means anything), then
# the goals' figures (training eager, with the first model's kernel table and its other kernels beside it,
# the JPEG run, the training model compiled, then its other kernels compiled), then the rest.
run_step kernels "$EST_KERNELS" "${BENCH[@]}" kernels --model "$TRAIN_MODEL" --amp "$KERNEL_CHECK_AMP" \
    "${KERNEL_CHECK_SIZES[@]}" --device "$DEVICE" --threads "$THREADS" --json "$OUT/json/kernels.json"

bench_model train eager "$TRAIN_MODEL" "$EST_TRAIN_EAGER" kernel-table
for model in "${MODEL_LIST[@]:1}"; do
    bench_model train eager "$model" "$EST_TRAIN_EAGER"
done
for suffix in "${EAGER_SUFFIXES[@]}"; do
    bench_model train eager "$TRAIN_MODEL$suffix" "$EST_TRAIN_EAGER"
done

run_step jpeg-gen "$EST_JPEG" "$PY" -m scnet.data.synthetic --out "$DATA" --classes "$CLASSES" \
    --per-class "$PER_CLASS" --val-per-class "$VAL_PER_CLASS" --size 500x375 --quality 90 --workers "$NPROC" \
    --json "$OUT/json/jpeg-gen.json"

if needs loader jpeg-gen; then
    # Both decode paths (gpu on a CPU device: the CPU decoder standing in), and the training model fed by each.
    run_step loader "$EST_LOADER" "${BENCH[@]}" data --data "$DATA" --decode cpu,gpu \
        --workers "${LOADER_WORKERS[@]}" "${LOADER_COUNTS[@]}" --batch-size "$BATCH" --repeats "$LOADER_REPEATS" \
        --image-size "$IMAGE" --model "$TRAIN_MODEL" --amp "$AMP" --channels-last --device "$DEVICE" \
        --json "$OUT/json/loader.json"
fi

for decode in cpu gpu; do
    if needs "train-run-$decode" jpeg-gen; then
        run_step "train-run-$decode" "$EST_TRAIN_RUN" "${TRAIN[@]}" --config "$REPO/configs/imagenet/scnet50.yaml" \
            output_dir="$OUT/train-run-$decode" model.name="$TRAIN_MODEL" model.num_classes="$CLASSES" \
            model.channels_last=true data.root="$DATA" data.batch_size="$BATCH" data.workers="$NPROC" \
            data.decode="$decode" data.image_size="$IMAGE" train.epochs=1 train.amp="$AMP" \
            train.log_every="$LOG_EVERY" train.tensorboard=true
    fi
done

bench_model train compiled "$TRAIN_MODEL" "$EST_TRAIN_COMPILED"
for suffix in "${COMPILED_SUFFIXES[@]}"; do
    bench_model train compiled "$TRAIN_MODEL$suffix" "$EST_TRAIN_COMPILED"
done
for model in "${MODEL_LIST[@]}"; do
    bench_model infer eager "$model" "$EST_INFER_EAGER"
done
for model in "${MODEL_LIST[@]:1}"; do
    bench_model train compiled "$model" "$EST_TRAIN_COMPILED"
done
for model in "${MODEL_LIST[@]}"; do
    bench_model infer compiled "$model" "$EST_INFER_COMPILED"
done

log_line "done in ${SECONDS}s; the report (also $OUT/report.md):"
echo
"${REPORT[@]}" render "$OUT" || FAILED+=(report)

if ((${#FAILED[@]})); then
    echo "bench_gpu.sh: FAILED step(s): ${FAILED[*]} (logs in $OUT/logs/)" >&2
    exit 1
fi
