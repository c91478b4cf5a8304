"""Speed, memory and accuracy benchmarks of CascadeV: one module per subcommand group over shared helpers.

measure.py (timers, peak memory, tables, JSON) · flops.py (analytic DiT FLOPs) · recon.py (end to end per
stage) · dit.py (DiT forward variants, GEMM floor) · memory.py · stages.py · numerics.py · seams.py (chunk and
tile boundaries against whole decodes) · cli.py (the parser; tools/benchmark.py is the entry point).
"""
