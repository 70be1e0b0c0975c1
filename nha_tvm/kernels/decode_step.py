"""One decode step for a batch: slot update, window ring write, read-out, position advance.

The cache holds the slot memories hk [B, H, K, M], hv [B, H, M, V] (float32), a ring of R >= W
entries with the last W tokens' k, v (io dtype) and g, s (float32), and the position of the
next token per sequence. Step t (spec, "Decode"): the token t - W leaves the window (for W = 0
that is token t itself) and updates the slots with its own g and s; token t takes its ring
entry (the one just freed, t % W); then the read-out of the spec. The blocks below run in that
order (one kernel each on a GPU), so no thread reads a ring entry while another overwrites it.
RoPE, when on, is applied on the fly to q at position t and to each window key at its position.
"""

from tvm.script import tirx as T

from .write_strength import write_strength


def decode_step(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str, gate_dtype: str):
    """Build the decode step. Arguments: q [B, HQ, K], k [B, H, K], v [B, H, V], g and s
    [B, H, M], the cache (hk, hv, ring_k [B, R, H, K], ring_v [B, R, H, V], ring_g and ring_s
    [B, R, H, M], pos [B] int32), the output o [B, HQ, V], then window, scale, use_rope, theta
    and s_from_g (nonzero: s is 1 - exp(g), see ``write_strength``).
    """
    group = HQ // H
    half = K // 2

    @T.prim_func(s_tir=True)
    def func(
        q_h: T.handle, k_h: T.handle, v_h: T.handle, g_h: T.handle, s_h: T.handle,
        hk_h: T.handle, hv_h: T.handle, ring_k_h: T.handle, ring_v_h: T.handle,
        ring_g_h: T.handle, ring_s_h: T.handle, pos_h: T.handle, o_h: T.handle,
        window: T.int32, scale: T.float32, use_rope: T.int32, theta: T.float32, s_from_g: T.int32,
    ):
        T.func_attr({"global_symbol": "decode_step", "tirx.noalias": True,
                     "nha.kernel": "decode_step"})
        B = T.int32()
        R = T.int32()
        q = T.match_buffer(q_h, (B, HQ, K), io_dtype)
        k = T.match_buffer(k_h, (B, H, K), io_dtype)
        v = T.match_buffer(v_h, (B, H, V), io_dtype)
        g = T.match_buffer(g_h, (B, H, M), gate_dtype)
        s = T.match_buffer(s_h, (B, H, M), gate_dtype)
        hk = T.match_buffer(hk_h, (B, H, K, M), "float32")
        hv = T.match_buffer(hv_h, (B, H, M, V), "float32")
        ring_k = T.match_buffer(ring_k_h, (B, R, H, K), io_dtype)
        ring_v = T.match_buffer(ring_v_h, (B, R, H, V), io_dtype)
        ring_g = T.match_buffer(ring_g_h, (B, R, H, M), "float32")
        ring_s = T.match_buffer(ring_s_h, (B, R, H, M), "float32")
        pos = T.match_buffer(pos_h, (B,), "int32")
        o = T.match_buffer(o_h, (B, HQ, V), io_dtype)

        # 1. the token leaving the window enters the slots (ring entry t % W, or token t if W = 0)
        for b, h, i, m in T.grid(B, H, K, M):
            with T.sblock("key_update"):
                vb, vh, vi, vm = T.axis.remap("SSSS", [b, h, i, m])
                # in-place element update: hk is read where it is written, by the same thread,
                # so only the other inputs are declared (the schedule needs disjoint reads/writes)
                T.reads(pos[vb], g[vb, vh, vm], k[vb, vh, vi], ring_g[vb, 0:R, vh, vm],
                        ring_k[vb, 0:R, vh, vi], ring_s[vb, 0:R, vh, vm], s[vb, vh, vm])
                T.writes(hk[vb, vh, vi, vm])
                if pos[vb] >= window:
                    if window == 0:
                        hk[vb, vh, vi, vm] = hk[vb, vh, vi, vm] * T.exp(T.Cast("float32", g[vb, vh, vm])) + (
                            T.Cast("float32", k[vb, vh, vi]) * write_strength(s[vb, vh, vm], g[vb, vh, vm], s_from_g))
                    else:
                        hk[vb, vh, vi, vm] = hk[vb, vh, vi, vm] * T.exp(ring_g[vb, pos[vb] % T.max(window, 1), vh, vm]) + (
                            T.Cast("float32", ring_k[vb, pos[vb] % T.max(window, 1), vh, vi]) * ring_s[vb, pos[vb] % T.max(window, 1), vh, vm])
        for b, h, m, e in T.grid(B, H, M, V):
            with T.sblock("value_update"):
                vb, vh, vm, ve = T.axis.remap("SSSS", [b, h, m, e])
                T.reads(pos[vb], g[vb, vh, vm], v[vb, vh, ve], ring_g[vb, 0:R, vh, vm],
                        ring_v[vb, 0:R, vh, ve], ring_s[vb, 0:R, vh, vm], s[vb, vh, vm])
                T.writes(hv[vb, vh, vm, ve])
                if pos[vb] >= window:
                    if window == 0:
                        hv[vb, vh, vm, ve] = hv[vb, vh, vm, ve] * T.exp(T.Cast("float32", g[vb, vh, vm])) + (
                            write_strength(s[vb, vh, vm], g[vb, vh, vm], s_from_g) * T.Cast("float32", v[vb, vh, ve]))
                    else:
                        hv[vb, vh, vm, ve] = hv[vb, vh, vm, ve] * T.exp(ring_g[vb, pos[vb] % T.max(window, 1), vh, vm]) + (
                            ring_s[vb, pos[vb] % T.max(window, 1), vh, vm] * T.Cast("float32", ring_v[vb, pos[vb] % T.max(window, 1), vh, ve]))
        # 2. token t takes the freed ring entry
        for b, h, i in T.grid(B, H, K):
            with T.sblock("ring_write_k"):
                vb, vh, vi = T.axis.remap("SSS", [b, h, i])
                if window > 0:
                    ring_k[vb, pos[vb] % T.max(window, 1), vh, vi] = k[vb, vh, vi]
        for b, h, e in T.grid(B, H, V):
            with T.sblock("ring_write_v"):
                vb, vh, ve = T.axis.remap("SSS", [b, h, e])
                if window > 0:
                    ring_v[vb, pos[vb] % T.max(window, 1), vh, ve] = v[vb, vh, ve]
        for b, h, m in T.grid(B, H, M):
            with T.sblock("ring_write_gate"):
                vb, vh, vm = T.axis.remap("SSS", [b, h, m])
                if window > 0:
                    ring_g[vb, pos[vb] % T.max(window, 1), vh, vm] = T.Cast("float32", g[vb, vh, vm])
                    ring_s[vb, pos[vb] % T.max(window, 1), vh, vm] = write_strength(s[vb, vh, vm], g[vb, vh, vm], s_from_g)
        # 3. read-out: M slot logits and the window keys in one online softmax
        for b, hq in T.grid(B, HQ):
            with T.sblock("attend"):
                vb, vhq = T.axis.remap("SS", [b, hq])
                qf = T.sblock_alloc_buffer((K,), "float32", scope="local")
                qrot = T.sblock_alloc_buffer((K,), "float32", scope="local")
                p = T.sblock_alloc_buffer((M,), "float32", scope="local")
                acc = T.sblock_alloc_buffer((V,), "float32", scope="local")
                # scalars: 0 running max, 1 denominator, 2 dot product, 3 weight, 4 rescale
                sc = T.sblock_alloc_buffer((5,), "float32", scope="local")
                h: T.let[T.int32] = vhq // group
                t: T.let[T.int32] = pos[vb]
                for i in T.serial(K):
                    qf[i] = T.Cast("float32", q[vb, vhq, i])
                for i in T.serial(K):
                    if use_rope != 0:
                        qrot[i] = qf[i] * T.cos(T.Cast("float32", t) * T.pow(theta, T.Cast("float32", -2 * (i % half)) / T.float32(K))) + (
                            qf[(i + half) % K] * T.if_then_else(i < half, T.float32(-1), T.float32(1))
                            * T.sin(T.Cast("float32", t) * T.pow(theta, T.Cast("float32", -2 * (i % half)) / T.float32(K))))
                    else:
                        qrot[i] = qf[i]
                for m in T.serial(M):
                    p[m] = T.float32(0)
                for i, m in T.grid(K, M):
                    p[m] = p[m] + qf[i] * hk[vb, h, i, m]
                sc[0] = T.float32(-3.0e38)
                for m in T.serial(M):
                    p[m] = p[m] * scale
                    sc[0] = T.max(sc[0], p[m])
                sc[1] = T.float32(0)
                for m in T.serial(M):
                    p[m] = T.exp(p[m] - sc[0])
                    sc[1] = sc[1] + p[m]
                for e in T.serial(V):
                    acc[e] = T.float32(0)
                for m, e in T.grid(M, V):
                    acc[e] = acc[e] + p[m] * hv[vb, h, m, e]
                for w in T.serial(T.min(window, t + 1)):
                    sc[2] = T.float32(0)
                    for i in T.serial(K):
                        if use_rope != 0:
                            sc[2] = sc[2] + qrot[i] * (
                                T.Cast("float32", ring_k[vb, (t - w) % T.max(window, 1), h, i])
                                * T.cos(T.Cast("float32", t - w) * T.pow(theta, T.Cast("float32", -2 * (i % half)) / T.float32(K)))
                                + T.Cast("float32", ring_k[vb, (t - w) % T.max(window, 1), h, (i + half) % K])
                                * T.if_then_else(i < half, T.float32(-1), T.float32(1))
                                * T.sin(T.Cast("float32", t - w) * T.pow(theta, T.Cast("float32", -2 * (i % half)) / T.float32(K))))
                        else:
                            sc[2] = sc[2] + qrot[i] * T.Cast("float32", ring_k[vb, (t - w) % T.max(window, 1), h, i])
                    sc[2] = sc[2] * scale
                    if sc[2] > sc[0]:
                        sc[4] = T.exp(sc[0] - sc[2])
                        sc[1] = sc[1] * sc[4]
                        for e in T.serial(V):
                            acc[e] = acc[e] * sc[4]
                        sc[0] = sc[2]
                    sc[3] = T.exp(sc[2] - sc[0])
                    sc[1] = sc[1] + sc[3]
                    for e in T.serial(V):
                        acc[e] = acc[e] + sc[3] * T.Cast("float32", ring_v[vb, (t - w) % T.max(window, 1), h, e])
                for e in T.serial(V):
                    o[vb, vhq, e] = T.Cast(io_dtype, acc[e] / sc[1])
        # 4. advance the position
        for b in T.serial(B):
            with T.sblock("advance"):
                vb = T.axis.remap("S", [b])
                T.reads()
                T.writes(pos[vb])
                pos[vb] = pos[vb] + 1

    return func
