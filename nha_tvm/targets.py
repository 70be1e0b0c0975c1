"""TVM targets for torch devices, and the names that key compiled modules by architecture."""

import functools

import torch
import tvm

# Targets carry the device limits that MetaSchedule and the CUDA codegen read
# (max_threads_per_block, shared memory); a bare {"kind": "cuda"} lacks them.
CUDA_TAGS = {(9, 0): "nvidia/nvidia-h100", (8, 0): "nvidia/nvidia-a100"}


def cpu_target() -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm"})


def capability(arch: str) -> tuple[int, int]:
    """(major, minor) of an ``sm_XY`` architecture."""
    return int(arch[3:-1]), int(arch[-1])


def cuda_target(arch: str) -> tvm.target.Target:
    """Target for an ``sm_XY`` architecture: the TVM tag where one exists, else the limits
    every CUDA GPU since sm_70 has."""
    tag = CUDA_TAGS.get(capability(arch))
    if tag is not None:
        return tvm.target.Target(tag)
    return tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                              "max_shared_memory_per_block": 49152, "thread_warp_size": 32})


@functools.lru_cache(maxsize=None)
def _cuda_arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def arch_name(device: torch.device) -> str:
    """``cpu`` or ``sm_XY``: the folder name of tuning logs and the arch part of cache keys."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        return _cuda_arch(_cuda_index(device))
    raise ValueError(f"unsupported device {device}: nha_tvm runs on cpu and cuda")


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The SMs of a CUDA device (asked once per device: prefill reads it on every call)."""
    return _cuda_sms(_cuda_index(device))


# Dynamic shared memory one thread block may opt into, by compute capability (CUDA guide,
# "Technical Specifications"); an arch not listed gets the 48 KB every GPU has.
MAX_SHARED_BYTES = {(7, 0): 96 << 10, (7, 5): 64 << 10, (8, 0): 163 << 10, (8, 6): 99 << 10,
                    (8, 7): 163 << 10, (8, 9): 99 << 10, (9, 0): 227 << 10}


def max_shared_bytes(arch: str) -> int:
    return MAX_SHARED_BYTES.get(capability(arch), 48 << 10)


# Resident threads per SM, by compute capability (the same table); an arch not listed gets
# the 1024 of the smallest.
MAX_THREADS_PER_SM = {(7, 0): 2048, (7, 5): 1024, (8, 0): 2048, (8, 6): 1536, (8, 7): 2048,
                      (8, 9): 1536, (9, 0): 2048}


def max_threads_per_sm(arch: str) -> int:
    return MAX_THREADS_PER_SM.get(capability(arch), 1024)


def target_for(arch: str) -> tvm.target.Target:
    return cpu_target() if arch == "cpu" else cuda_target(arch)
