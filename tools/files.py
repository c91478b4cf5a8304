"""Atomic file writes: write to PATH.tmp, then rename, so a reader never sees half a file."""
import os
from pathlib import Path


def atomic_write(path, write):
    """Call write(tmp_path) for PATH.tmp, then rename it to PATH (an existing PATH is replaced only on success)."""
    tmp = Path(f'{path}.tmp')
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():                      # write() failed: leave no temp file behind
            tmp.unlink()


def write_text_atomic(path, text):
    """Text (UTF-8, newlines as given) to PATH via PATH.tmp."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8', newline=''))
