"""Decode step (GPU): one thread block per (sequence b, kv head h), the state read and written once.

Same arguments and semantics as the portable ``decode_step`` (spec, "Decode"), with the thread
mapping written out, like TVM's own LLM decode kernels, so no schedule is needed. Block (b, h)
owns hk[b, h], hv[b, h] and the ring entries ring_*[b, :, h]; no other block touches them, so
the only datum shared between blocks is pos[b], which a second kernel advances afterwards.

512 threads (tx) per block (256 for GQA groups above 4), in phases separated by block barriers:

1. The first batch of the slot states is loaded into registers (it does not depend on the
   step), then what the step reads more than once is staged in shared memory: the leaving
   token (ring entry t % W, or the new token itself when W = 0) as exp(g), s, k, v -- decay 1
   and zeros when no token leaves (t < W) -- the queries of the GQA group, raw and RoPE'd at t,
   and the RoPE frequencies. A barrier: every read of the leaving ring entry is done.
2. The new token takes ring entry t % W. The states stream through once: thread tx owns the
   flat elements j * THREADS + tx of hk[b, h] and hv[b, h] (coalesced), loaded a batch of
   registers at a time, updated (hk = hk exp(g) + k s^T, hv = hv exp(g) + s v^T), kept in
   shared memory for the read-out and written back to global memory when a token left.
3. Read-out, all query heads of the group at once (states and window keys are read once):
   - slot logits: thread (part, m) sums q . hk[:, m] over rows i = part (mod parts); the
     parts are added through shared memory;
   - one softmax over the M slots and the window, online: every thread derives the same
     running max from the logits in shared memory, so the partial sums of different threads
     add up without rescaling at the end;
   - window keys in tiles of 64 (any window length): thread (key, part), KEY_PARTS per key
     (8 with 512 threads, 4 with 256), takes the pairs (i, i + K/2), i = part (mod
     KEY_PARTS), applies RoPE at the key's position and dots them with the RoPE'd queries;
     every key load is issued before any is used (clamped indices, no branch); the partials
     meet in shared memory;
   - read-out: thread (part, e) accumulates o[e] over the slots and keys = part (mod parts)
     with e along the contiguous value axis (coalesced ring reads); a tile's values are
     loaded before its logits are computed, so the loads overlap;
   - the parts of o and of the softmax denominators are summed through shared memory.
4. A second kernel advances pos (stream order puts it after every block of the first).

Shared memory: the states, K*M + M*V floats (64 KB at K=V=128, M=64), are dynamic shared
memory (TVM raises the launch limit above 48 KB); the small buffers are static, 9.5 KB at that
shape with 512 threads (ptxas: 9,536 B) plus about 7.7 KB per further query head of a group,
or 6.4 KB plus 4.5 KB a head with 256 threads (so at most 10 query heads per kv head). Two
blocks fit on an SM there (64 registers per thread, ptxas). TVM's barrier planner cannot put a
barrier inside a branch: no branch below reads shared memory and then writes it in a later
statement.
"""

import functools
import math
import operator

from tvm.script import tirx as T

from ..write_strength import write_strength
from .layout import STATIC_SHARED_LIMIT, ceil_div


TILE_KEYS = 64  # window keys per tile
STATE_BATCH = 16  # state elements per thread loaded before they are updated (registers)
NEG = -1.0e30  # a masked logit: exp(NEG - max) == 0 without inf - inf


def ring_entry_back(entry, back, window):
    """The ring entry of token t - back, given t's entry (t mod W) and 0 <= back < W: a
    subtraction instead of a modulo by the runtime W, and arithmetic instead of a branch."""
    return entry - back + T.Cast("int32", entry < back) * window


def total(terms):
    """The sum of ``terms`` as one expression, so that a branch reading shared memory and
    writing it does both in one statement (TVM cannot put a barrier in a branch)."""
    return functools.reduce(operator.add, terms)


