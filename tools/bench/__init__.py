"""Speed, memory and accuracy benchmarks of CascadeV: one module per subcommand group over shared helpers.

measure.py (timers, peak memory, tables, JSON) · flops.py (analytic DiT FLOPs) · recon.py (end to end per
stage, sampler steps timed through CascadeV.refine's per-step callback) · dit.py (DiT forward variants, GEMM
floor) · memory.py, memory_fit.py (peak memory; tools/recon/memory_model.py's constants and predictions) · stages.py
· numerics.py · seams.py, fit.py (chunk and tile boundaries against whole decodes) · cli.py (the parser;
tools/benchmark.py is the entry point). They call only the public API of models/, diffusion/ and tools/.
"""
