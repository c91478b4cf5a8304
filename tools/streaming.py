"""Streaming helpers for the per-video loop: overlap reading the next chunk of frames with work on this one."""


def read_ahead(read, spans, pool):
    """Yield read(a, b) for each (a, b) in spans while the next span is already being read in `pool`."""
    pending = pool.submit(read, *spans[0]) if spans else None
    for i in range(len(spans)):
        frames = pending.result()
        pending = pool.submit(read, *spans[i + 1]) if i + 1 < len(spans) else None
        yield frames
