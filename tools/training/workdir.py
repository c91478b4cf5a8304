"""A training run's claim on its work dir: one run per folder, one process at a time.

A run starts in a new or empty folder, or goes on with the run already there (--resume). While it runs it
holds an exclusive flock on WORK_DIR/.lock; the kernel drops the lock when the process ends, however it ends,
so a killed run never leaves the folder locked. The lock file itself stays (removing it would let two runs
lock two different files).
"""
import fcntl
import os
import shutil
from pathlib import Path

LOCK_NAME = '.lock'


class WorkDirError(ValueError):
    """The work dir cannot take this run (an earlier run without --resume, another training running in it, not
    a folder); the message is one line naming the folder and what to pass instead."""


def is_used(work_dir):
    """True when `work_dir` exists and holds anything besides the lock file."""
    folder = Path(work_dir)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


def check_usable(work_dir, resume):
    """WorkDirError unless a run may start in `work_dir`: it is new or empty, or `resume` (a checkpoint folder
    or 'auto') continues the run already there."""
    folder = Path(work_dir)
    if folder.exists() and not folder.is_dir():
        raise WorkDirError(f"--work-dir {folder}: exists and is not a folder; pass a new folder")
    if resume is None and is_used(folder):
        raise WorkDirError(f"--work-dir {folder}: holds an earlier run; continue it with --resume auto, or start a "
                           f"new run with another --work-dir")


class WorkDir:
    """The claim of one run on its folder. claim() checks, creates the folder and takes the lock; release()
    drops it; discard() removes what a run that could not start wrote into a folder that was new or empty."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd, self.existed, self.fresh = None, self.path.exists(), False

    @property
    def held(self):
        return self.fd is not None

    def claim(self, resume):
        """Check (check_usable), create the folder, lock it without waiting, check again under the lock (a run
        that started meanwhile). WorkDirError when another process holds the lock (nothing is changed then) or
        the folder cannot be written."""
        check_usable(self.path, resume)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkDirError(f"--work-dir {self.path}: cannot be written ({e.strerror}); pass a folder you can "
                               f"write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors='replace').strip() or '?'
            os.close(fd)
            raise WorkDirError(f"--work-dir {self.path}: another training (pid {holder}) is running in it; wait "
                               f"for it to end, or use another --work-dir") from None
        self.fd = fd
        try:
            check_usable(self.path, resume)
        except WorkDirError:
            self.release()
            raise
        self.fresh = not is_used(self.path)
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def discard(self):
        """Remove what this run wrote, when it held the lock on a new or empty folder: the folder it created, or
        the contents of the empty one it was given. Then release the lock."""
        if self.held and self.fresh:
            if not self.existed:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for p in self.path.iterdir():
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        self.release()
