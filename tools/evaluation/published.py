"""Published reconstruction numbers that an evaluation can list beside its own rows (tools/eval.py --protocol).

PUBLISHED[protocol] = {'source': where the numbers come from, 'setup': what they were measured on, 'size':
the frames compared (height, width), 'rows': [{'model', 'compression' ('T×H×W'), 'psnr' (dB), 'ssim', 'lpips'}]}. They are copied from their source,
not measured here: the tables mark them as published.
"""

PUBLISHED = {
    'cascadev-inter4k': {
        'source': 'CascadeV release README, section 2.1 "PSNR/SSIM/LPIPS" (https://github.com/bytedance/CascadeV, '
                  'https://huggingface.co/ByteDance/CascadeV)',
        'setup': 'Inter4K, first 200 videos, 1024×1024, 30 fps',
        'size': (1024, 1024),                          # the frames compared (height, width)
        'rows': [
            {'model': 'Open-Sora-Plan v1.1', 'compression': '4×8×8', 'psnr': 25.7282, 'ssim': 0.8000, 'lpips': 0.1030},
            {'model': 'EasyAnimate v3', 'compression': '4×8×8', 'psnr': 28.8666, 'ssim': 0.8505, 'lpips': 0.0818},
            {'model': 'StableCascade', 'compression': '1×32×32', 'psnr': 24.3336, 'ssim': 0.6896, 'lpips': 0.1395},
            {'model': 'CascadeV', 'compression': '1×32×32', 'psnr': 23.7320, 'ssim': 0.6742, 'lpips': 0.1786},
        ],
    },
}
PUBLISHED_MARK = '(published)'  # after the model name in the tables


def published_rows(protocol):
    """The published entry for `protocol` ({'source', 'setup', 'rows'}, rows as copies), or None when there is
    none (no protocol, or one without published numbers)."""
    entry = PUBLISHED.get(protocol) if protocol else None
    if entry is None:
        return None
    return {'source': entry['source'], 'setup': entry['setup'], 'size': list(entry['size']),
            'rows': [dict(r) for r in entry['rows']]}


def comparability_note(published, videos):
    """A note when the pairs scored (dicts with 'height', 'width') were not compared at the published rows'
    size, so the published numbers are not comparable with them; None when they all were (or no rows)."""
    if not published:
        return None
    h, w = published['size']
    other = sorted({f"{v['height']}x{v['width']}" for v in videos if (v['height'], v['width']) != (h, w)})
    if not other:
        return None
    return (f"published rows: measured on {published['setup']}; pairs here were compared at {', '.join(other)}, "
            f"so they are not comparable with them (reconstruct at the protocol's size: docs/evaluation.md)")
