#!/usr/bin/env bash
# Create .venv and install requirements.txt. Idempotent: a second run with an
# unchanged requirements.txt only checks a stamp file and exits in well under a second.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256

req_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$req_hash" ]]; then
    echo "install.sh: .venv is up to date (requirements.txt unchanged); nothing to do."
    exit 0
fi

ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case $ver in
    3.10|3.11|3.12) ;;
    *) echo "install.sh: Python $ver found as '$PY'; need 3.10-3.12 (set PYTHON=/path/to/python3.11)." >&2; exit 2 ;;
esac

if [[ ! -x $VENV/bin/python ]]; then
    echo "install.sh: creating $VENV with $PY (Python $ver)"
    "$PY" -m venv "$VENV"
fi
echo "install.sh: installing requirements.txt into $VENV (first run downloads torch: minutes)"
# pip's notes about local index folders are noise here; real errors still fail the script.
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
quiet "$VENV/bin/python" -m pip install --quiet --upgrade pip
quiet "$VENV/bin/python" -m pip install --quiet -r requirements.txt
"$VENV/bin/python" -m pip freeze > "$VENV/installed.txt"
echo "$req_hash" > "$STAMP"
"$VENV/bin/python" - <<'PY'
import torch, diffusers, accelerate, mmengine
cuda = torch.cuda.is_available()
print(f"install.sh: done. torch {torch.__version__} (CUDA {'available' if cuda else 'not available: CPU only'}), "
      f"diffusers {diffusers.__version__}, accelerate {accelerate.__version__}, mmengine {mmengine.__version__}")
PY
