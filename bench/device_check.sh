#!/usr/bin/env bash
# Issue 5's GPU figures in one call of the device tool (15 device-minutes a session, its start
# included, so there is no time to iterate there: rehearse here first).
#
#   here, once:  bash bench/device_check.sh pack        # Omniglot PNGs + decoded cache -> .device/ (~33 MB, git-ignored)
#   rehearsal:   bash bench/device_check.sh run --dry   # every step on this CPU at smoke size
#   device tool: run(command="bash bench/device_check.sh run", carry=[".device"], timeout_s=570)
#
# ../shared does not travel to the device machine, hence the packed copy of the data. Each step
# has its own time limit, so a slow step loses its own figure, not the others'. The JSON results
# and log.txt land in $OUT (the device tool brings back at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

pack() {
    mkdir -p .device/cache
    "$PY" - <<'EOF'
import os, shutil, tarfile
from model.data import load_omniglot, resolve_data_root
root = resolve_data_root(None)
data = load_omniglot(root)                                  # builds the decoded cache if missing
os.makedirs(".device/cache/lamanas", exist_ok=True)
shutil.copy(data.cache_path, ".device/cache/lamanas/")     # same PNG names and sizes -> same fingerprint there
with tarfile.open(".device/omniglot.tar.gz", "w:gz", compresslevel=1) as tar:
    tar.add(root / "omniglot-py", arcname="omniglot-py")
print("packed", root, "->", ".device/ :", {f: os.path.getsize(os.path.join(dp, f)) >> 20
      for dp, _, fs in os.walk(".device") for f in fs}, "MiB")
EOF
}

step() {   # step NAME SECONDS bench-args...: one bench run, its JSON to $OUT/NAME.json
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): python -m bench $*"
    local t0=$SECONDS
    timeout "$limit" "$PY" -m bench "$@" --data-root "$DATA" --out "$OUT/$name.json" 2>&1 | grep -v Warning
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

run() {
    OUT=${OUT:-.device/out}
    mkdir -p "$OUT"
    exec > >(tee "$OUT/log.txt") 2>&1
    export PYTHONUNBUFFERED=1
    if [ "${1:-}" = "--dry" ]; then
        DEV=cpu; P=smoke; EPOCHS=1; TASKS=4; CHUNK=2
        LSTM=(--preset smoke --set loss=lstm --set loss_hidden=8 --set lstm_layers=2 --set loss_residual=true)
        MSE=("${LSTM[@]}" --set phi_update=mse); IP=("${LSTM[@]}" --set phi_update=inner_product)
    else
        DEV=cuda; P=paper-baseline; EPOCHS=3; TASKS=600; CHUNK=50   # vmap holds ~90 MB per image: 50 tasks x 10 images
        MSE=(--preset paper-lstm-mse-res); IP=(--preset paper-lstm-ip-res)
    fi
    nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
    "$PY" -c 'import torch, numpy, PIL, tqdm; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' || { echo "missing packages: stop"; exit 1; }
    DATA=$(mktemp -d)
    tar xzf .device/omniglot.tar.gz -C "$DATA" || { echo "run 'bash bench/device_check.sh pack' here first"; exit 1; }
    export XDG_CACHE_HOME=$PWD/.device/cache
    local d=(--set device=$DEV --set task_workers=1)
    step epoch-vmap 100 meta_epoch --preset $P --epochs $EPOCHS --engine vmap "${d[@]}"
    step epoch-loop 60 meta_epoch --preset $P --epochs $EPOCHS --engine loop "${d[@]}"
    step test-600 180 meta_test --preset $P --tasks $TASKS --warmup 0 --engine vmap --set eval_chunk=$CHUNK "${d[@]}"
    step epoch-lstm-mse 60 meta_epoch "${MSE[@]}" --epochs 2 --engine vmap "${d[@]}"
    step epoch-lstm-ip 90 meta_epoch "${IP[@]}" --epochs 2 --engine vmap "${d[@]}"
    rm -rf "$DATA"
}

case "${1:-}" in
    pack) pack ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/device_check.sh pack | run [--dry]" >&2; exit 2 ;;
esac
