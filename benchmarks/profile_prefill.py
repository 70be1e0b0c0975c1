"""CUDA time per kernel of one NHA prefill (torch profiler), for BENCHMARKS.md's breakdown.

    python benchmarks/profile_prefill.py [T] [W]      # default T=32768, W=64

The inputs are those of bench_peers.py's full plan (its head sizes, gates and RoPE), B = 1.
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from measure import PrefillCase, make_plan, setup_for
from peers import nha_prefill


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
    W = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    call = nha_prefill(PrefillCase(1, T, W), setup_for(make_plan("full"), torch.device("cuda")))[0]
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
