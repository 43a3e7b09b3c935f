#!/usr/bin/env bash
# Prepare the GPU check's folder (everything the GPU machine needs, nothing downloaded there):
#   bash stage.sh STAGE_DIR SD_SCRIPTS_DIR TOKENIZER_DIR WHEEL_DIR [KOHYAWRAP]
# SD_SCRIPTS_DIR: a checkout of kohya-ss/sd-scripts at the pinned commit; TOKENIZER_DIR: a saved
# CLIPTokenizer (shared/tools/real-sd-scripts/make_random_sd15.py writes one); WHEEL_DIR: the wheels
# run.sh overlays (README.md lists them). Renders cfg_main (the h100 + sdxl preset, 40 steps, no
# sampling), cfg_gc (the same with gradient checkpointing, 20 steps) and cfg_adamw (main with
# torch's AdamW: run.sh's fallback if bitsandbytes fails there) with `kohyawrap config render`.
set -euo pipefail
G=$1 SDS=$2 TOK=$3 WHL=$4 KW=${5:-kohyawrap}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$G"
rm -rf "$G/sds" "$G/whl" "$G/tok" "$G/ds" "$G"/cfg_*
# sd-scripts' source without .git and without the Windows DLLs, docs and images it does not run
(cd "$SDS" && tar --exclude=.git --exclude=bitsandbytes_windows --exclude=docs --exclude='*.png' \
    --exclude='*.jpg' -cf - .) | (mkdir -p "$G/sds" && tar -xf - -C "$G/sds")
cp -r "$WHL" "$G/whl"
mkdir -p "$G/tok" && cp "$TOK"/* "$G/tok/"
cp "$HERE"/{run.sh,kw_measure.py,make_random_sdxl.py,make_dataset.py,summarize.py} "$G/"
printf '#!/bin/sh\n# `accelerate launch ...` through the interpreter run.sh uses\n[ "$1" = launch ] && shift\nexec "${PY:-python3}" -m accelerate.commands.launch "$@"\n' >"$G/accel"
chmod +x "$G/accel"

python3 "$HERE/make_dataset.py" "$G/ds/4_sks dog" --n 10 --size 64  # the render counts images
cd "$G"  # a relative --dataset is written relative to the config's folder: ../ds, found there too
common=(--gpu h100 --model sdxl --dataset ds --base-model /tmp/kwgpu/random-sdxl.safetensors
    --name gpucheck --set sample_every_n_epochs=0 --set 'tokenizer_cache_dir="/tmp/kwgpu/tok"' --force)
"$KW" config render "${common[@]}" -o cfg_main --set max_train_epochs=8
"$KW" config render "${common[@]}" -o cfg_gc --set max_train_epochs=4 --set gradient_checkpointing=true
"$KW" config render "${common[@]}" -o cfg_adamw --set max_train_epochs=8 --set optimizer_type='"AdamW"'
for c in cfg_*; do
    # the rendered launch.sh, with kw_measure.py in front of the training script
    sed 's|"\$SD_SCRIPTS/"\([a-z_0-9]*\.py\)|"$SD_SCRIPTS/../kw_measure.py" "$SD_SCRIPTS/"\1|' \
        "$c/launch.sh" >"$c/launch_measured.sh"
    grep -q kw_measure "$c/launch_measured.sh"
done
grep -q '^train_data_dir = "../ds"' cfg_main/training_config.toml
rm -rf ds
du -sh "$G"
