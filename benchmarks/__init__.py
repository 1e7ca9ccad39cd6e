"""The benchmark suite: what resilience costs, measured against bare Celery.

``python -m benchmarks`` (``make bench``) starts its own redis-server and real
worker processes, runs every configuration several times interleaved and
prints tables of medians and ratios against bare Celery measured in the same
run. See ``benchmarks/README.md`` for what is measured and how.
"""
