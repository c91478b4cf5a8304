"""Lists of videos: a .txt or .json list file, a folder of videos, or one video file -> the video paths.

Used by training (`data.video_list`) and by evaluation (a reference list). Relative paths in a list file
are resolved against the list's folder.
"""
import json
import os
from pathlib import Path

from tools.video.read import VIDEO_EXTS, list_videos


class VideoListError(ValueError):
    """A video list is unusable; the message is one line naming the file, the rule and the fix."""


def _read_txt(path):
    """One path per line; blank lines and lines starting with '#' are skipped."""
    base = path.parent
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [str(base / ln) if not os.path.isabs(ln) else ln for ln in lines if ln and not ln.startswith('#')]


def _read_json(path):
    """A JSON list of path strings or of {"path": ...} objects (other keys ignored)."""
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VideoListError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected a list of paths "
                             f"or of {{\"path\": ...}} objects") from None
    if not isinstance(items, list):
        raise VideoListError(f"{path}: the top level is a {type(items).__name__}; expected a list of paths or "
                             f"of {{\"path\": ...}} objects")
    paths = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get('path'), str):
            item = item['path']
        if not isinstance(item, str):
            raise VideoListError(f"{path}: entry {i} is {item!r}; each entry must be a path string or an object "
                                 f"with a \"path\" string")
        paths.append(item if os.path.isabs(item) else str(path.parent / item))
    return paths


def read_video_list(path):
    """One list entry -> list of video paths (str), in list order, duplicates kept.

    `path`: a .txt list (one path per line, '#' comments), a .json list (path strings or {"path": ...}
    objects), a folder (its videos, tools.video.read.list_videos) or a single video file (VIDEO_EXTS).
    Listed files are not checked for existence. Raises VideoListError (one line) for a missing entry, an
    unknown extension or a malformed list.
    """
    entry = Path(path)
    if entry.is_dir():
        return [str(p) for p in list_videos(entry)]
    if not entry.is_file():
        raise VideoListError(f"data.video_list: {path} does not exist; give .txt/.json list files, folders of "
                             f"videos or video files")
    suffix = entry.suffix.lower()
    if suffix == '.txt':
        return _read_txt(entry)
    if suffix == '.json':
        return _read_json(entry)
    if suffix in VIDEO_EXTS:
        return [str(entry)]
    raise VideoListError(f"data.video_list: {path} has extension '{suffix}'; use a .txt list (one path per "
                         f"line), a .json list, a folder or a video file")
