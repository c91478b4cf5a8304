"""What a reconstruction records: a latent file's metadata, a render's info and the folder's done.json.

    meta = LatentMeta.from_dict(json.loads(text))      # the 'meta' of a latent.safetensors (format v2)
    done = DoneRecord.from_dict(json.loads(path.read_text()));  done.render.files, done.settings, done.plan

Each is a frozen dataclass with to_dict (the JSON written) and from_dict (its inverse, which also reads the
older layouts). A fact is stored once: the frame selection and geometry live in the frame plan
(tools/video/frames.py FramePlan), the flags that shaped the files in done.json's `settings`.
"""
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tools.video.frames import FramePlan

# recorded in done.json's settings only when not their default: a done.json written before these settings
# existed still matches, and a run at the default redoes one made with another value (folders.settings_change)
RECORDED_WHEN_SET = {'keep_hdr': False, 'keep_fields': False, 'autoencoder': 'cascadev', 'autoencoder_weights': None}

LATENT_FORMAT = 'cascadev-latent-v2'         # v2: the frame plan, SAR and frame times in the metadata
DONE_FORMAT = 'cascadev-done-v2'             # v1 (no 'format' key): also start, frame_stride, size, square and
                                             # preprocess at the top level, copies of the plan's
DONE = 'done.json'
OUTPUT_FILES = ('latent.safetensors', 'preview.mp4', 'rec.mp4', 'cmp.mp4', 'cmp.png')


@dataclass(frozen=True)
class LatentMeta:
    """The metadata of a latent file: all that rendering it again needs, without its source.

    name: the video's name (its output folder, checked by tools.recon.latents.safe_name on reading); plan:
    the FramePlan it was encoded with (frames num_frames, start, stride of the source); source: the source's
    absolute path (data, never opened as a path by a decode); source_fps; sar: 'N:D' or None (square
    pixels); vfr: a variable frame rate source, whose frame `times` (seconds from the first frame used) are
    kept; config: the config's file name; output_fps: the encoding run's --fps (None: the source's times);
    source_notes: what reading did to the source's frames (tools.video.read.VideoInfo.notes: HDR tone-mapped,
    deinterlaced, alpha dropped, a frame rate assumed; None: nothing); autoencoder: the name of the other video
    autoencoder whose latent it is (recon.py --autoencoder; None: CascadeV's); windows: the frames of each window
    that autoencoder encoded as a clip of its own (models.autoencoders.window_frames; None: the whole clip).
    """
    name: str
    plan: FramePlan
    source: str = None
    source_fps: float = None
    sar: str = None
    vfr: bool = False
    times: list = None
    config: str = None
    output_fps: float = None
    source_notes: list = None
    autoencoder: str = None
    windows: list = None

    @property
    def num_frames(self):
        return self.plan.num_frames

    @property
    def start(self):
        return self.plan.start

    @property
    def frame_stride(self):
        return self.plan.stride

    @property
    def fps(self):
        """The rate the latent's frames play at: the source's over the frame stride (None: unknown)."""
        return None if self.source_fps is None else self.source_fps / self.plan.stride

    def to_dict(self):
        """The file's JSON (format v2, whose readers also take num_frames, start, frame_stride and fps)."""
        return {'format': LATENT_FORMAT, 'name': self.name, 'source': self.source, 'source_fps': self.source_fps,
                'fps': self.fps, 'num_frames': self.num_frames, 'start': self.start,
                'frame_stride': self.frame_stride, 'plan': self.plan.to_dict(), 'sar': self.sar, 'vfr': self.vfr,
                'times': self.times, 'config': self.config, 'output_fps': self.output_fps,
                'source_notes': self.source_notes, **({'autoencoder': self.autoencoder} if self.autoencoder else {}),
                **({'windows': self.windows} if self.windows else {})}

    @classmethod
    def from_dict(cls, d):
        """Inverse of to_dict; the copies of the plan's frame selection (num_frames, start, frame_stride, fps)
        are not read. KeyError / ValueError / TypeError for a dict without a valid plan."""
        return cls(name=d['name'], plan=FramePlan.from_dict(d['plan']), source=d.get('source'),
                   source_fps=d.get('source_fps'), sar=d.get('sar'), vfr=d.get('vfr', False), times=d.get('times'),
                   config=d.get('config'), output_fps=d.get('output_fps'), source_notes=d.get('source_notes'),
                   autoencoder=d.get('autoencoder'), windows=d.get('windows'))


