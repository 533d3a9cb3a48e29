"""The noise stream: Random123 known answers, a NumPy Philox, and Triton's tl.rand."""

import os

import pytest
import torch

from l0fast.ops import philox_uniform
from l0fast.ops.philox import philox_uniform_ref
from philox_numpy import philox4x32_10, stream_uniforms

# Random123 kat_vectors for philox4x32-10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_numpy_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize(
    "seed,offset,numel", [(0, 0, 4096), (0xDEADBEEF12345, 3, 1001), (2**62 + 5, 2**33 - 7, 513), (42, 2**34 + 1, 17), (7, 2**34 - 61, 300)]
)
def test_cpp_and_reference_streams_equal_numpy_bit_for_bit(seed, offset, numel):
    state = torch.tensor([seed, offset], dtype=torch.int64)
    want = torch.from_numpy(stream_uniforms(seed, offset, numel))
    assert torch.equal(torch.ops.l0fast.philox_uniform(state, numel), want)
    assert torch.equal(philox_uniform_ref(state, numel), want)


def test_stream_is_position_addressed():
    """Drawing [0, n) at once equals drawing [0, k) then [k, n): a checkpoint resumes exactly."""
    whole = philox_uniform(torch.tensor([99, 10]), 1000)
    head = philox_uniform(torch.tensor([99, 10]), 333)
    tail = philox_uniform(torch.tensor([99, 343]), 667)
    assert torch.equal(whole, torch.cat([head, tail]))


def test_uniforms_look_uniform():
    u = philox_uniform(torch.tensor([5, 0]), 1 << 20).double()
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 4 * (1 / 12) ** 0.5 / 1024
    hist = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = ((hist - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # 15 degrees of freedom: p ~ 1e-4


def test_matches_triton_under_interpreter():
    """Our element 4k + j is word j of tl.randint4x(seed, k); word 0 mapped equals tl.rand(seed, k)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets the interpreter flag"
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def draw(words_ptr, rand_ptr, seed, counter0, BLOCK: tl.constexpr):
        k = tl.arange(0, BLOCK)
        counters = counter0 + k.to(tl.int64)
        w0, w1, w2, w3 = tl.randint4x(seed, counters)
        tl.store(words_ptr + 4 * k + 0, w0.to(tl.int32, bitcast=True))
        tl.store(words_ptr + 4 * k + 1, w1.to(tl.int32, bitcast=True))
        tl.store(words_ptr + 4 * k + 2, w2.to(tl.int32, bitcast=True))
        tl.store(words_ptr + 4 * k + 3, w3.to(tl.int32, bitcast=True))
        tl.store(rand_ptr + k, tl.rand(seed, counters))

    seed, counter0, block = 0x1234_5678_9ABC, 2**32 - 8, 64
    words = torch.empty(4 * block, dtype=torch.int32)
    rand = torch.empty(block, dtype=torch.float32)
    draw[(1,)](words, rand, seed, counter0, BLOCK=block)
    ours = philox_uniform(torch.tensor([seed, 4 * counter0]), 4 * block)
    assert torch.equal(ours[0::4], rand)
    folded = torch.where(words < 0, ~words, words)
    assert torch.equal(ours, folded.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32))
