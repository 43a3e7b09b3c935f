#!/usr/bin/env bash
# The GPU check, run on the GPU machine from a folder stage.sh prepared:
#   OUT=/results bash run.sh STAGE_DIR
# 1. overlays sd-scripts' pinned pure-Python requirements (STAGE/whl) on the machine's own CUDA
#    torch with pip --target + PYTHONPATH (PYTHONPATH wins over site-packages, so the carried
#    transformers 4.x shadows an installed 5.x);
# 2. builds the random-weight SDXL checkpoint and the dataset there (nothing is downloaded);
# 3. runs each rendered config STAGE/cfg_<run> (KW_RUNS, default "main gc") through its own
#    launch.sh, with kw_measure.py in front of the training script, and polls nvidia-smi;
# 4. writes OUT/summary.json (summarize.py).
# Files in OUT: run.log is the caller's tee; train_<run>.log, meas_<run>.jsonl, summary.json.
# KW_BUDGET_S (default 420) bounds the whole script: a later run starts only if it can finish.
set -uo pipefail
G=$(cd "$1" && pwd)
: "${OUT:?set OUT to the results folder}"
W=${KW_WORK:-/tmp/kwgpu}
export PY=${PY:-python3}
DEVICE=${KW_DEVICE:-cuda}
BUDGET=${KW_BUDGET_S:-420}
RUNS=${KW_RUNS:-main gc}
DS_SIZE=${KW_DS_SIZE:-1024}
T0=$SECONDS
mkdir -p "$W" "$OUT"
log() { echo "[t+$((SECONDS - T0))s] $*"; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1

log "overlay wheels"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" "$G"/whl/*.whl || exit 3
export PYTHONPATH="$W/site"
"$PY" - <<'PYEOF' || exit 4
import importlib.metadata as md, sys, torch
names = ["torch", "torchvision", "transformers", "diffusers", "accelerate", "bitsandbytes",
         "huggingface_hub", "tokenizers", "safetensors", "numpy", "opencv-python-headless", "einops"]
print("python", sys.version.split()[0])
for n in names:
    try:
        print(n, md.version(n))
    except md.PackageNotFoundError:
        print(n, "-")
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import transformers, diffusers, accelerate  # the overlay must win
print("from", transformers.__file__, diffusers.__file__, accelerate.__file__, sep="\n  ")
PYEOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
fi

log "tokenizers, dataset"
for name in openai_clip-vit-large-patch14 laion_CLIP-ViT-bigG-14-laion2B-39B-b160k; do
    mkdir -p "$W/tok/$name" && cp "$G"/tok/* "$W/tok/$name/"
done
"$PY" "$G/make_dataset.py" "$G/ds/4_sks dog" --n 10 --size "$DS_SIZE" || exit 5

log "random SDXL checkpoint"
if [ ! -f "$W/random-sdxl.safetensors" ]; then
    "$PY" "$G/make_random_sdxl.py" --sd-scripts "$G/sds" --out "$W/random-sdxl.safetensors" --device "$DEVICE" || exit 6
fi

train() { # NAME CAP_SECONDS
    local name=$1 cap=$2 smi="" rc
    rm -rf "$G/cfg_$name/output" "$G/cfg_$name/logs" "$W/smi_$name.csv"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$W/smi_$name.csv" 2>/dev/null &
        smi=$!
    fi
    log "train $name (at most ${cap}s)"
    (cd "$G/cfg_$name" && KW_STEPLOG="$OUT/meas_$name.jsonl" SD_SCRIPTS="$G/sds" ACCELERATE="$G/accel" \
        timeout "$cap" bash launch_measured.sh) >"$OUT/train_$name.log" 2>&1
    rc=$?
    [ -n "$smi" ] && kill "$smi" 2>/dev/null
    if [ -f "$W/smi_$name.csv" ]; then
        sed -n 's/^ *\([0-9][0-9]*\) *$/{"smi": \1}/p' "$W/smi_$name.csv" >>"$OUT/meas_$name.jsonl"
    fi
    ls -la "$G/cfg_$name/output" 2>/dev/null
    log "train $name rc=$rc"
    return $rc
}

left() { echo $((BUDGET - (SECONDS - T0))); }
for name in $RUNS; do
    cap=$(($(left) - 15))
    [ "$name" = main ] && [ $cap -gt 300 ] && cap=300
    if [ $cap -lt 90 ]; then
        log "skip $name: ${cap}s left"
        continue
    fi
    if ! train "$name" "$cap" && [ "$name" = main ] && [ -d "$G/cfg_adamw" ] &&
        grep -qiE 'bitsandbytes|bnb|8bit' "$OUT/train_main.log"; then
        log "main failed in bitsandbytes: the same config with torch's AdamW"
        cap=$(($(left) - 15))
        [ $cap -ge 90 ] && train adamw "$cap"
    fi
done

"$PY" "$G/summarize.py" "$OUT"
log "done"
