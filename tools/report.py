"""HTML report of an evaluation: per video the original and each reconstruction side by side (synchronised
HTML5 players), the metric tables and the plots, in one page that works offline, opened from disk.

    python tools/report.py EVAL_DIR --out REPORT_DIR [--copy-videos]

EVAL_DIR is what tools/eval.py wrote (per_video.csv, per_frame.csv, summary.json, *.png). CSS, JS and plots are
inline; videos are linked by paths relative to REPORT_DIR (or copied to REPORT_DIR/videos with --copy-videos,
so the folder can be moved or shared).
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ''):  # run as `python tools/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.evaluation.errors import EvalError, check_folder
from tools.evaluation.report import write_report


def main(argv=None):
    """Write the report; prints its path. -> 0, or 2 with a one-line error."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('eval_dir', help='folder written by tools/eval.py')
    p.add_argument('--out', required=True, help='report folder (index.html is written there)')
    p.add_argument('--title', default='CascadeV reconstruction report')
    p.add_argument('--copy-videos', action='store_true', help='copy the clips next to the report (portable)')
    args = p.parse_args(argv)
    try:
        check_folder('--out', args.out)
        print(write_report(args.out, args.eval_dir, args.title, args.copy_videos))
    except EvalError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
