"""`python -m arseg_ops.bench --memory-worker`: the worker process of MemoryProbe (see memory.py)."""
import sys

from .memory import memory_worker

if sys.argv[1:] != ["--memory-worker"]:
    sys.exit("usage: python -m arseg_ops.bench --memory-worker  (internal: started by MemoryProbe; "
             "for benchmarks run `arseg bench`)")
memory_worker()
