"""CUDA time per kernel of one NHA prefill (torch profiler), for BENCHMARKS.md's breakdown.

    python benchmarks/profile_prefill.py [T] [W]      # default T=32768, W=64; bf16, 16 heads
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import nha_tvm


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
    W = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    H, K, M = 16, 128, 64
    q, k, v = (torch.randn(1, T, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, H, M, device="cuda")) / 8
    call = lambda: nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=10000.0)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    print(f"{torch.cuda.get_device_name()}  T={T} W={W}  (5 calls)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
