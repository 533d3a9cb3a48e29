"""``num_threads(n)``: torch's intra-op thread count set to ``n`` inside a ``with`` block."""

import contextlib

import torch


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
