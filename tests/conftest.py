import os

# Triton kernels run on CPU tensors through the interpreter; the flag is read
# when @triton.jit decorates, so it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
