"""Which reconstruction goes with which original: references and methods, matched by video name (file stem).

A reference set (--ref) is a folder of videos, a .txt/.json list (tools/video/lists.py), one video, or a list of
paths. Each method (--rec) is `[LABEL=]SOURCE`:
  * a folder of NAME.mp4 files (any video extension): one method, named LABEL or the folder's name;
  * a recon.py output folder NAME/{rec.mp4, preview.mp4}: the methods `refined` and `preview`
    (with LABEL=, only rec.mp4 under that label); rec.mp4 of another autoencoder (recon.py --autoencoder,
    named in its done.json) is the method named after it, e.g. `cogvideox`;
  * a pattern with one `*` standing for the name, e.g. `preview=outputs/*/preview.mp4`;
  * one video file: one method, named LABEL or its folder's name.
Each method's compression (method_compression) comes from the done.json beside its files: the autoencoder's
('4×8×8, 16 ch'), CascadeV's CASCADEV_COMPRESSION for recon.py's own outputs, None without a done.json.
Every error is an EvalError whose one line names the flag value, the rule and the fix.
"""
import glob
import os
import re
from pathlib import Path

from tools.evaluation.clips import recon_record
from tools.evaluation.errors import EvalError
from tools.video.lists import VideoListError, read_video_list
from tools.video.read import VIDEO_EXTS, VideoReadError, list_videos

RECON_FILES = {'preview': 'preview.mp4', 'refined': 'rec.mp4'}  # recon.py layout: OUTPUT/<name>/<file>
# The evaluation's folder inside an output folder: a name no video can have (video names are file stems, and
# folders and videos whose names start with '.' are never listed as inputs), so it never meets OUTPUT/<name>/.
EVAL_DIR = '.eval'
CASCADEV_COMPRESSION = '1×32×32, 16 ch'   # recon.py's own preview and refined: the compressor's latent


def list_references(ref):
    """--ref (folder, .txt/.json list, one video, or a list of paths) -> {name: path}, names = file stems,
    in list order. Raises EvalError for a missing source, an empty list or two videos of one name."""
    if isinstance(ref, (list, tuple)):
        paths = [str(p) for p in ref]
    else:
        if not os.path.exists(ref):
            raise EvalError(f"--ref {ref}: no such file or folder; pass a folder of videos, a .txt/.json list "
                            f"or a video file")
        try:
            paths = read_video_list(ref)
        except (VideoListError, VideoReadError) as e:
            raise EvalError(f"--ref {ref}: {str(e).split(': ', 1)[-1]}") from None
    if not paths:
        raise EvalError(f"--ref {ref}: lists no videos; add video paths to it")
    refs = {}
    for p in paths:
        name = Path(p).stem
        if name in refs:
            raise EvalError(f"--ref {ref}: two videos are named '{name}' ({refs[name]} and {p}); reconstructions "
                            f"are matched by file name, so rename one")
        refs[name] = p
    return refs


def _pattern_matches(pattern):
    """'outputs/*/rec.mp4' -> {name: path} for each existing file, name = what `*` matched."""
    if pattern.count('*') != 1:
        raise EvalError(f"--rec {pattern}: a pattern needs exactly one '*' (the video name), e.g. outputs/*/rec.mp4")
    head, tail = pattern.split('*')
    rx = re.compile(re.escape(head) + r'(.+)' + re.escape(tail))
    return {rx.fullmatch(p).group(1): p for p in sorted(glob.glob(pattern)) if os.path.isfile(p)}


def _split_label(spec):
    """'LABEL=SOURCE' -> (LABEL, SOURCE); a spec that is an existing path, or has no label -> (None, spec)."""
    m = re.match(r'^([\w.+-]+)=(.+)$', spec)
    if m and not os.path.exists(spec):
        return m.group(1), m.group(2)
    return None, spec


def _rec_items(rec):
    """--rec value(s) or {label: source} -> [(label or None, source)]."""
    if isinstance(rec, (str, Path)):
        return [_split_label(str(rec))]
    if isinstance(rec, dict):
        return [(str(k), str(v)) for k, v in rec.items()]
    return [_split_label(str(s)) for s in rec]


def _record(path):
    """The done.json beside a reconstruction, or None: none, or unreadable (that pair is skipped when scored)."""
    try:
        return recon_record(path)
    except EvalError:
        return None


def autoencoder_name(path):
    """The autoencoder recon.py --autoencoder made `path` with (its done.json's autoencoder.name), or None."""
    found = (_record(path) or {}).get('autoencoder')
    return str(found['name']) if isinstance(found, dict) and found.get('name') else None


