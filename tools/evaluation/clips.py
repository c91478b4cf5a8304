"""Frames to compare: a reference through the frame plan that made its reconstruction, a reconstruction as stored.

The plan (tools/video/frames.py) is the one in the done.json beside a recon.py output, else the one the
evaluation's frame flags describe (recon.py's --start, --frame-stride, --num-frames, --size, --square,
--preprocess, same meaning). Frame selection and cropping apply to the reference only; a reconstruction is
resized only when its size differs from the reference's. Frames are uint8 numpy arrays (T, H, W, 3).
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools.evaluation.errors import EvalError
from tools.video.frames import FramePlan, plan
from tools.video.read import VideoReadError, frame_indices, probe_video, read_video
from tools.video.write import to_uint8

READ_BUDGET = 1 << 30  # bytes of float32 frames decoded at once (4K clips are read in chunks)


def recon_record(rec_path):
    """The done.json recon.py wrote beside `rec_path`, as a dict, or None when there is none. Raises EvalError
    for one that cannot be read or is not a JSON object."""
    done = Path(rec_path).parent / 'done.json'
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
    except (OSError, ValueError) as e:
        raise EvalError(f"{done}: unreadable recon record ({e}); rerun recon.py for that video or remove "
                        f"the file to compare through the flags") from None
    if not isinstance(record, dict):
        raise EvalError(f"{done}: unreadable recon record (holds {type(record).__name__}, not an object); rerun "
                        f"recon.py for that video or remove the file to compare through the flags")
    return record


def recon_plan(rec_path, name):
    """The FramePlan recon.py made `rec_path` with (the done.json beside it), or None when there is none or it
    records another video. Raises EvalError for an unreadable done.json."""
    record = recon_record(rec_path)
    if record is None or record.get('name') != name or 'plan' not in record:
        return None                                       # no record, another video's record, or no plan in it
    try:
        return FramePlan.from_dict(record['plan'])
    except (ValueError, TypeError, AttributeError) as e:
        raise EvalError(f"{Path(rec_path).parent / 'done.json'}: unreadable recon record ({e}); rerun recon.py "
                        f"for '{name}' or remove the file to compare through the flags") from None


def flag_plan(ref_path, size=0, square=False, preprocess='default', start=0, stride=1, num_frames=None):
    """The FramePlan the eval flags describe for this reference (recon.py's flags, same meaning); num_frames is
    "at most N". Raises EvalError (naming the reference) when the flags fit no plan."""
    info = probe_video(ref_path)
    available = max(0, math.ceil((info.num_frames - start) / stride))
    if num_frames and available:
        num_frames = min(num_frames, available)          # "at most N"; too short a clip is reported on reading
    try:
        return plan(info.height, info.width, size=size or 0, square=square, preprocess=preprocess, start=start,
                    stride=stride, num_frames=num_frames)
    except ValueError as e:
        raise EvalError(f'{ref_path}: {e}') from None


def load_frames(path, frame_plan=None, num_frames=None):
    """A video as uint8 frames (T, H, W, 3), decoded in chunks so 4K clips never sit in memory as float.

    With a FramePlan (a reference): source frames start, start + stride, ... (the plan's num_frames of them,
    else `num_frames`, else all) through FramePlan.reference, i.e. exactly what recon.py's outputs show.
    Without (a reconstruction): its first `num_frames` frames (all if None), as stored.
    Raises VideoReadError (unreadable or too short) or EvalError (the plan is for another source size).
    """
    info = probe_video(path)
    if frame_plan is not None and (info.height, info.width) != tuple(frame_plan.source):
        raise EvalError(f"{path}: is {info.height}x{info.width} but the reconstruction's frame plan is for a "
                        f"{frame_plan.source[0]}x{frame_plan.source[1]} source; pass the video recon.py read")
    p = frame_plan or FramePlan(source=(info.height, info.width))
    want = p.num_frames or num_frames
    if frame_plan is None and want:
        want = min(want, info.num_frames)
    indices = frame_indices(info.num_frames, want, p.stride, p.start, path)   # VideoReadError if too short
    per_chunk = max(1, READ_BUDGET // (3 * 4 * info.height * info.width))
    parts = []
    for i in range(0, len(indices), per_chunk):
        n = min(per_chunk, len(indices) - i)
        video, _ = read_video(path, num_frames=n, stride=p.stride, start=indices[i])
        parts.append(to_uint8(p.reference(video) if frame_plan is not None else video))
    return np.concatenate(parts)


def match_size(rec, ref_shape, path, warn):
    """Rec uint8 frames as they are when their (H, W) is the reference's; else resized to it (bilinear,
    antialiased; same aspect ratio only, within 2%), calling warn(message). Raises EvalError for another
    aspect ratio."""
    (h, w), (rh, rw) = ref_shape, rec.shape[1:3]
    if (rh, rw) == (h, w):
        return rec
    if abs(rh / rw - h / w) > 0.02:
        raise EvalError(f"{path}: is {rh}x{rw} but its reference is {h}x{w} (another aspect ratio); pass the "
                        f"--square / --preprocess / --size that recon.py used so both show the same frame")
    warn(f"{path}: {rh}x{rw} resized to the reference's {h}x{w} (the reconstruction has another size)")
    x = torch.from_numpy(rec).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class ReferenceReads:
    """One reference video, read once per distinct frame plan: methods made through the same plan share the
    frames (plans that differ only in the model frame's padding, e.g. autoencoders with other spatial factors,
    are the same), and a read that failed (VideoReadError, EvalError) is raised again without reading twice."""

    def __init__(self, path):
        self.path = path
        self._read = {}                                   # plan as JSON -> frames or the exception

    def frames(self, frame_plan):
        """uint8 frames (T, H, W, 3) of the reference through frame_plan (load_frames)."""
        padding = ('multiple', 'pad', 'model')                  # the reference does not depend on them
        key = json.dumps({k: v for k, v in frame_plan.to_dict().items() if k not in padding}, sort_keys=True)
        if key not in self._read:
            try:
                self._read[key] = load_frames(self.path, frame_plan)
            except (VideoReadError, EvalError) as e:
                self._read[key] = e
        found = self._read[key]
        if isinstance(found, Exception):
            raise found
        return found
