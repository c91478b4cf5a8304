"""One writer per folder: a claim on FOLDER/.lock that the kernel drops when its process ends, however it ends.

    try:
        lock = claim(folder)        # FolderBusy while another live process holds the folder
    except FolderBusy as e:
        print(f'{folder} is being written by another process ({e.holder})')    # pid P on HOST since T
    else:
        with lock:                  # released (and .lock removed) at the end; on SIGKILL, by the kernel
            ...write into folder...

The claim is `fcntl.flock(LOCK_EX | LOCK_NB)` on FOLDER/.lock, kept for as long as the FolderLock lives. A
killed process's claim is free at once: its lock file may stay behind (with the dead holder's pid, host and
time), and the next claim takes it over (FolderLock.previous: that holder). The file records the holder as JSON for the message of the process
that finds it taken. Claims never wait, so a scheduler can walk a list of folders (largest video first) and
take each one nobody holds. flock works between processes of one machine, and across machines on NFSv4 and
most cluster file systems (Linux emulates it with fcntl locks on NFS); a file system without locks raises
OSError on claim.
"""
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = '.lock'


@dataclass(frozen=True)
class Holder:
    """Who holds a folder: pid, host name and since (local time 'YYYY-MM-DD HH:MM:SS'); None where unknown."""
    pid: int = None
    host: str = None
    since: str = None

    def __str__(self):
        if self.pid is None:                     # the holder has not written its details yet
            return 'its details not recorded yet'
        return f'pid {self.pid} on {self.host} since {self.since}'


class FolderBusy(Exception):
    """Another live process holds the folder; `holder` (Holder) says which."""

    def __init__(self, folder, holder):
        super().__init__(f'{folder} is being written by another process ({holder})')
        self.folder, self.holder = Path(folder), holder


class FolderLock:
    """This process's claim on a folder (from claim()); release() ends it, removing FOLDER/.lock. `previous`:
    the Holder of an earlier claim that ended without a release (its process was killed), else None."""

    def __init__(self, folder, fd, previous=None):
        self.folder, self.fd, self.previous = Path(folder), fd, previous

    @property
    def held(self):
        return self.fd is not None

    def release(self):
        """End the claim: remove the lock file while still holding it (so no other process holds a removed
        file), then close it. Safe to call twice."""
        if self.fd is None:
            return
        try:
            os.unlink(self.folder / LOCK_NAME)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _read_holder(fd):
    try:
        d = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
        return Holder(d.get('pid'), d.get('host'), d.get('since'))
    except (OSError, ValueError, AttributeError, TypeError):
        return Holder()


def _open(folder):
    """Open (creating) FOLDER/.lock, creating the folder; retried when a releasing holder removes the folder."""
    for _ in range(20):
        try:
            os.makedirs(folder, exist_ok=True)
            return os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:                  # a folder on the way was removed meanwhile (it was empty)
            continue
    raise OSError(errno.ENOENT, f'{folder} keeps disappearing while it is claimed')


def claim(folder):
    """Claim `folder` (created if missing) for this process -> FolderLock (with the details a killed earlier
    holder left in the lock file as .previous); FolderBusy when another live process holds it (never waits);
    OSError where the file system cannot lock."""
    folder = Path(folder)
    while True:
        fd = _open(folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = FolderBusy(folder, _read_holder(fd))
            os.close(fd)
            raise busy from None
        except BaseException:
            os.close(fd)
            raise
        try:                                       # the file we hold must still be the one at the path
            same = os.path.samestat(os.fstat(fd), os.stat(folder / LOCK_NAME))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                               # a releasing holder removed it: claim the new file
    previous = _read_holder(fd)                    # a released claim leaves no file: details here are a dead one's
    info = {'pid': os.getpid(), 'host': socket.gethostname(), 'since': time.strftime('%Y-%m-%d %H:%M:%S')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return FolderLock(folder, fd, previous if previous.pid is not None else None)

