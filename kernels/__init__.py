"""Triton kernels of the l0fast ops, shipped as ``l0fast.kernels``.

One module per op family (``philox``, ``hard_concrete``, ``l0_penalty``,
``gated_spmv``, ``calibration``), each laid out kernel(s) first, then
launchers.  The launcher of op ``torch.ops.l0fast.<name>`` defined in
``l0fast/ops/<family>.py`` is ``l0fast.kernels.<family>.<name>``; the registry
imports it lazily, on the first CUDA tensor (or CPU tensor when
``L0FAST_BACKEND=triton`` under ``TRITON_INTERPRET=1``).  Importing this
package itself does not import Triton.
"""
