"""Atomic file writes and output-folder checks.

Every file is written under a temp name unique to the writing process (temp_path: PATH.<pid>.<random>.tmp),
then renamed to PATH, so a reader never sees half a file and two processes never share a temp file.
"""
import os
import secrets
import tempfile
from pathlib import Path

TEMP_SUFFIX = '.tmp'


def temp_path(path):
    """PATH.<pid>.<8 hex digits>.tmp beside PATH (str): a name no other process or call uses."""
    return f'{path}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}'


def is_temp_of(name, final):
    """Whether file name `name` is a temp_path of the file name `final` (any process's)."""
    parts = name[len(final):].split('.') if name.startswith(final + '.') else []
    return len(parts) == 4 and parts[1].isdigit() and len(parts[2]) == 8 and parts[3] == TEMP_SUFFIX[1:]


def atomic_write(path, write):
    """Call write(tmp_path) for a temp_path of PATH, then rename it to PATH (an existing PATH is replaced only on
    success; a failed write leaves no temp file)."""
    tmp = Path(temp_path(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():                      # write() failed: leave no temp file behind
            tmp.unlink()


def write_text_atomic(path, text):
    """Text (UTF-8, newlines as given) to PATH via a temp file."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8', newline=''))


def folder_problem(path):
    """Why files cannot be written into folder `path` (one phrase), or None when they can: it exists, or its
    nearest existing parent is a folder that takes a new folder, and a new file can be made there. Checked by
    creating a probe folder and file of this call's own (removed again: nothing is left behind, and checks
    running at once never meet); root ignores permission bits, this sees what the file system allows."""
    p = Path(os.path.abspath(path))
    for _ in range(5):                  # a parent removed meanwhile (by another process): look again
        existing = next(a for a in [p, *p.parents] if a.exists())
        if not existing.is_dir():
            if existing.exists():
                return f'{existing} is not a folder'
            continue
        try:
            probe = p if existing == p else Path(tempfile.mkdtemp(dir=existing, prefix='.write-check-'))
            try:
                fd, name = tempfile.mkstemp(dir=probe, prefix='.write-check-')
                os.close(fd)
                os.unlink(name)
            finally:
                if probe != p:
                    probe.rmdir()
            return None
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not existing.is_dir():
                continue
            return f"{existing} does not take new {'files' if existing == p else 'folders'} ({e.strerror or e})"
    return f'{p}: its parent folders keep disappearing'
