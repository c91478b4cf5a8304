"""Evaluation of reconstructions against their originals (tools/eval.py and tools/report.py are its CLIs).

evaluate.py  evaluate(ref, rec, out_dir, ...): match → score → describe → write, and EvalSettings
matching.py  references and methods matched by video name; each method's compression
describe.py  the setup line, notes and summary.json keys; compression and rFVD per method
clips.py     frames through the frame plan that made a reconstruction
scoring.py   per-frame metrics and the per-video row of one pair
metrics.py   PSNR, SSIM, LPIPS, flicker, tOF, VMAF on uint8 frames
vbench.py    VBench's temporal flickering (no reference)
fvd.py       rFVD: I3D features of 16-frame clips, Fréchet distance
published.py published numbers listed beside the measured rows (--protocol)
tables.py    the CSV / JSON / Markdown outputs, and read_table / load_summary to read them back
plots.py     the PNG plots
report.py    the HTML report (report.css, report.js)
errors.py    EvalError
"""
