#!/usr/bin/env bash
# Fetch the released weights into pretrained/ (needs internet). Resumable: re-running continues partial
# downloads (FILE.part) and skips finished files. A file gets its final name only after its size (and, for
# large files, sha256) matched what the Hugging Face server reports.
#
#   bash pretrained/download.sh                  # everything
#   bash pretrained/download.sh --only vae       # dit | compressor | previewer | vae, comma-separated
#   bash pretrained/download.sh --dry-run        # print the plan, touch nothing, no network
#   bash pretrained/download.sh --convert        # also write s1024.effn-f32.safetensors from the .pth
#
# Gated repositories (stable-video-diffusion-img2vid-xt asks you to accept its licence on huggingface.co)
# need a token: export HF_TOKEN=hf_... (or `hf auth login` when huggingface_hub is installed).
# HF_ENDPOINT selects a mirror (default https://huggingface.co).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DEST=$HERE
ENDPOINT=${HF_ENDPOINT:-https://huggingface.co}
METHOD=auto
DRY=0
CONVERT=0
ALLOW_PICKLE=
ONLY=dit,compressor,previewer,vae
VAE_FILE=diffusion_pytorch_model.safetensors

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options: --only LIST  --dry-run  --convert [--allow-pickle]  --vae-fp16 (half-size fp16 VAE file)
         --dir DIR (default: pretrained/)  --method auto|hf|curl|wget (auto: huggingface_hub, else curl, else wget)
EOF
}
die() { echo "download.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --only) [[ $# -ge 2 ]] || die "--only needs a value (e.g. --only dit,vae)"; ONLY=$2; shift ;;
        --dir) [[ $# -ge 2 ]] || die "--dir needs a folder"; DEST=$2; shift ;;
        --method) [[ $# -ge 2 ]] || die "--method needs auto|hf|curl|wget"; METHOD=$2; shift ;;
        --dry-run) DRY=1 ;;
        --convert) CONVERT=1 ;;
        --allow-pickle) ALLOW_PICKLE=--allow-pickle ;;
        --vae-fp16) VAE_FILE=diffusion_pytorch_model.fp16.safetensors ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see: bash pretrained/download.sh --help)" ;;
    esac
    shift
done
for stage in ${ONLY//,/ }; do
    case $stage in dit|compressor|previewer|vae) ;; *) die "--only: unknown stage '$stage'; use dit, compressor, previewer, vae" ;; esac
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

PY=python3
[[ -x $ROOT/.venv/bin/python ]] && PY=$ROOT/.venv/bin/python
if [[ $METHOD == auto ]]; then
    if "$PY" -c 'import huggingface_hub' 2>/dev/null; then METHOD=hf
    elif command -v curl >/dev/null; then METHOD=curl
    elif command -v wget >/dev/null; then METHOD=wget
    else die "needs huggingface_hub (bash install.sh), curl or wget; none found"; fi
fi
case $METHOD in hf|curl|wget) ;; *) die "--method '$METHOD': use auto, hf, curl or wget" ;; esac

# stage | repository | file in the repository | destination under DEST
PLAN=(
    "compressor|stabilityai/StableWurst|effnet_encoder.safetensors|effnet_encoder.safetensors"
    "previewer|stabilityai/StableWurst|previewer.safetensors|previewer.safetensors"
    "dit|ByteDance/CascadeV|s1024.effn-f32.pth|s1024.effn-f32.pth"
    "vae|stabilityai/stable-video-diffusion-img2vid-xt|vae/config.json|svd_vae/config.json"
    "vae|stabilityai/stable-video-diffusion-img2vid-xt|vae/$VAE_FILE|svd_vae/$VAE_FILE"
)

AUTH=()
[[ -n ${HF_TOKEN:-} ]] && AUTH=(-H "Authorization: Bearer $HF_TOKEN")

