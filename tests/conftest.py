import os

# Triton kernels run on CPU tensors through the interpreter; the flag is read
# when @triton.jit decorates, so it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """Every test starts at the session's thread count: code under test may set its own (l0fast bench does,
    run in-process by the CLI tests), and the tests after it would run at that one."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
