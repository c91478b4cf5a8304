"""The error types of the evaluation tools (matching, reading, scoring, tables, report) and the check of the
folders they write, made before any work."""
from pathlib import Path

from tools.files import folder_problem


class EvalError(ValueError):
    """Bad evaluation input (paths, flags, files); the message is one line naming the path, the rule and the fix."""


class EvalFailed(EvalError):
    """The evaluation ran but could score no pair (every one unreadable or its scoring failed): failed work,
    not bad input (tools/eval.py exits 1); the message is one line naming the first failure."""


def check_folder(flag, folder):
    """Raise EvalError naming `flag` unless files can be written into `folder`: it is no file, and it exists or
    can be created (tools.files.folder_problem; the check leaves nothing behind)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EvalError(f"{flag} {folder}: is a file; pass a folder")
    problem = folder_problem(folder)
    if problem:
        raise EvalError(f"{flag} {folder}: cannot be written ({problem}); pick a folder you can create and write to")