def compression(path):
    """The compression of the model that made `path`: its done.json's autoencoder.compression, CASCADEV_COMPRESSION
    for a recon.py output without one, None without a done.json."""
    record = _record(path)
    if record is None:
        return None
    found = record.get('autoencoder')
    return (found.get('compression') or None) if isinstance(found, dict) else CASCADEV_COMPRESSION


def method_compression(found):
    """{name: path} of one method -> its compression ('4×8×8, 16 ch'), the distinct ones joined by ' / ' when
    its files differ, None when none of them has a done.json."""
    values = [c for c in dict.fromkeys(compression(p) for p in found.values()) if c]
    return ' / '.join(values) or None


def _folder_methods(label, path, spec):
    """A folder --rec -> [(label, {name: path})]: recon.py outputs (preview; refined, or the autoencoder named in
    each done.json) or a folder of videos."""
    recon = {f: {d.name: str(d / f) for d in sorted(path.iterdir()) if (d / f).is_file()}
             for f in RECON_FILES.values()}
    if any(recon.values()):
        if label:
            return [(label, recon[RECON_FILES['refined']])]
        rec = {}
        for name, p in recon[RECON_FILES['refined']].items():
            rec.setdefault(autoencoder_name(p) or 'refined', {})[name] = p
        preview = recon[RECON_FILES['preview']]
        return ([('preview', preview)] if preview else []) + list(rec.items())
    try:
        flat = {Path(p).stem: p for p in list_videos(path)}
    except VideoReadError:
        raise EvalError(f"--rec {spec}: holds neither NAME.mp4 videos nor recon outputs NAME/rec.mp4; "
                        f"pass the folder recon.py wrote or a folder of videos") from None
    return [(label or path.resolve().name, flat)]


def _spec_methods(label, spec):
    """One --rec spec -> [(label, {name: path})]; raises EvalError when it names nothing usable."""
    path = Path(spec)
    if '*' in spec:
        found = _pattern_matches(spec)
        if not found:
            raise EvalError(f"--rec {spec}: the pattern matches no files; check the folder and file name")
        named = {f: m for m, f in RECON_FILES.items()}
        default = named.get(path.name, path.stem)
        if path.name == RECON_FILES['refined']:
            makers = {autoencoder_name(p) for p in found.values()}
            default = makers.pop() if len(makers) == 1 and None not in makers else default
        return [(label or default, found)]
    if path.is_dir():
        return _folder_methods(label, path, spec)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        return [(label or path.parent.resolve().name, {path.stem: str(path)})]
    raise EvalError(f"--rec {spec}: no such folder or video; pass a recon.py output folder, a folder of "
                    f"NAME.mp4 files or a pattern like outputs/*/rec.mp4")


def resolve_methods(rec):
    """--rec spec(s) or {label: source} -> {label: {name: path}}, in the order given (forms: module docstring).
    Raises EvalError for no spec, an unusable one, or a label used twice."""
    items = _rec_items(rec)
    if not items:
        raise EvalError("--rec: no reconstructions given; pass --rec DIR (a recon.py output folder or a folder of "
                        "NAME.mp4 files)")
    methods = {}
    for label, spec in items:
        for method, found in _spec_methods(label, spec):
            if method in methods:
                raise EvalError(f"--rec {spec}: the method label '{method}' is used twice; name them, e.g. "
                                f"--rec a={spec}")
            methods[method] = found
    return methods


def default_out_dir(rec):
    """The first --rec source's folder / EVAL_DIR ('.eval'; for a pattern: the folder before the '*')."""
    spec = _rec_items(rec)[0][1]
    if '*' in spec:
        head = spec.split('*')[0]
        folder = head if head.endswith(('/', os.sep)) else os.path.dirname(head)
    else:
        folder = spec if os.path.isdir(spec) else os.path.dirname(spec)
    return Path(folder or '.') / EVAL_DIR


def missing_names(refs, methods):
    """{label: sorted reference names it has no reconstruction for}; raises EvalError when no method matches
    any reference by name."""
    if not any(set(refs) & set(found) for found in methods.values()):
        some = next(iter(methods.values()))
        raise EvalError(f"--rec: no reconstruction matches a --ref video by name (references: "
                        f"{', '.join(list(refs)[:3])}...; reconstructions: {', '.join(list(some)[:3]) or 'none'}); "
                        f"reconstructions must be named like their originals")
    return {m: sorted(set(refs) - set(found)) for m, found in methods.items()}

