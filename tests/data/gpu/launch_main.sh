#!/usr/bin/env bash
# Train with kohya-ss/sd-scripts. Rendered by kohyawrap 0.2.0: gpu preset h100, model preset sdxl.
# inputs_hash 73868cbe6fce3ecc
# Run from anywhere: it changes to its own folder, because sd-scripts resolves the relative paths in
# training_config.toml against the working directory. SD_SCRIPTS points at an sd-scripts checkout
# (the commit kohyawrap was written against: 48d368fa557731ad0488c07304dfeba8c07910eb); ACCELERATE at its venv's accelerate.
set -euo pipefail
cd "$(dirname "$0")"
SD_SCRIPTS="${SD_SCRIPTS:-$HOME/kohyawrap/sd-scripts/48d368fa557731ad0488c07304dfeba8c07910eb}"
ACCELERATE="${ACCELERATE:-accelerate}"
export PYTHONUNBUFFERED=1
exec "$ACCELERATE" launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no --num_cpu_threads_per_process 2 \
    "$SD_SCRIPTS/"sdxl_train_network.py --config_file training_config.toml
