"""Default schedules per target, dlight style: each rule handles the kernels it knows.

``rule_for(func, target)`` finds the target's rule for a kernel; ``default_schedule`` applies
it with every knob at its default. The tuning search (``nha-tune``) explores the knobs these rules fix.
"""

from tvm.s_tir import Schedule

from .base import ScheduleRule
from .cuda import RULES as CUDA_RULES
from .llvm import RULES as LLVM_RULES

RULES_BY_TARGET_KIND = {"cuda": CUDA_RULES, "llvm": LLVM_RULES}


def rule_for(func, target) -> ScheduleRule:
    """The rule of ``target`` that handles ``func`` (an unscheduled NHA PrimFunc)."""
    return rule_named(kernel_name(func), target)


def rule_named(kernel: str, target) -> ScheduleRule:
    """The rule of ``target`` that handles the kernel called ``kernel``."""
    kind = target.kind.name
    if kind not in RULES_BY_TARGET_KIND:
        raise ValueError(f"no schedules for target kind {kind!r}; supported: {sorted(RULES_BY_TARGET_KIND)}")
    for rule in RULES_BY_TARGET_KIND[kind]:
        if kernel in rule.kernels:
            return rule
    raise ValueError(f"no {kind} schedule rule handles kernel {kernel!r}")


def default_schedule(func, target) -> Schedule:
    """``func`` scheduled by its rule with every knob at its default."""
    return rule_for(func, target).apply(func, target)


def kernel_name(func) -> str:
    """The ``nha.kernel`` attribute that every kernel definition sets."""
    return str(func.attrs["nha.kernel"])


__all__ = ["CHUNK_SIZE", "ScheduleRule", "default_schedule", "kernel_name", "rule_for", "rule_named"]

# Tokens per chunk of the prefill passes: the state passes store one state per chunk, and the
# output pass reads it for the chunk's tokens (a thread per token in the portable kernel, a
# block per chunk and query head on CUDA). Fixed: every kernel of a prefill must agree on it.
CHUNK_SIZE = 64
