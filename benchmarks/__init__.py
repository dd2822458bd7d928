"""gen_optax's benchmarks: run each from the repository root as a module.

``python -m benchmarks.quality``, ``python -m benchmarks.overhead``, ... and
``python -m benchmarks.studies.slope_source``; the results they save are in
``benchmarks/results/`` and rendered by ``python -m benchmarks.report``.
"""
