"""Our Triton kernels' launchers as torch.library custom ops for torch.compile, and plain calls everywhere else.

torch.compile(fullgraph=True) (DecodeParams(compile=...)) needs each launcher as a custom op with a fake (a function
that gives the output's shape): `kernel_op` registers it. Outside a compilation the launcher is called directly: a
custom op's first call imports torch._dynamo and sympy (about 900 modules: 1.8 s on a 2-core CPU, on the first
decode of a fresh process, before any kernel runs), and every call goes through the dispatcher, which a CUDA graph's
capture pays once per launch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch


def kernel_op(name: str, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Decorator: the launcher, registered as the custom op `name` (torch.ops.<namespace>.<op>), called as itself
    unless torch.compile is tracing. The result has the op's `register_fake` and the op itself as `op`."""

    def wrap(fn: Callable) -> Callable:
        op = torch.library.custom_op(name, mutates_args=tuple(mutates_args))(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return op(*args, **kwargs) if torch.compiler.is_compiling() else fn(*args, **kwargs)

        call.op, call.register_fake = op, op.register_fake
        return call

    return wrap
