"""Throughput benchmarks behind ``fastae bench``: every fused path beside eager PyTorch and
torch.compile, timed in one run, with the device's own peaks measured in the same run.

    fastae bench --quick                                      # a minute or two on a CPU
    fastae bench --suite all --device cuda --output bench/results/h200-2026-12-01.json --plot speedups.png
    python -m fastae.bench.report bench/results/h200-2026-12-01.json   # tables, README section, chart

Suites (``--suite``), one module each: ``ops`` (linear_act), ``losses`` (reconstruction_loss,
gaussian_kl, linear_bce_loss and peak memory), ``train`` (one MLP-AE / conv-AE train step beside
the same network in plain torch.nn), ``codec`` (the image codec's transforms and whole files, the
entropy coder). ``timing`` measures, ``runner`` runs the cases into rows, ``report`` and ``plot``
show them, ``cli`` is ``fastae bench``, ``adapter`` serves the bench/ pytest-benchmark files.

Every row has the median time, its spread (quartiles), the ratio to each baseline of the same
case from the same run (``baseline median / row median``: above 1 is faster), the achieved
TFLOP/s or GB/s and its fraction of the device's peak measured at the start of the run (a large
matmul per dtype, a large copy). CUDA is timed with events around each call after warm-up, the L2
cache flushed before each call (as ``triton.testing.do_bench``); the CPU with ``perf_counter``,
repeating until the run lasts ``min_time`` and at least ``min_repeats`` calls.
"""
