"""What an evaluation compared, in words and summary.json keys: the setup line, the notes (missing, skipped,
dropped, n/a, VMAF and rFVD status) and the rows beside the methods' (the references' own VBench flicker, the
--protocol's published rows); it also fills in each method's compression and rFVD."""
from tools.evaluation import fvd
from tools.evaluation.published import comparability_note, published_rows
from tools.evaluation.tables import reference_summary


def describe_setup(ref, refs, videos, size, square, num_frames, stride, protocol=None):
    """One line: which references, at which size, how many frames (and the --protocol preset)."""
    source = f'{len(ref)} files' if isinstance(ref, (list, tuple)) else str(ref)
    sizes = ', '.join(sorted({f"{v['height']}x{v['width']}" for v in videos}))
    flags = [f'--protocol {protocol}'] if protocol else []
    if size:
        flags.append(f'--size {size}' + (' --square' if square else ''))
    if num_frames:
        flags.append(f'--num-frames {num_frames}')
    if stride > 1:
        flags.append(f'--frame-stride {stride}')
    return f"References: {source} ({len(refs)} videos); compared at {sizes}" + (
        f" (frame flags for reconstructions without a done.json: {' '.join(flags)})." if flags else '.')


def fvd_protocol():
    """fvd.PROTOCOL in words: clip length, stride, resize, detector."""
    p = fvd.PROTOCOL
    return (f"clips of {p['clip_frames']} frames, stride {p['clip_stride']}, {p['resize']} {p['size']}×{p['size']}, "
            f"{p['detector']}")


def method_columns(summary, matched, scores, settings, scorers):
    """Each summary row's compression, rfvd and rfvd_clips (clips per side; None without rFVD) -> notes on rFVD:
    its protocol and clip counts, and why it is n/a for a method (fewer than 2 clips, videos under a clip)."""
    for m, row in summary.items():
        row.update(compression=matched.compression.get(m), rfvd=None, rfvd_clips=None)
    if not settings.fvd or scores.features is None:
        return [scorers.fvd_note]
    length, notes = fvd.PROTOCOL['clip_frames'], []
    for m, row in summary.items():
        result, short = scores.features.result(m)
        row.update(rfvd=result.value, rfvd_clips=result.clips)
        few = (f"; {len(short)} of {row['videos']} videos are shorter than {length} frames and give none "
               f"({', '.join(short[:5])}{'...' if len(short) > 5 else ''})" if short else '')
        if result.value is None:
            notes.append(f'{m}: rFVD n/a: {result.clips} clip(s) of {length} frames per side, it needs at least 2'
                         + few)
        elif few:
            notes.append(f'{m}: rFVD over {result.clips} clips per side' + few)
    counts = ', '.join(f"{m} {row['rfvd_clips']}" for m, row in summary.items())
    return [f'rFVD: {fvd_protocol()} ({settings.fvd_detector}); clips per side: {counts}', *notes]


def describe(ref, matched, scores, settings, scorers, summary):
    """(setup line, notes, extra summary.json keys): what was compared, what is missing or skipped, how; fills
    in the summary rows' compression and rFVD (method_columns)."""
    s = settings
    notes = [scorers.lpips_note] if scorers.lpips_note else []
    notes += [f'{m}: no reconstruction for {", ".join(n)}' for m, n in matched.missing.items() if n]
    notes += [f'skipped (unreadable): {e}' for e in scores.skipped]
    notes += [f'dropped: {e}' for e in scores.dropped]
    notes += scores.notes
    if scores.from_done:
        notes.append(f"{scores.from_done} of {len(scores.videos)} pairs compared through recon.py's frame plan "
                     f"(done.json)")
    if s.start or s.preprocess != 'default':
        notes.append(f'flags: --start {s.start} --preprocess {s.preprocess}')
    vmaf = scorers.vmaf
    if vmaf:
        notes.append(f"VMAF: libvmaf {vmaf.get('libvmaf', '?')}, model {vmaf['model']}, "
                     f"ffmpeg {vmaf['ffmpeg_version']}")
    else:
        notes.append('VMAF not computed (pass --vmaf)')
    notes += method_columns(summary, matched, scores, settings, scorers)
    setup = describe_setup(ref, matched.refs, scores.videos, s.size, s.square, s.num_frames, s.stride, s.protocol)
    fvd_info = None if not s.fvd else {
        'detector': str(s.fvd_detector), 'protocol': dict(fvd.PROTOCOL), 'unavailable': scorers.fvd_note,
        'clips': {m: row['rfvd_clips'] for m, row in summary.items()}}
    extra = {'protocol': s.protocol, 'lpips': scorers.lpips_note,
             'vmaf': {k: v for k, v in vmaf.items() if k != 'ffmpeg'} if vmaf else None, 'fvd': fvd_info,
             'reference': reference_summary(scores.reference), 'published': published_rows(s.protocol)}
    note = comparability_note(extra['published'], scores.videos)
    if note:
        notes.append(note)
    return setup, notes, extra
