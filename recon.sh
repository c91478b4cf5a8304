#!/usr/bin/env bash
# Reconstruct videos with the released CascadeV model (configs/s1024.effn-f32.py).
#
#   bash recon.sh [INPUT [OUTPUT]] [recon.py flags ...]
#
# INPUT: a video or a folder of videos (default: example/); OUTPUT: the output folder (default:
# outputs/recon). Further flags go to recon.py (`.venv/bin/python recon.py --help`), e.g.
#   bash recon.sh my_videos outputs/mine --num-frames 32 --upscale
# Installs .venv on the first run. Missing weights: exits with code 2 and says how to fetch them.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Relative paths (INPUT, OUTPUT and those in further flags) are relative to the directory you run this from,
# as with any command; the defaults are in the repository. recon.py runs in your directory too.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
INPUT=$ROOT/example
OUTPUT=$ROOT/outputs/recon
if [[ $# -ge 1 && $1 != -* ]]; then
    INPUT=$(abspath "$1"); shift
    if [[ $# -ge 1 && $1 != -* ]]; then OUTPUT=$(abspath "$1"); shift; fi
fi

bash "$ROOT/install.sh" | { grep -v 'nothing to do' || true; }

exec "$ROOT/.venv/bin/python" "$ROOT/recon.py" --config "$ROOT/configs/s1024.effn-f32.py" --input "$INPUT" \
    --output "$OUTPUT" "$@"
