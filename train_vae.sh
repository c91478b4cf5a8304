#!/usr/bin/env bash
# Train the refiner DiT with `accelerate launch` (installs .venv on first run).
#
#   bash train_vae.sh [CONFIG] [WORK_DIR] [train_vae.py options ...]
#   NUM_GPUS=8 bash train_vae.sh configs/s1024.effn-f32.py work_dirs/s1024 --resume auto
#   NUM_MACHINES=2 MACHINE_RANK=0 MAIN_IP=10.0.0.1 NUM_GPUS=8 bash train_vae.sh ...   # on each machine
#   ACCELERATE_CONFIG=fsdp.yaml bash train_vae.sh ...   # FSDP or any other `accelerate config` file
#
# Relative paths (CONFIG, WORK_DIR, --resume, paths in --cfg-options) are relative to the directory you run
# this from, as with any command; the defaults (configs/s1024.effn-f32.py, work_dirs/CONFIG_NAME) are in the
# repository. train_vae.py runs in your directory too.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

NUM_GPUS=${NUM_GPUS:-1}               # processes (GPUs) per machine
NUM_MACHINES=${NUM_MACHINES:-1}
MACHINE_RANK=${MACHINE_RANK:-0}
MAIN_IP=${MAIN_IP:-127.0.0.1}         # address of machine 0
MAIN_PORT=${MAIN_PORT:-29500}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-}   # an `accelerate config` yaml; replaces the flags above

CONFIG=$ROOT/configs/s1024.effn-f32.py
if [[ $# -ge 1 && $1 != -* ]]; then CONFIG=$1; shift; fi
WORK_DIR=$ROOT/work_dirs/$(basename "$CONFIG" .py)
if [[ $# -ge 1 && $1 != -* ]]; then WORK_DIR=$1; shift; fi

bash "$ROOT/install.sh" | { grep -v 'nothing to do' || true; }

total=$(( NUM_GPUS * NUM_MACHINES ))
if [[ -z $ACCELERATE_CONFIG && $total == 1 ]]; then
    # one process needs no launcher (and Ctrl-C / SIGTERM reach train_vae.py directly: it saves and exits)
    exec "$ROOT/.venv/bin/python" "$ROOT/train_vae.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
fi
if [[ -n $ACCELERATE_CONFIG ]]; then
    launch=(--config_file "$ACCELERATE_CONFIG")
else
    # train_vae.py takes mixed precision from train.mixed_precision; the flag only keeps accelerate quiet
    if ! mp=$(PYTHONPATH=$ROOT "$ROOT/.venv/bin/python" -c \
         "import sys; from tools.config import load_config; print(load_config(sys.argv[1]).train.mixed_precision)" \
         "$CONFIG" 2>/dev/null); then   # a config error: one process reports it in one line (exit 2)
        exec "$ROOT/.venv/bin/python" "$ROOT/train_vae.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
    fi
    launch=(--multi_gpu --num_processes "$total" --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK"
            --main_process_ip "$MAIN_IP" --main_process_port "$MAIN_PORT" --mixed_precision "$mp"
            --dynamo_backend no)
fi
exec "$ROOT/.venv/bin/accelerate" launch "${launch[@]}" "$ROOT/train_vae.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