# Expected "size sha256" of a file from the server's headers (X-Linked-* for LFS files), "- -" if unknown.
remote_meta() {
    local headers size sha
    if [[ $METHOD == wget ]]; then
        headers=$(wget -q -S --spider ${HF_TOKEN:+--header="Authorization: Bearer $HF_TOKEN"} "$1" 2>&1 || true)
    else
        headers=$(curl -sIL "${AUTH[@]}" "$1" || true)
    fi
    headers=$(tr -d '\r' <<<"$headers" | sed 's/^ *//')
    size=$(awk 'tolower($1)=="x-linked-size:"{print $2}' <<<"$headers" | tail -n1)
    [[ -n $size ]] || size=$(awk 'tolower($1)=="content-length:"{print $2}' <<<"$headers" | tail -n1)
    sha=$(awk 'tolower($1)=="x-linked-etag:"{gsub(/"/,"",$2); print $2}' <<<"$headers" | tail -n1)
    [[ $sha =~ ^[0-9a-f]{64}$ ]] || sha=-
    echo "${size:--} $sha"
}

fetch_http() {  # url part-file: continue a partial download
    local url=$1 part=$2
    if [[ $METHOD == curl ]]; then
        curl -fL --retry 3 -C - "${AUTH[@]}" -o "$part" "$url"
    else
        wget -c ${HF_TOKEN:+--header="Authorization: Bearer $HF_TOKEN"} -O "$part" "$url"
    fi
}

fetch_hf() {  # repo file dest: huggingface_hub resumes and checks the file itself
    local cache=$DEST/.hf-download
    HF_HUB_ENABLE_HF_TRANSFER=${HF_HUB_ENABLE_HF_TRANSFER:-0} "$PY" - "$1" "$2" "$cache" <<'PY' || return 1
import sys
from huggingface_hub import hf_hub_download
repo, name, cache = sys.argv[1:]
hf_hub_download(repo_id=repo, filename=name, local_dir=cache)
PY
    mv -f "$cache/$2" "$3"
}

fail_hint() {
    echo "download.sh: $1: download failed. If the repository is gated, accept its licence at" \
         "$ENDPOINT/$2 and export HF_TOKEN=...; then re-run this script (it resumes)." >&2
    exit 1
}

echo "download.sh: destination $DEST, method $METHOD$( ((DRY)) && echo ', dry run (nothing is fetched)')"
for row in "${PLAN[@]}"; do
    IFS="|" read -r stage repo file target <<<"$row"
    wanted "$stage" || continue
    dst=$DEST/$target
    url=$ENDPOINT/$repo/resolve/main/$file
    if [[ -f $dst ]]; then
        echo "  present  $dst ($(wc -c <"$dst") bytes)"
        continue
    fi
    if ((DRY)); then
        echo "  fetch    $url -> $dst"
        continue
    fi
    mkdir -p "$(dirname "$dst")"
    echo "  fetch    $url -> $dst"
    if [[ $METHOD == hf ]]; then
        fetch_hf "$repo" "$file" "$dst" || fail_hint "$dst" "$repo"
        continue
    fi
    read -r size sha < <(remote_meta "$url")
    part=$dst.part
    have=$(stat -c %s "$part" 2>/dev/null || echo 0)
    if [[ $size == - || $have -lt $size ]]; then
        fetch_http "$url" "$part" || fail_hint "$dst" "$repo"
    fi
    have=$(stat -c %s "$part")
    if [[ $size != - && $have != "$size" ]]; then
        echo "download.sh: $part: size $have bytes, server says $size; delete it and re-run" >&2; exit 1
    fi
    if [[ $sha != - ]]; then
        got=$(sha256sum "$part" | cut -d' ' -f1)
        if [[ $got != "$sha" ]]; then
            echo "download.sh: $part: sha256 $got, server says $sha; delete it and re-run" >&2; exit 1
        fi
    fi
    mv -f "$part" "$dst"
    checks=$([[ $size != - ]] && echo ', size checked')$([[ $sha != - ]] && echo ', sha256 checked')
    echo "  ok       $dst ($have bytes$checks)"
done
((DRY)) || rm -rf "$DEST/.hf-download"

if ((CONVERT)); then
    src=$DEST/s1024.effn-f32.pth
    out=$DEST/s1024.effn-f32.safetensors
    if ((DRY)); then
        echo "  convert  $src -> $out"
    elif [[ -f $out ]]; then
        echo "  present  $out"
    else
        [[ -f $src ]] || die "--convert: $src is missing; run without --only or with --only dit first"
        (cd "$ROOT" && "$PY" -m models.weights convert-dit "$src" "$out" $ALLOW_PICKLE) || exit 1
    fi
fi
((DRY)) || echo "download.sh: done. Paths are set in configs/_base_/model.py (weights = dict(...))."
