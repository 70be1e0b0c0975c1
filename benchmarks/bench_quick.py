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
        # steady state: a prefill of 2W tokens fills the window, so every step updates the slots
        W, T = 64, 128
        pk, pv = (torch.randn(B, T, H, K, device=dev, dtype=dt) for _ in range(2))
        pg = torch.nn.functional.logsigmoid(torch.randn(B, T, H, M, device=dev)) / 8
        _, state = nha_tvm.nha_attention(pk, pk, pv, pg, window=W, output_final_state=True)
        cache = nha_tvm.NHACache.from_prefill(pk, pv, pg, state, window=W)
        q, k, v = (torch.randn(B, H, K, device=dev, dtype=dt) for _ in range(3))
        g = torch.nn.functional.logsigmoid(torch.randn(B, H, M, device=dev)) / 8
        ms = time_ms(lambda: nha_tvm.nha_decode(q, k, v, g, cache, rope_theta=10000.0))
        rows.append((f"decode B={B} W={W} (window full)", ms))
    print(f"{torch.cuda.get_device_name()}  bf16 q/k/v, float32 gates, H={H} K=V={K} M={M}")
    for name, ms in rows:
        print(f"{name:32s} {ms:9.3f} ms")


if __name__ == "__main__":
    main()
