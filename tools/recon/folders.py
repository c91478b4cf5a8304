"""A video's output folder OUTPUT/NAME/: the checks before a batch, whether a run there is complete and with
which settings, and the clean-up before a redo.

done.json (tools.recon.records.DoneRecord) is written last, so a folder whose done.json lists files that all
exist is complete. Only the process holding the folder's claim (tools/recon/lock.py) writes or cleans it.
"""
from pathlib import Path

from tools.files import folder_problem, is_temp_of
from tools.recon.records import DONE, OUTPUT_FILES, RECORDED_WHEN_SET, read_done
from tools.recon.settings import UsageError


def check_output_dir(output, inputs=()):
    """Refuse an output folder equal to or inside a folder given as --input (a rerun would list its outputs
    among the inputs' neighbours; a file input's folder may hold the outputs, OUTPUT/NAME/ per video), and one
    that cannot be created or written (tools.files.folder_problem; nothing is left behind)."""
    out = Path(output).resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if folder.is_dir() and (out == folder or folder in out.parents):
            raise UsageError(f'--output {output}: is inside the input folder {item}; input folders are never '
                             f'written to, so pick an output folder outside it (e.g. outputs/recon)')
    if out.exists() and not out.is_dir():
        raise UsageError(f'--output {output}: is a file; pass a folder')
    problem = folder_problem(output)
    if problem:
        raise UsageError(f'--output {output}: cannot be written ({problem}); pick a folder you can create and '
                         f'write to')


def clear_outputs(out_dir, keep=None):
    """Remove an earlier run's files (done.json first, so the folder never looks complete), except `keep`, and
    the temp files of earlier holders of the folder's lock (processes that died writing them)."""
    keep = Path(keep).resolve() if keep else None
    for f in (DONE,) + OUTPUT_FILES:
        path = Path(out_dir) / f
        if path.is_file() and path.resolve() != keep:
            path.unlink()
    for path in Path(out_dir).iterdir() if Path(out_dir).is_dir() else ():
        if any(is_temp_of(path.name, f) for f in (DONE,) + OUTPUT_FILES):
            path.unlink(missing_ok=True)


def remove_if_empty(folder):
    """Remove `folder` (a Path) if it is empty; a folder holding anything (another process's claim) stays."""
    try:
        folder.rmdir()
    except OSError:
        pass


def is_complete(out_dir):
    """A video is complete when its done.json exists and lists files that all exist (settings_change says
    whether they are this run's)."""
    done = read_done(out_dir)
    files = done.render.files if done is not None else None
    return isinstance(files, list) and all((Path(out_dir) / f).is_file() for f in files)


def settings_change(out_dir, expected):
    """How the complete run in out_dir differs from `expected` (done.json 'settings'): '' if it does not,
    else 'KEY OLD -> NEW, ...' (one line)."""
    done = read_done(out_dir)
    old = done.settings if done is not None and isinstance(done.settings, dict) else {}
    if not old:
        return 'its settings are not recorded (an older recon.py)'
    diff = [f'{k} {old.get(k, "unrecorded")} -> {v}' for k, v in expected.items() if old.get(k, object()) != v]
    diff += [f'{k} {old[k]} -> {default}' for k, default in RECORDED_WHEN_SET.items()     # left out at the default
             if k not in expected and k in old and old[k] != default]
    return ', '.join(diff)
