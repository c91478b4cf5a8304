"""Which process reconstructs which video: every process walks the same list, largest video first, and takes
each video whose output folder nobody holds (tools/recon/lock.py: claims never wait). The processes of a launch,
or independent runs on one output folder, so share a batch by its work: no video is done twice, none is lost.

    names = largest_first(job, todo)                    # work = frames x model pixels, ties by name
    out = Outcomes()
    claim_videos(job, names, attempt, out)              # attempt(name) -> (outcome, line), e.g. batch.one_video
    failures, busy, gathered = gather_outcomes(out, job.world)   # the whole launch's lines, on every process

`attempt` is the per-video path: it claims the video's folder itself and returns one of 'done', 'skipped'
(another process completed it), 'busy' (another process holds it) or 'failed', with its line.

--claim-wait S (RunSettings.claim_wait): after its pass a process waits up to S seconds for the videos other
processes hold, polling every POLL_SECONDS: one that became complete (done.json with this run's settings) is
counted as done by another process; one whose holder ended without finishing it (killed: the kernel frees its
claim at once, on NFS after the lock lease) is taken over and redone from scratch. Videos still held when the
wait ends are 'busy': not done, a rerun resumes them. S = 0 reports them busy at once.
"""
import time
from dataclasses import dataclass, field

from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from tools.recon.folders import is_complete, settings_change
from tools.recon.latents import read_latent_meta
from tools.recon.reconstruct import source_plan

POLL_SECONDS = 1.0              # how often a waiting process looks at the videos other processes hold


def video_work(job, name):
    """The work of video `name` of `job` (a tools.recon.batch.Job): output frames x model pixels (h x w of
    its frame plan's `model`), output frames = interp x (frames - 1) + 1; the plan comes from the source
    (tools.recon.reconstruct.source_plan) or, with --decode-from, from the latent's metadata. -> int >= 0;
    0 for a file that cannot be read (its failure is reported when it is processed)."""
    path = job.items[name]
    try:
        plan = read_latent_meta(path).plan if job.settings.decoding else source_plan(path, job.recon)[0]
        frames = job.recon.interp * (plan.num_frames - 1) + 1
        return int(frames * plan.model[0] * plan.model[1])
    except Exception:                     # unreadable or too short: sorted last, reported by its own attempt
        return 0


def largest_first(job, names):
    """`names` ordered by video_work, largest first, ties by name -> [name]. Under a launcher the videos that
    cannot be read (work 0) are left to rank 0, so their failure is met and reported once."""
    work = {n: video_work(job, n) for n in names}
    mine = [n for n in names if work[n] > 0 or job.rank == 0]
    return sorted(mine, key=lambda n: (-work[n], n))


def up_to_date(job, name):
    """Whether OUTPUT/name holds a complete run with this run's settings (and --overwrite is not given)."""
    folder = job.output / name
    return not job.settings.overwrite and is_complete(folder) and not settings_change(folder, job.expected(name))


@dataclass
class Outcomes:
    """What this process did: done (names it reconstructed), skipped (names another process completed),
    failed and busy ({name: line}: 'PATH: reason', or the line naming the process writing the folder)."""
    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    busy: dict = field(default_factory=dict)

    def add(self, name, outcome, line):
        """Record one attempt's outcome ('done' | 'skipped' | 'failed' | 'busy'); a later one replaces 'busy'."""
        self.busy.pop(name, None)
        if outcome in ('done', 'skipped'):
            getattr(self, outcome).append(name)
        else:
            getattr(self, outcome)[name] = line

    @property
    def mine(self):
        """How many videos this process claimed and processed (done or failed)."""
        return len(self.done) + len(self.failed)


def report(job, outcome, line, write):
    """Print an attempt's line, except those about videos other processes handle where a later line says more:
    under a launcher (the gathered summary has them) and, while waiting for them, 'busy'."""
    if outcome == 'busy' and (job.world > 1 or job.settings.claim_wait > 0):
        return
    if outcome == 'skipped' and job.world > 1:
        return
    write(f'failed: {line}' if outcome == 'failed' else line)


def claim_videos(job, names, attempt, out, write=tqdm.write):
    """One pass over `names` in order, attempt(name) for each (it claims the folder itself: a held one comes
    back 'busy'), then, with job.settings.claim_wait > 0, wait_for_others. Outcomes go into `out` (an Outcomes,
    complete up to the video in progress when Ctrl-C propagates)."""
    bar = tqdm(names, desc='videos', unit='video', disable=job.rank != 0 or None)
    for name in bar:
        outcome, line = attempt(name)
        out.add(name, outcome, line)
        report(job, outcome, line, bar.write)
    bar.close()
    if out.busy and job.settings.claim_wait > 0:
        wait_for_others(job, attempt, out, write)


def wait_for_others(job, attempt, out, write=tqdm.write, poll=POLL_SECONDS):
    """Up to job.settings.claim_wait seconds, every `poll` s: each video of out.busy that became complete is
    counted as skipped (one line), one whose claim is free again is attempted (taken over); ends early when
    none is left."""
    wait = job.settings.claim_wait
    write(f"waiting up to {wait:g} s for {len(out.busy)} video(s) other processes are writing: "
          f"{', '.join(out.busy)}")
    deadline = time.monotonic() + wait
    while out.busy and time.monotonic() < deadline:
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
        for name in list(out.busy):
            if up_to_date(job, name):
                out.add(name, 'skipped', None)
                if job.world == 1:
                    write(f'{name}: completed by another process in {job.output / name}')
                continue
            outcome, line = attempt(name)
            out.add(name, outcome, line)
            if outcome != 'busy':
                report(job, outcome, line, write)


def gather_outcomes(out, world, warn=print):
    """The batch's failure lines and the lines of videos no process finished, on every process (accelerate's
    gather_object under a launcher, rank order): merge_outcomes of every rank's Outcomes -> (failures, busy,
    gathered). gathered is False when another process of the launch cannot be reached (it died: its videos
    were taken over or are reported by the folder's state): one warning line, and this process's own outcomes."""
    if world == 1:
        return (*merge_outcomes([out]), True)
    try:
        every = gather_object([out])
        PartialState().wait_for_everyone()
    except (RuntimeError, OSError) as e:         # gloo/NCCL: a peer's connection closed
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warn(f'warning: could not gather the outcomes of the other processes of this launch ({reason}); this '
             f'summary covers this process only')
        return (*merge_outcomes([out]), False)
    return (*merge_outcomes(every), True)


def merge_outcomes(every):
    """Outcomes of the processes of one launch (rank order) -> (failures, busy), tuples of lines: a video one
    process found busy and another did, skipped or failed is not busy; one failed by two is listed once."""
    finished = {n for r in every for n in r.done + r.skipped}
    failed, busy = {}, {}
    for r in every:
        for name, line in r.failed.items():
            failed.setdefault(name, line)
    for r in every:
        for name, line in r.busy.items():
            if name not in finished and name not in failed:
                busy.setdefault(name, line)
    return tuple(failed.values()), tuple(busy.values())