def decode_step_cuda(*, HQ: int, H: int, K: int, V: int, M: int, io_dtype: str, gate_dtype: str):
    """Build the decode step; arguments as ``nha_tvm.kernels.decode_step.decode_step``: q
    [B, HQ, K], k [B, H, K], v [B, H, V], g and s [B, H, M], the cache (hk, hv, ring_k
    [B, R, H, K], ring_v [B, R, H, V], ring_g and ring_s [B, R, H, M], pos [B] int32), the
    output o [B, HQ, V], then window, scale, use_rope, theta, s_from_g."""
    if HQ % H or K % 2 or V % 2 or M < 1:
        raise ValueError(f"need HQ % H == 0, K and V even, M >= 1; got HQ={HQ} H={H} K={K} V={V} M={M}")
    group = HQ // H
    half = K // 2
    # more threads share the fixed latency of a step's phases; a large GQA group keeps 256
    # so that its per-head buffers fit the 48 KB of static shared memory
    THREADS = 512 if group <= 4 else 256
    KEY_PARTS = THREADS // TILE_KEYS  # threads per window key in the logit dot products
    pairs_per_part = ceil_div(half, KEY_PARTS)
    # read-out: value_parts threads per value column, each over every value_parts-th slot / key
    value_lanes = min(V, THREADS)
    value_parts = THREADS // value_lanes
    value_cols = ceil_div(V, value_lanes)
    readers = value_parts * value_lanes
    slots_per_reader = ceil_div(M, value_parts)
    keys_per_reader = ceil_div(TILE_KEYS, value_parts)
    # slot logits: slot_parts threads per slot, each over every slot_parts-th row of hk
    slot_lanes = min(M, THREADS)
    slot_parts = min(THREADS // slot_lanes, K)
    slot_cols = ceil_div(M, slot_lanes)
    rows_per_part = ceil_div(K, slot_parts)
    # the states: element j * THREADS + tx of hk[b, h] and hv[b, h] (flat) for thread tx
    hk_steps = ceil_div(K * M, THREADS)
    hv_steps = ceil_div(M * V, THREADS)
    state_batch = min(STATE_BATCH, max(hk_steps, hv_steps))
    state_batches = ceil_div(max(hk_steps, hv_steps), state_batch)
    # the small shared buffers, static shared memory (48 KB at most; 64-byte aligned), counted
    # without the space TVM's storage rewrite may share between them, as builds may disable it
    small = {
        "decay": (M,), "strength": (M,), "leaving_k": (K,), "leaving_v": (V,), "inv_freq": (half,),
        "q": (group, K), "q_rot": (group, K), "slot_part": (slot_parts, group, slot_cols * slot_lanes),
        "slot_logit": (group, M), "key_part": (group, THREADS), "key_logit": (group, TILE_KEYS),
        "out_part": (group, value_parts, V), "den_part": (group, value_parts),
    }
    static_bytes = sum(ceil_div(4 * math.prod(shape), 64) * 64 for shape in small.values())
    if static_bytes > STATIC_SHARED_LIMIT:
        raise ValueError(f"{group} query heads per kv head at K={K}, V={V}, M={M} need {static_bytes} bytes "
                         "of static shared memory, more than 48 KB")

    @T.macro
    def load_state_batch(batch, hk, hv, hk_regs, hv_regs, b, h, tx):
        """Elements (batch * state_batch + j) * THREADS + tx of hk[b, h] and hv[b, h] (flat),
        j < state_batch, into registers: all of a batch's loads are in flight together."""
        for j in T.unroll(state_batch):
            if (batch * state_batch + j) * THREADS + tx < K * M:
                hk_regs[j] = hk[b, h, ((batch * state_batch + j) * THREADS + tx) // M,
                                ((batch * state_batch + j) * THREADS + tx) % M]
            if (batch * state_batch + j) * THREADS + tx < M * V:
                hv_regs[j] = hv[b, h, ((batch * state_batch + j) * THREADS + tx) // V,
                                ((batch * state_batch + j) * THREADS + tx) % V]

    @T.macro
    def stage_leaving(dst, width, new, ring, leaves, window, b, h, entry, tx):
        """The leaving token's row (ring entry ``entry``, or the new token when W = 0; zeros
        when none leaves) into ``dst`` in float32."""
        for j in T.unroll(ceil_div(width, THREADS)):
            if j * THREADS + tx < width:
                if leaves == 0:
                    dst[j * THREADS + tx] = T.float32(0)
                elif window == 0:
                    dst[j * THREADS + tx] = T.Cast("float32", new[b, h, j * THREADS + tx])
                else:
                    dst[j * THREADS + tx] = T.Cast("float32", ring[b, entry, h, j * THREADS + tx])

    @T.macro
    def write_ring(ring, width, new, b, h, entry, tx):
        """The new token's row into ring entry ``entry``."""
        for j in T.unroll(ceil_div(width, THREADS)):
            if j * THREADS + tx < width:
                ring[b, entry, h, j * THREADS + tx] = new[b, h, j * THREADS + tx]

    @T.prim_func(s_tir=True)
    def func(
        q_h: T.handle, k_h: T.handle, v_h: T.handle, g_h: T.handle, s_h: T.handle,
        hk_h: T.handle, hv_h: T.handle, ring_k_h: T.handle, ring_v_h: T.handle,
        ring_g_h: T.handle, ring_s_h: T.handle, pos_h: T.handle, o_h: T.handle,
        window: T.int32, scale: T.float32, use_rope: T.int32, theta: T.float32, s_from_g: T.int32,
    ):
        T.func_attr({"global_symbol": "decode_step_cuda", "tirx.noalias": True,
                     "nha.kernel": "decode_step_cuda"})
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

        for bh in T.thread_binding(B * H, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                with T.sblock("step"):
                    T.reads(q[0:B, 0:HQ, 0:K], k[0:B, 0:H, 0:K], v[0:B, 0:H, 0:V],
                            g[0:B, 0:H, 0:M], s[0:B, 0:H, 0:M], hk[0:B, 0:H, 0:K, 0:M],
                            hv[0:B, 0:H, 0:M, 0:V], ring_k[0:B, 0:R, 0:H, 0:K],
                            ring_v[0:B, 0:R, 0:H, 0:V], ring_g[0:B, 0:R, 0:H, 0:M],
                            ring_s[0:B, 0:R, 0:H, 0:M], pos[0:B])
                    T.writes(hk[0:B, 0:H, 0:K, 0:M], hv[0:B, 0:H, 0:M, 0:V],
                             ring_k[0:B, 0:R, 0:H, 0:K], ring_v[0:B, 0:R, 0:H, 0:V],
                             ring_g[0:B, 0:R, 0:H, 0:M], ring_s[0:B, 0:R, 0:H, 0:M],
                             o[0:B, 0:HQ, 0:V])
                    # the states are the only large buffers: dynamic shared memory (above 48 KB);
                    # the rest is static, where TVM's barrier planner tells buffers apart (it
                    # treats all dynamic buffers as one and would add needless barriers)
                    hk_s = T.sblock_alloc_buffer((K * M,), "float32", scope="shared.dyn")
                    hv_s = T.sblock_alloc_buffer((M * V,), "float32", scope="shared.dyn")
                    decay_s = T.sblock_alloc_buffer(small["decay"], "float32", scope="shared")
                    strength_s = T.sblock_alloc_buffer(small["strength"], "float32", scope="shared")
                    leaving_k_s = T.sblock_alloc_buffer(small["leaving_k"], "float32", scope="shared")
                    leaving_v_s = T.sblock_alloc_buffer(small["leaving_v"], "float32", scope="shared")
                    inv_freq_s = T.sblock_alloc_buffer(small["inv_freq"], "float32", scope="shared")
                    q_s = T.sblock_alloc_buffer(small["q"], "float32", scope="shared")
                    q_rot_s = T.sblock_alloc_buffer(small["q_rot"], "float32", scope="shared")
                    slot_part_s = T.sblock_alloc_buffer(small["slot_part"], "float32", scope="shared")
                    slot_logit_s = T.sblock_alloc_buffer(small["slot_logit"], "float32", scope="shared")
                    key_part_s = T.sblock_alloc_buffer(small["key_part"], "float32", scope="shared")
                    key_logit_s = T.sblock_alloc_buffer(small["key_logit"], "float32", scope="shared")
                    out_part_s = T.sblock_alloc_buffer(small["out_part"], "float32", scope="shared")
                    den_part_s = T.sblock_alloc_buffer(small["den_part"], "float32", scope="shared")
                    # per thread; every index below is a constant after unrolling (registers)
                    hk_regs = T.sblock_alloc_buffer((state_batch,), "float32", scope="local")
                    hv_regs = T.sblock_alloc_buffer((state_batch,), "float32", scope="local")
                    dot = T.sblock_alloc_buffer((group,), "float32", scope="local")
                    tile_v = T.sblock_alloc_buffer((keys_per_reader * value_cols,), "float32", scope="local")
                    acc = T.sblock_alloc_buffer((group * value_cols,), "float32", scope="local")
                    run_max = T.sblock_alloc_buffer((group,), "float32", scope="local")
                    new_max = T.sblock_alloc_buffer((group,), "float32", scope="local")
                    den = T.sblock_alloc_buffer((group,), "float32", scope="local")
                    # scalars computed from buffers are registers, not T.let bindings (TVM's
                    # shared-memory merge pass rejects loads of the kernel's buffers outside stores)
                    key_angle = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    key_raw = T.sblock_alloc_buffer((2 * pairs_per_part,), "float32", scope="local")  # pairs (i, i + K/2)
                    key_rot = T.sblock_alloc_buffer((2,), "float32", scope="local")  # ... with RoPE
                    weight = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    rescale = T.sblock_alloc_buffer((1,), "float32", scope="local")
                    ring_pos = T.sblock_alloc_buffer((2,), "int32", scope="local")  # entries of t, of a key

                    b: T.let[T.int32] = bh // H
                    h: T.let[T.int32] = bh % H
                    t: T.let[T.int32] = pos[b]
                    entry: T.let[T.int32] = t % T.max(window, 1)  # ring entry of t and of t - W
                    leaves: T.let[T.int32] = T.if_then_else(t >= window, 1, 0)
                    n_window: T.let[T.int32] = T.min(window, t + 1)
                    slot_part: T.let[T.int32] = tx // slot_lanes
                    slot_lane: T.let[T.int32] = tx % slot_lanes
                    key_slot: T.let[T.int32] = tx // KEY_PARTS  # this thread's key in a tile
                    key_part: T.let[T.int32] = tx % KEY_PARTS
                    reader_part: T.let[T.int32] = tx // value_lanes
                    reader_lane: T.let[T.int32] = tx % value_lanes

                    # the first batch of the states does not depend on the step: its loads go first
                    load_state_batch(0, hk, hv, hk_regs, hv_regs, b, h, tx)

                    # ---- 1. stage the leaving token, the queries and the RoPE frequencies ----
                    for j in T.unroll(ceil_div(M, THREADS)):
                        if j * THREADS + tx < M:
                            if leaves == 0:
                                decay_s[j * THREADS + tx] = T.float32(1)
                                strength_s[j * THREADS + tx] = T.float32(0)
                            elif window == 0:
                                decay_s[j * THREADS + tx] = T.exp(T.Cast("float32", g[b, h, j * THREADS + tx]))
                                strength_s[j * THREADS + tx] = write_strength(s[b, h, j * THREADS + tx], g[b, h, j * THREADS + tx], s_from_g)
                            else:
                                decay_s[j * THREADS + tx] = T.exp(ring_g[b, entry, h, j * THREADS + tx])
                                strength_s[j * THREADS + tx] = ring_s[b, entry, h, j * THREADS + tx]
                    stage_leaving(leaving_k_s, K, k, ring_k, leaves, window, b, h, entry, tx)
                    stage_leaving(leaving_v_s, V, v, ring_v, leaves, window, b, h, entry, tx)
                    for j in T.unroll(ceil_div(half, THREADS)):
                        if j * THREADS + tx < half:
                            inv_freq_s[j * THREADS + tx] = T.pow(
                                theta, T.Cast("float32", -2 * (j * THREADS + tx)) / T.float32(K))
                    # thread (head, pair i) loads q[i], q[i + K/2] and rotates them to position t
                    for j in T.unroll(ceil_div(group * half, THREADS)):
                        if j * THREADS + tx < group * half:
                            qg: T.let[T.int32] = (j * THREADS + tx) // half
                            i: T.let[T.int32] = (j * THREADS + tx) % half
                            q_lo: T.let[T.float32] = T.Cast("float32", q[b, h * group + qg, i])
                            q_hi: T.let[T.float32] = T.Cast("float32", q[b, h * group + qg, i + half])
                            q_s[qg, i] = q_lo
                            q_s[qg, i + half] = q_hi
                            if use_rope != 0:
                                angle: T.let[T.float32] = T.Cast("float32", t) * T.pow(
                                    theta, T.Cast("float32", -2 * i) / T.float32(K))
                                q_rot_s[qg, i] = q_lo * T.cos(angle) - q_hi * T.sin(angle)
                                q_rot_s[qg, i + half] = q_hi * T.cos(angle) + q_lo * T.sin(angle)
                            else:
                                q_rot_s[qg, i] = q_lo
                                q_rot_s[qg, i + half] = q_hi
                    # every thread has read the leaving ring entry before any overwrites it
                    T.tvm_storage_sync("shared")

                    # ---- 2. the new token takes the freed ring entry; the slots take the leaving one ----
                    if window > 0:
                        write_ring(ring_k, K, k, b, h, entry, tx)
                        write_ring(ring_v, V, v, b, h, entry, tx)
                        for j in T.unroll(ceil_div(M, THREADS)):
                            if j * THREADS + tx < M:
                                ring_g[b, entry, h, j * THREADS + tx] = T.Cast("float32", g[b, h, j * THREADS + tx])
                                ring_s[b, entry, h, j * THREADS + tx] = write_strength(s[b, h, j * THREADS + tx], g[b, h, j * THREADS + tx], s_from_g)
                    # the states stream through in batches of registers; with decay 1 and zero
                    # inputs (no token leaves) a state passes through exactly
                    for batch in T.unroll(state_batches):
                        if batch > 0:
                            load_state_batch(batch, hk, hv, hk_regs, hv_regs, b, h, tx)
                        for j in T.unroll(state_batch):
                            if (batch * state_batch + j) * THREADS + tx < K * M:
                                i: T.let[T.int32] = ((batch * state_batch + j) * THREADS + tx) // M
                                m: T.let[T.int32] = ((batch * state_batch + j) * THREADS + tx) % M
                                hk_regs[j] = hk_regs[j] * decay_s[m] + leaving_k_s[i] * strength_s[m]
                                hk_s[(batch * state_batch + j) * THREADS + tx] = hk_regs[j]
                                if leaves != 0:
                                    hk[b, h, i, m] = hk_regs[j]
                            if (batch * state_batch + j) * THREADS + tx < M * V:
                                m: T.let[T.int32] = ((batch * state_batch + j) * THREADS + tx) // V
                                e: T.let[T.int32] = ((batch * state_batch + j) * THREADS + tx) % V
                                hv_regs[j] = hv_regs[j] * decay_s[m] + strength_s[m] * leaving_v_s[e]
                                hv_s[(batch * state_batch + j) * THREADS + tx] = hv_regs[j]
                                if leaves != 0:
                                    hv[b, h, m, e] = hv_regs[j]
                    # the new ring entry is visible to the window reads below, the state to all threads
                    T.tvm_storage_sync("shared")

                    # ---- 3a. slot logits: thread (part, m) sums q . hk[:, m] over rows i = part (mod slot_parts) ----
                    for mc in T.unroll(slot_cols):
                        for qg in T.unroll(group):
                            dot[qg] = T.float32(0)
                        for r in T.unroll(rows_per_part):
                            if r * slot_parts + slot_part < K and mc * slot_lanes + slot_lane < M:
                                for qg in T.unroll(group):
                                    dot[qg] = dot[qg] + q_s[qg, r * slot_parts + slot_part] * hk_s[
                                        (r * slot_parts + slot_part) * M + mc * slot_lanes + slot_lane]
                        for qg in T.unroll(group):
                            if slot_part < slot_parts:
                                slot_part_s[slot_part, qg, mc * slot_lanes + slot_lane] = dot[qg]
                    T.tvm_storage_sync("shared")
                    for j in T.unroll(ceil_div(group * M, THREADS)):
                        if j * THREADS + tx < group * M:
                            qg: T.let[T.int32] = (j * THREADS + tx) // M
                            m: T.let[T.int32] = (j * THREADS + tx) % M
                            slot_logit_s[qg, m] = scale * total([slot_part_s[part, qg, m] for part in range(slot_parts)])
                    T.tvm_storage_sync("shared")

                    # ---- 3b. the softmax starts with the slots: thread (part, e) takes m = part (mod value_parts) ----
                    for qg in T.unroll(group):
                        run_max[qg] = T.float32(NEG)
                        for m in T.serial(M):
                            run_max[qg] = T.max(run_max[qg], slot_logit_s[qg, m])
                        den[qg] = T.float32(0)
                        for c in T.unroll(value_cols):
                            acc[qg * value_cols + c] = T.float32(0)
                    if tx < readers:
                        for mi in T.unroll(slots_per_reader):
                            if mi * value_parts + reader_part < M:
                                for qg in T.unroll(group):
                                    weight[0] = T.exp(slot_logit_s[qg, mi * value_parts + reader_part] - run_max[qg])
                                    den[qg] = den[qg] + weight[0]
                                    for c in T.unroll(value_cols):
                                        if c * value_lanes + reader_lane < V:
                                            acc[qg * value_cols + c] = acc[qg * value_cols + c] + weight[0] * hv_s[
                                                (mi * value_parts + reader_part) * V + c * value_lanes + reader_lane]

                    # ---- 3c. window keys w = 0 .. n_window - 1 (token t - w) in tiles, online softmax ----
                    for tile in T.serial((n_window + TILE_KEYS - 1) // TILE_KEYS):
                        # this thread's values of the tile first, so their loads overlap the logits;
                        # no load sits under a branch (indices are clamped, then masked), so
                        # they are all in flight together
                        ring_pos[0] = t % T.max(window, 1)
                        if tx < readers:
                            for kc in T.unroll(keys_per_reader):
                                for c in T.unroll(value_cols):
                                    tile_v[kc * value_cols + c] = T.Cast("float32", ring_v[
                                        b, ring_entry_back(ring_pos[0], T.min(tile * TILE_KEYS + kc * value_parts + reader_part, n_window - 1), window),
                                        h, T.min(c * value_lanes + reader_lane, V - 1)])
                            for kc in T.unroll(keys_per_reader):
                                for c in T.unroll(value_cols):
                                    tile_v[kc * value_cols + c] = T.Select(
                                        kc * value_parts + reader_part < TILE_KEYS
                                        and tile * TILE_KEYS + kc * value_parts + reader_part < n_window
                                        and c * value_lanes + reader_lane < V, tile_v[kc * value_cols + c], T.float32(0))
                        # thread (key, part): pairs (i, i + K/2), i = part (mod KEY_PARTS), of token t - w,
                        # RoPE'd at its position and dotted with every query head of the group
                        # a key past the window is clamped to the oldest one: its logit is masked below
                        key_back: T.let[T.int32] = T.min(tile * TILE_KEYS + key_slot, n_window - 1)
                        key_pos: T.let[T.int32] = t - key_back
                        for qg in T.unroll(group):
                            dot[qg] = T.float32(0)
                        ring_pos[1] = ring_entry_back(ring_pos[0], key_back, window)
                        for pp in T.unroll(pairs_per_part):  # every load first, all in flight
                            key_raw[2 * pp] = T.Cast("float32", ring_k[b, ring_pos[1], h, T.min(pp * KEY_PARTS + key_part, half - 1)])
                            key_raw[2 * pp + 1] = T.Cast("float32", ring_k[b, ring_pos[1], h, T.min(pp * KEY_PARTS + key_part, half - 1) + half])
                        for pp in T.unroll(pairs_per_part):
                            if pp * KEY_PARTS + key_part < half:
                                i: T.let[T.int32] = pp * KEY_PARTS + key_part
                                if use_rope != 0:
                                    key_angle[0] = T.Cast("float32", key_pos) * inv_freq_s[i]
                                    key_rot[0] = key_raw[2 * pp] * T.cos(key_angle[0]) - key_raw[2 * pp + 1] * T.sin(key_angle[0])
                                    key_rot[1] = key_raw[2 * pp + 1] * T.cos(key_angle[0]) + key_raw[2 * pp] * T.sin(key_angle[0])
                                else:
                                    key_rot[0] = key_raw[2 * pp]
                                    key_rot[1] = key_raw[2 * pp + 1]
                                for qg in T.unroll(group):
                                    dot[qg] = dot[qg] + q_rot_s[qg, i] * key_rot[0] + q_rot_s[qg, i + half] * key_rot[1]
                        for qg in T.unroll(group):
                            key_part_s[qg, tx] = dot[qg]
                        T.tvm_storage_sync("shared")
                        for j in T.unroll(ceil_div(group * TILE_KEYS, THREADS)):
                            if j * THREADS + tx < group * TILE_KEYS:
                                qg: T.let[T.int32] = (j * THREADS + tx) // TILE_KEYS
                                key: T.let[T.int32] = (j * THREADS + tx) % TILE_KEYS
                                key_logit_s[qg, key] = T.if_then_else(
                                    tile * TILE_KEYS + key < n_window,
                                    scale * total([key_part_s[qg, key * KEY_PARTS + part] for part in range(KEY_PARTS)]),
                                    T.float32(NEG))
                        T.tvm_storage_sync("shared")
                        for qg in T.unroll(group):
                            # the new running max is the same in every thread: no rescaling across threads
                            new_max[qg] = run_max[qg]
                            for w in T.unroll(TILE_KEYS):
                                new_max[qg] = T.max(new_max[qg], key_logit_s[qg, w])
                            if tx < readers:
                                rescale[0] = T.exp(run_max[qg] - new_max[qg])
                                den[qg] = den[qg] * rescale[0]
                                for c in T.unroll(value_cols):
                                    acc[qg * value_cols + c] = acc[qg * value_cols + c] * rescale[0]
                                for kc in T.unroll(keys_per_reader):
                                    if kc * value_parts + reader_part < TILE_KEYS:
                                        weight[0] = T.exp(key_logit_s[qg, kc * value_parts + reader_part] - new_max[qg])
                                        den[qg] = den[qg] + weight[0]
                                        for c in T.unroll(value_cols):
                                            acc[qg * value_cols + c] = acc[qg * value_cols + c] + (
                                                weight[0] * tile_v[kc * value_cols + c])
                            run_max[qg] = new_max[qg]

                    # ---- 3d. add up the parts of every value column and of the denominators ----
                    if tx < readers:
                        for qg in T.unroll(group):
                            for c in T.unroll(value_cols):
                                if c * value_lanes + reader_lane < V:
                                    out_part_s[qg, reader_part, c * value_lanes + reader_lane] = acc[qg * value_cols + c]
                        if reader_lane == 0:
                            for qg in T.unroll(group):
                                den_part_s[qg, reader_part] = den[qg]
                    T.tvm_storage_sync("shared")
                    for j in T.unroll(ceil_div(group * V, THREADS)):
                        if j * THREADS + tx < group * V:
                            qg: T.let[T.int32] = (j * THREADS + tx) // V
                            e: T.let[T.int32] = (j * THREADS + tx) % V
                            o[b, h * group + qg, e] = T.Cast(
                                io_dtype, total([out_part_s[qg, part, e] for part in range(value_parts)])
                                / total([den_part_s[qg, part] for part in range(value_parts)]))

        # ---- 4. advance the positions: a second kernel, after every block has read pos ----
        for bx in T.thread_binding((B + THREADS - 1) // THREADS, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                with T.sblock("advance"):
                    T.reads(pos[0:B])
                    T.writes(pos[0:B])
                    if bx * THREADS + tx < B:
                        pos[bx * THREADS + tx] = pos[bx * THREADS + tx] + 1

    return func