@dataclass(frozen=True)
class RenderInfo:
    """What a render wrote: frames (T, after --interp), height and width of the files in pixels, fps, sar
    ('N:D' or None), frame_times ('source': each frame at its source time, else 'constant'), lossless, files
    (names in out_dir), frames_sha256 ({file: sha256 hex of the uint8 RGB frames handed to the encoder}),
    metrics ({'preview' | 'refined': {'psnr': dB, 'ssim': 0..1 or None}}, {} when not scored) and, when
    refined, the sampler: scheduler, steps, seed and the video's noise_seed (models.pipeline.noise_seed);
    source_notes: what reading did to the source (LatentMeta.source_notes), only when it did something."""
    frames: int = None
    height: int = None
    width: int = None
    fps: float = None
    sar: str = None
    frame_times: str = None
    lossless: bool = None
    files: list = None
    frames_sha256: dict = None
    metrics: dict = None
    scheduler: str = None
    steps: int = None
    seed: int = None
    noise_seed: int = None
    source_notes: list = None

    def to_dict(self):
        """Its keys in order; the sampler's four only when refined, source_notes only when there are some."""
        d = asdict(self)
        if self.scheduler is None:
            for k in ('scheduler', 'steps', 'seed', 'noise_seed'):
                del d[k]
        if not self.source_notes:
            del d['source_notes']
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class DoneRecord:
    """done.json, written last in a video's output folder: the video is complete when it exists and lists
    files that all exist.

    name, source (the video's absolute path, or for a decoded latent the source it was encoded from), render
    (RenderInfo, its keys at the top level), latent (the latent file: 'latent.safetensors' beside it, or the
    absolute path decoded from), upscale, interp, plan (the FramePlan dict: frame selection and geometry;
    tools/eval.py compares through it), config (file name), device, dtype ('fp32' | 'fp16' | 'bf16'),
    settings (everything that shapes the files: a rerun compares it), memory_plan
    (tools.recon.memory.MemoryPlan.to_dict), stage_seconds ({stage: s}), seconds (the video's wall time);
    autoencoder: only for another autoencoder than CascadeV (recon.py --autoencoder): {'name', 'class' (the
    diffusers class), 'weights' (its folder), 'compression' ('T×H×W, C ch'), 'notes'}; processes: how many
    processes of a launch shared the video's work (models/parallel.py; 1: one process did it all) and, when more
    than one, gathered_bytes: the bytes the writing process received from the others.
    """
    name: str = None
    source: str = None
    render: RenderInfo = RenderInfo()
    latent: str = None
    upscale: bool = None
    interp: int = None
    plan: dict = None
    config: str = None
    device: str = None
    dtype: str = None
    settings: dict = None
    memory_plan: dict = None
    stage_seconds: dict = None
    seconds: float = None
    autoencoder: dict = None
    processes: int = 1
    gathered_bytes: int = None

    def to_dict(self):
        d = {'format': DONE_FORMAT, 'name': self.name, 'source': self.source, **self.render.to_dict()}
        d.update((f.name, getattr(self, f.name)) for f in fields(self)[3:])
        for key in ('autoencoder', 'gathered_bytes'):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of to_dict, also for v1 (no 'format' key; its top-level copies of the plan's fields are
        not read) and for older files with fewer keys (None). ValueError for another format or a non-dict."""
        if not isinstance(d, dict):
            raise ValueError(f'done.json holds {type(d).__name__}, not an object')
        if d.get('format', DONE_FORMAT) != DONE_FORMAT:
            raise ValueError(f"done.json format {d.get('format')!r}; this recon.py reads {DONE_FORMAT} and older")
        values = {f.name: d.get(f.name) for f in fields(cls) if f.name != 'render'}
        return cls(render=RenderInfo.from_dict(d), **{**values, 'processes': d.get('processes', 1)})


def read_done(folder):
    """The DoneRecord in folder/done.json, or None when there is none or it is unreadable."""
    try:
        return DoneRecord.from_dict(json.loads((Path(folder) / DONE).read_text()))
    except (OSError, ValueError):
        return None
