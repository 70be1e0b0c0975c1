"""Quick GPU timing of nha_attention / nha_decode at the benchmark shapes (CUDA events, median).

    python benchmarks/bench_quick.py            # prints a table
"""

import statistics

import torch

import nha_tvm


def time_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    dev, dt = "cuda", torch.bfloat16
    H, K, M = 16, 128, 64
    rows = []
    for W in (64, 512):
        for T in (2048, 8192, 32768):
            q, k, v = (torch.randn(1, T, H, K, device=dev, dtype=dt) for _ in range(3))
            g = torch.nn.functional.logsigmoid(torch.randn(1, T, H, M, device=dev)) / 8  # float32, as the layer makes it
            ms = time_ms(lambda: nha_tvm.nha_attention(q, k, v, g, window=W, rope_theta=10000.0))
            rows.append((f"prefill B=1 T={T} W={W}", ms))
    for B in (1, 32):
        cache = nha_tvm.NHACache.empty(B, H, K, K, M, 64, device=dev, dtype=dt)
        q, k, v = (torch.randn(B, H, K, device=dev, dtype=dt) for _ in range(3))
        g = torch.nn.functional.logsigmoid(torch.randn(B, H, M, device=dev)) / 8
        ms = time_ms(lambda: nha_tvm.nha_decode(q, k, v, g, cache, rope_theta=10000.0))
        rows.append((f"decode B={B} W=64", ms))
    print(f"{torch.cuda.get_device_name()}  bf16 q/k/v, float32 gates, H={H} K=V={K} M={M}")
    for name, ms in rows:
        print(f"{name:32s} {ms:9.3f} ms")


if __name__ == "__main__":
    main()
