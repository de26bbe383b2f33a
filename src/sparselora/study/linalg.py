"""Dense linear algebra on a busy CPU.

LAPACK's SVD runs many small OpenMP parallel regions; when another process holds the other
cores, every region waits at its barrier for a descheduled thread, and a 0.1 s SVD takes 4 s
(measured on the 2-core CI machines while a training job ran). One thread has no barriers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
