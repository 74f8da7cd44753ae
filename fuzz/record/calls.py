"""What the recorder knows about torch calls: the op vocabulary and helpers reading a call's arguments."""

from __future__ import annotations

import math
from typing import Iterator

import torch

# ops that only re-view or re-type their input: the producer passes through
_RESHAPE = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "t", "permute", "contiguous", "to", "type",
    "type_as", "float", "double", "half", "bfloat16", "unsqueeze", "squeeze", "flatten", "unflatten",
    "clone", "detach", "alias", "movedim", "moveaxis", "swapaxes", "swapdims", "__get__",
})
# ops that select or replicate: the producer passes through when the last axis is kept whole
_SELECT = frozenset({
    "getitem", "index_select", "narrow", "select", "expand", "expand_as", "broadcast_to", "repeat",
    "repeat_interleave", "tile", "chunk", "split", "split_with_sizes", "tensor_split", "unbind",
})
_ARITH = frozenset({"add", "sub", "mul", "truediv", "div", "floordiv", "matmul", "pow", "mod", "and", "or",
                    "xor", "lshift", "rshift"})
_ACTS = {"silu": "silu", "relu": "relu", "gelu": "gelu", "sigmoid": "sigmoid", "softplus": "softplus",
         "tanh": "tanh", "mish": "mish", "elu": "elu", "selu": "selu", "celu": "celu", "relu6": "relu6",
         "leaky_relu": "leaky_relu", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid"}
_NORM_FNS = frozenset({"layer_norm", "rms_norm", "group_norm"})
_NORMALISING = frozenset({"rsqrt", "sqrt", "norm", "var", "std", "var_mean"}) | _NORM_FNS


def _canon(func) -> tuple[str, bool, bool]:
    """``(base name, in place, reflected)`` of a torch callable: ``__iadd__`` -> ``("add", True, False)``."""
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        core = name[2:-2]
        if core == "get":
            return "__get__", False, False
        if core == "setitem":
            return "setitem", True, False
        if core[:1] == "r" and core[1:] in _ARITH:
            base = "div" if core[1:] == "truediv" else core[1:]
            return base, False, True
        if core[:1] == "i" and core[1:] in _ARITH:
            return ("div" if core[1:] == "truediv" else core[1:]), True, False
        return ("div" if core == "truediv" else core), False, False
    if name.endswith("_") and not name.startswith("_") and len(name) > 1:
        return name[:-1], True, False
    return ("div" if name == "true_divide" else name), False, False


def _tensors(obj) -> Iterator[torch.Tensor]:
    """The tensors in nested tuples / lists / dicts, in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _scalar(name: str, args, kwargs) -> float | None:
    """The single Python number operand of an arithmetic op, if any (``x * 0.5``, ``v + 1e-6``)."""
    if name not in _ARITH:
        return None
    nums = [a for a in list(args) + list(kwargs.values())
            if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return float(nums[0]) if len(nums) == 1 else None


def _arg(args, kwargs, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs.get(name)


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _key_repr(key) -> str:
    """``x[..., :32]`` style text of an indexing key."""
    def one(k):
        if k is Ellipsis:
            return "..."
        if k is None:
            return "None"
        if isinstance(k, slice):
            text = ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step))
            return text[:-1] if text.endswith(":") and k.step is None else text
        if isinstance(k, torch.Tensor):
            return f"<{'x'.join(map(str, k.shape)) or 'scalar'} tensor>"
        return repr(k)
    return ", ".join(one(k) for k in key) if isinstance(key, tuple) else one(key)


def _strided(key) -> bool:
    """Whether the key steps over the last axis (``x[..., ::2]``, the interleaved RoPE pairing)."""
    last = key[-1] if isinstance(key, tuple) and key else key
    return isinstance(last, slice) and last.step not in (None, 1)
