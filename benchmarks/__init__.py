"""The benchmark suite: what resilience costs, measured against plain Celery.

``python -m benchmarks`` (``make bench``) starts its own redis-server and real
worker processes, runs every configuration several times interleaved (plain
Celery without and with results, the platform with every flag off, each
feature alone, everything on) and prints tables of medians and ratios against
plain Celery with results measured in the same run. See
``benchmarks/README.md`` for what is measured and how.
"""
