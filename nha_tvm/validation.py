"""Input checks of the public API: every error names the argument and what was expected.

They run before any kernel, on shapes, dtypes and devices only (so they trace under
``torch.compile``); the value checks of ``cu_seqlens`` read the tensor and are skipped while
compiling or capturing a CUDA graph.
"""

import torch

SUPPORTED_DTYPES = {
    "cpu": (torch.float32,),
    "cuda": (torch.float32, torch.bfloat16, torch.float16),
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(name: str, x, rank: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got {tuple(x.shape)}")


def check_dim(name: str, x: torch.Tensor, dim: int, expected: int, label: str, layout: str) -> None:
    if x.shape[dim] != expected:
        raise ValueError(f"{name} must have shape {layout} with {label} = {expected}, got {tuple(x.shape)}")


def check_device_and_dtype(named: dict, *, same_dtype: tuple[str, ...]) -> None:
    """All tensors on one supported device, each of a supported dtype; ``same_dtype`` share one."""
    first_name, first = next(iter(named.items()))
    device = first.device
    if device.type not in SUPPORTED_DTYPES:
        raise ValueError(f"{first_name} is on {device}; nha_tvm runs on cpu and cuda")
    allowed = SUPPORTED_DTYPES[device.type]
    for name, x in named.items():
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but {first_name} is on {device}: all tensors must be on one device")
        if x.dtype not in allowed:
            names = ", ".join(dtype_name(d) for d in allowed)
            raise TypeError(f"{name} has dtype {x.dtype}; supported on {device.type}: {names}")
    dtypes = {named[n].dtype for n in same_dtype}
    if len(dtypes) > 1:
        raise TypeError(f"{', '.join(same_dtype)} must share one dtype, got "
                        + ", ".join(f"{n}={named[n].dtype}" for n in same_dtype))


# The kernels index every buffer with 32-bit integers.
INDEX_LIMIT = 2**31


def check_positive(**dims) -> None:
    for name, value in dims.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_index_range(**element_counts) -> None:
    """Every buffer a kernel touches must have fewer than 2**31 elements."""
    for what, count in element_counts.items():
        if count >= INDEX_LIMIT:
            raise ValueError(f"{what.replace('_', ' ')} would have {count} elements; the kernels index "
                             f"with 32 bits (< 2**31 elements): split the batch or the sequence")


def check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int >= 0, got {window!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")


def check_scalars(scale, rope_theta, head_dim: int) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None, got {scale!r}")
    if rope_theta is not None:
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or rope_theta <= 0:
            raise ValueError(f"rope_theta must be a positive float or None, got {rope_theta!r}")
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even key dim K, got K = {head_dim}")


def check_common(q, k, v, g, s, *, s_layout: str, cache_ring=None) -> None:
    """What prefill and decode share: s (when given) shaped like g; every tensor on one device;
    q, k, v (and the cache's ring) of one dtype, g and s of one dtype. Inputs that require grad
    are refused by the ops themselves (``torch_ops``: ``check_no_grad``)."""
    if s is not None:
        check_tensor("s", s, g.dim(), s_layout)
        if s.shape != g.shape:
            raise ValueError(f"s must have the shape of g {tuple(g.shape)}, got {tuple(s.shape)}")
    named = {"q": q, "k": k, "v": v, "g": g} | ({"s": s} if s is not None else {})
    if cache_ring is None:
        check_device_and_dtype(named, same_dtype=("q", "k", "v"))
    else:
        check_device_and_dtype(named | {"cache": cache_ring}, same_dtype=("q", "k", "v", "cache"))
    if s is not None:
        check_device_and_dtype({"g": g, "s": s}, same_dtype=("g", "s"))


def check_no_grad(tensors) -> None:
    """Refuses, in grad mode, any of ``tensors`` (None allowed) that requires grad."""
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        raise NotImplementedError("nha_tvm kernels have no backward pass yet: call them under "
                                  "torch.no_grad() or on tensors that do not require grad")


def check_cu_seqlens(cu_seqlens, batch: int, length: int, device: torch.device) -> int:
    """Check cu_seqlens and return the number of sequences N."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be an int32/int64 tensor of shape [N + 1], got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be an int32 or int64 tensor, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T: q must have batch 1, got {batch}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
    if not _can_read_values(cu_seqlens):
        return cu_seqlens.shape[0] - 1
    values = cu_seqlens.tolist()
    if values[0] != 0 or values[-1] != length:
        raise ValueError(f"cu_seqlens must start at 0 and end at T = {length}, got {values[0]} ... {values[-1]}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {values}")
    return len(values) - 1


def _can_read_values(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_state(name: str, state, shapes: tuple, device: torch.device) -> None:
    """A pair (hk [N, H, K, M], hv [N, H, M, V]) of float32 tensors."""
    layouts = ("[N, H, K, M]", "[N, H, M, V]")
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be a pair (hk {layouts[0]}, hv {layouts[1]}), got {type(state).__name__}")
    for part, x, shape, layout in zip(("hk", "hv"), state, shapes, layouts):
        check_tensor(f"{name}[{part}]", x, 4, layout)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{name}[{part}] must have shape {layout} = {tuple(shape)}, got {tuple(x.shape)}")
        if x.dtype != torch.float32:
            raise TypeError(f"{name}[{part}] must be float32, got {x.dtype}")
        if x.device != device:
            raise ValueError(f"{name}[{part}] is on {x.device} but q is on {device}")
