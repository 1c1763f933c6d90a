"""embedq's benchmark: `python -m bench.run` (see bench/README.md).

The load generator (`bench.load`) and the delaying proxy (`bench.proxy`) run as their own
processes, so neither shares a GIL with the server, the worker or each other.
"""
