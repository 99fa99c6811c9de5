"""The sketch space of an influence computation: which columns hold which parameter, and how gradients get there.

Layout (identical in group and per-sample mode, so sums of per-sample sketches equal the group sketch):

    columns [0, K_f)            one Kronecker block per *factored* parameter (a 2-D weight used only by
                                ``nn.Linear`` / ``nn.Embedding`` modules, tied or not), in selection order;
                                block ``l`` has ``k_in·k_out`` columns and is ``(R_outᵀ W R_in)`` flattened row-major,
                                R_in/R_out the RNG contract's tiles for ``kron_seed(seed, l, 0/1)`` (rng.h), the same
                                projection as ``tikmix_ext.sketch_kron`` with ``layer = l``.
    columns [K_f, K_f + k_d)    one dense JL sketch ``x · R[offset : offset + numel]`` (seed ``seed``) shared by all
                                other parameters, each at its global offset in the concatenation of their
                                flattened values (``tikmix_ext.sketch`` / ``sketch_accumulate_``).

How ``k`` splits: the dense block gets ``k_d = max(1, round(k · D_dense / D))`` columns (D = selected parameter
count); every Kronecker block gets one column plus a share of the rest proportional to its parameter count, and that
share ``s`` is factored as ``k_in ≈ √(s·in/out)``, ``k_out = ⌊s / k_in⌋`` (so ``k_in/k_out ≈ in/out``, capped by
``in`` and ``out``). Rounding leftovers go to the dense block, so the sketch has exactly ``k`` columns whenever a
dense block exists; with factored parameters only it has ``Σ k_in·k_out ≤ k``. ``InfluenceResult.sketch_dim`` is
the actual count. Each block is an unbiased JL estimate of its part of every inner product; a Kronecker block has
somewhat higher variance than a dense block of the same width (the price of never materialising a weight gradient).

Exact layout (``k=None``): no projection; the flat float64 concatenation of all selected gradients.
"""
from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._splitmix import GOLDEN, MASK64, mix, mix_int
from .sharding import ShardSpec

__all__ = ["Slot", "Layout", "Projector", "sign_tile", "kron_seed"]

_ROW_BITS = 44


# ---- RNG contract (csrc/include/tikmix/rng.h), vectorised for the small Kronecker tiles -------------------------
def kron_seed(seed: int, layer: int, tag: int) -> int:
    """``kron_seed(s, l, t) = mix(s ^ mix(2·l + t))`` of rng.h (a u64 Python int)."""
    return mix_int(seed ^ mix_int(2 * layer + tag))


def sign_tile(rows: int, k: int, seed: int, row0: int = 0) -> torch.Tensor:
    """Unit signs ``±1`` (float32, CPU) of ``R[row0 : row0 + rows, 0 : k]`` for a u64 ``seed`` (rng.h, unscaled).

    The native ``projection`` op takes seeds below 2^63 only, while Kronecker tiles use ``kron_seed`` values that span
    all of u64; this restates the contract with numpy's wrapping uint64 arithmetic (tests pin it to the op).
    """
    if rows < 0 or k < 1:
        raise ValueError(f"sign_tile: need rows >= 0 and k >= 1, got rows={rows}, k={k}")
    if row0 < 0 or row0 + rows > (1 << _ROW_BITS):
        raise ValueError(f"sign_tile: rows [{row0}, {row0 + rows}) exceed the RNG contract's limit 2^44")
    key = np.uint64(mix_int((seed & MASK64) + GOLDEN))
    blocks = (k + 63) // 64
    out = np.empty((rows, k), dtype=np.float32)
    shifts = np.arange(64, dtype=np.uint64)
    step = max(1, (1 << 22) // (blocks * 64))  # bound the uint64 temporaries to ~32 MiB
    with np.errstate(over="ignore"):
        b = (np.arange(blocks, dtype=np.uint64) << np.uint64(_ROW_BITS))[None, :]
        for r0 in range(0, rows, step):
            r = np.arange(row0 + r0, row0 + min(rows, r0 + step), dtype=np.uint64)[:, None]
            words = mix(key + (b + r) * np.uint64(GOLDEN))
            bits = (words[:, :, None] >> shifts) & np.uint64(1)
            out[r0 : r0 + r.shape[0]] = (1.0 - 2.0 * bits.reshape(r.shape[0], blocks * 64)[:, :k]).astype(np.float32)
    return torch.from_numpy(out)


def _kron_scale(k_in: int, k_out: int) -> float:
    # The single fp32 factor of the sketch_kron contract (reduce_kernels.h).
    return float(np.float32(1.0 / math.sqrt(float(k_in) * float(k_out))))


# ---- layout ------------------------------------------------------------------------------------------------------
@dataclass
class Slot:
    """One selected parameter's place in the sketch space.

    ``kind`` is ``"kron"`` (columns ``[col, col + width)``, projection ``layer`` with ``k_in``/``k_out``),
    ``"dense"`` (rows ``[offset, offset + numel)`` of the dense block's R) or ``"flat"`` (exact layout: columns
    ``[col, col + numel)`` hold the raw gradient).
    """

    index: int
    name: str
    param: torch.nn.Parameter = field(repr=False)
    shape: Tuple[int, ...]
    numel: int
    kind: str
    col: int = 0
    width: int = 0
    layer: int = -1
    k_in: int = 0
    k_out: int = 0
    offset: int = 0


def _factor(share: int, n_in: int, n_out: int) -> Tuple[int, int]:
    """``k_in·k_out ≤ share`` with ``k_in/k_out ≈ n_in/n_out``, ``1 ≤ k_in ≤ n_in``, ``1 ≤ k_out ≤ n_out``."""
    k_in = int(min(n_in, share, max(1, round(math.sqrt(share * n_in / n_out)))))
    k_out = int(min(n_out, max(1, share // k_in)))
    if k_out == n_out:  # capped: give the input side what is left
        k_in = int(min(n_in, max(1, share // k_out)))
    return k_in, k_out


@dataclass(eq=False, repr=False)
class Layout:
    """The column layout of a sketch space (see the module docstring). Build with :meth:`build`."""

    slots: List[Slot]
    dim: int
    kron_dim: int
    dense_dim: int
    exact: bool
    k: Optional[int]

    @classmethod
    def build(
        cls,
        named: Sequence[Tuple[str, torch.nn.Parameter]],
        factored: Sequence[bool],
        k: Optional[int],
    ) -> "Layout":
        """Lay out ``named`` parameters; ``factored[i]`` says parameter i gets a Kronecker block; ``k=None``: exact."""
        if k is None:
            slots, col = [], 0
            for i, (name, p) in enumerate(named):
                slots.append(Slot(i, name, p, tuple(p.shape), p.numel(), "flat", col=col, width=p.numel()))
                col += p.numel()
            return cls(slots, col, 0, 0, True, None)
        kron_ids = [i for i, f in enumerate(factored) if f]
        dense_ids = [i for i, f in enumerate(factored) if not f]
        n_total = sum(p.numel() for _, p in named)
        n_dense = sum(named[i][1].numel() for i in dense_ids)
        n_blocks = len(kron_ids) + (1 if dense_ids else 0)
        if k < n_blocks:
            raise ValueError(
                f"k={k} is smaller than the number of sketch blocks ({len(kron_ids)} Kronecker blocks"
                f"{' + 1 dense block' if dense_ids else ''}); raise k or pass factorize=False"
            )
        k_dense = max(1, round(k * n_dense / n_total)) if dense_ids else 0
        k_dense = min(k_dense, k - len(kron_ids))
        budget = k - k_dense
        n_kron = sum(named[i][1].numel() for i in kron_ids)
        slots: List[Optional[Slot]] = [None] * len(named)
        col = 0
        for layer, i in enumerate(kron_ids):
            name, p = named[i]
            share = 1 + int((budget - len(kron_ids)) * p.numel() // max(1, n_kron))
            n_out, n_in = p.shape
            k_in, k_out = _factor(share, n_in, n_out)
            slots[i] = Slot(i, name, p, tuple(p.shape), p.numel(), "kron", col=col, width=k_in * k_out,
                            layer=layer, k_in=k_in, k_out=k_out)
            col += k_in * k_out
        kron_dim = col
        if dense_ids:
            k_dense = k - kron_dim
        offset = 0
        for i in dense_ids:
            name, p = named[i]
            slots[i] = Slot(i, name, p, tuple(p.shape), p.numel(), "dense", col=kron_dim, width=k_dense,
                            offset=offset)
            offset += p.numel()
        return cls([s for s in slots if s is not None], kron_dim + k_dense, kron_dim, k_dense, False, k)

    def describe(self) -> Dict[str, object]:
        """A JSON-friendly description: dimension, and the blocks with their sizes."""
        if self.exact:
            return {"exact": True, "dim": self.dim, "parameters": len(self.slots)}
        return {
            "exact": False,
            "k": self.k,
            "dim": self.dim,
            "kron_blocks": [
                {"name": s.name, "shape": list(s.shape), "layer": s.layer, "k_in": s.k_in, "k_out": s.k_out}
                for s in self.slots
                if s.kind == "kron"
            ],
            "dense": {"parameters": [s.name for s in self.slots if s.kind == "dense"], "k": self.dense_dim,
                      "numel": sum(s.numel for s in self.slots if s.kind == "dense")},
        }


# ---- projector ---------------------------------------------------------------------------------------------------
def _has_kernel(op: str, device: torch.device) -> bool:
    """``tikmix_ext.has_kernel(op, device)``, or False when tikmix_ext is not importable (pure-torch fallbacks)."""
    try:
        import tikmix_ext
    except ImportError:
        return False
    return tikmix_ext.has_kernel(op, device)


_warned_lock = threading.Lock()
_warned: set = set()


def _warn_once(msg: str) -> None:
    with _warned_lock:
        if msg in _warned:
            return
        _warned.add(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _placement(shard: Optional[ShardSpec]) -> Tuple[int, float]:
    """(flat offset of a gradient's local part within its parameter, its weight in the sum over ranks): a shard's
    partial sketch is divided by its replicas, so the ranks' partial sketches sum to the whole gradient's."""
    return (0, 1.0) if shard is None else (shard.flat_offset, 1.0 / shard.n_replicas)


class Projector:
    """Maps gradients (whole, per-sample, or factored) into the columns of a :class:`Layout`.

    ``scales`` (optional, per slot index): the float32 per-coordinate factor ``√D`` of a diagonal preconditioner,
    flattened; applied before projecting (Adam). Rows are float32 (float64 in the exact layout).
    """

    _CHUNK_ELEMS = 1 << 24  # materialised per-sample gradients are built in chunks of at most this many elements

    def __init__(self, layout: Layout, seed: int, device: torch.device,
                 scales: Optional[Dict[int, torch.Tensor]] = None):
        self.layout = layout
        self.seed = int(seed)
        self.device = device
        self.dtype = torch.float64 if layout.exact else torch.float32
        self.scales = scales or {}
        # slots that received a nonzero contribution on this rank (the engine refuses a computation where a
        # parameter, or all of them, never did on any rank: a silent zero)
        self.nonzero: set = set()
        self._tiles: Dict[Tuple[int, int], torch.Tensor] = {}
        # Per-sample Kronecker sketches: on the CPU two BLAS matmuls with the cached sign tiles plus a batched
        # [k_out, T] x [T, k_in] product run 4-10x faster than the native sketch_kron kernel (1 thread, d=256..768,
        # 1024 rows), and faster than the weight-gradient GEMM they replace; elsewhere the native kernel is used.
        self._kron_op = (not layout.exact) and device.type != "cpu" and _has_kernel("sketch_kron", device)
        self._sketch_on_device = (not layout.exact) and _has_kernel("sketch", device)

    @property
    def dim(self) -> int:
        return self.layout.dim

    def zeros(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.dim, dtype=self.dtype, device=self.device)

    # -- Kronecker tiles --
    def tile(self, slot: Slot, tag: int) -> torch.Tensor:
        """Unit-sign tile R_in (tag 0, ``[in, k_in]``) or R_out (tag 1, ``[out, k_out]``) of a Kronecker slot."""
        key = (slot.layer, tag)
        t = self._tiles.get(key)
        if t is None:
            rows, k = (slot.shape[1], slot.k_in) if tag == 0 else (slot.shape[0], slot.k_out)
            t = sign_tile(rows, k, kron_seed(self.seed, slot.layer, tag)).to(self.device)
            self._tiles[key] = t
        return t

    # -- whole gradients (group mode: N = 1) and materialised per-sample gradients --
    def add_grad(self, out: torch.Tensor, slot: Slot, grad: torch.Tensor, shard: Optional[ShardSpec] = None) -> None:
        """``out[N, dim] +=`` the projection of ``grad[N, *slot.shape]`` (N whole or per-sample gradients).

        With ``shard``, ``grad`` is this rank's local part ``[N, shard.rows, *slot.shape[1:]]`` of a sharded gradient
        and ``out`` receives its partial sketch (divided by ``shard.n_replicas``): summed over all ranks, the partial
        sketches give the sketch of the whole gradient (:mod:`.sharding`).
        """
        n = grad.shape[0]
        if grad.is_sparse:
            grad = grad.to_dense()
        scale = self.scales.get(slot.index)
        shape = slot.shape if shard is None else (shard.rows, *slot.shape[1:])
        start, weight = _placement(shard)
        if shard is not None and shard.numel == 0:
            return
        self._mark(slot, grad)
        if slot.kind == "flat":
            g = grad.reshape(n, -1).to(torch.float64)
            if scale is not None:
                g = g * scale
            out[:, slot.col + start : slot.col + start + g.shape[1]].add_(g, alpha=weight)
        elif slot.kind == "kron":
            g = grad.reshape(n, *shape).to(torch.float32)
            if scale is not None:
                g = g * scale.view(shape)
            r_out, r_in = self.tile(slot, 1), self.tile(slot, 0)
            if shard is not None:  # rows [r0, r0 + rows) of W meet rows [r0, r0 + rows) of R_out
                r_out = r_out[shard.row_start : shard.row_start + shard.rows]
            y = torch.matmul(torch.matmul(r_out.t(), g), r_in)  # [N, k_out, k_in]
            out[:, slot.col : slot.col + slot.width].add_(y.reshape(n, -1),
                                                         alpha=_kron_scale(slot.k_in, slot.k_out) * weight)
        else:
            x = grad.reshape(n, -1)
            if weight != 1.0:
                x = x * weight
            self._add_dense(out, slot, x, scale, slot.offset + start)

    def add_grads(self, out: torch.Tensor, grads: Sequence[Tuple[Slot, torch.Tensor]],
                  shards: Optional[Dict[int, ShardSpec]] = None) -> None:
        """:meth:`add_grad` for every ``(slot, grad[N, *slot.shape])`` of one backward pass (``shards``: slot index
        -> the :class:`ShardSpec` of a sharded parameter, whose ``grad`` is then its local part).

        Dense gradients that follow each other in one column block (consecutive global offsets: a transformer's
        biases and norm weights, with other slots between them) are sketched with one kernel call on their
        concatenation: the same sketch up to float32 rounding (the projection's rows are addressed by global
        offset), at a fraction of the per-call cost that dominates for small tensors."""
        shards = shards or {}
        run: List[Tuple[Slot, torch.Tensor, int, float]] = []  # (slot, grad [N, m], global offset, weight)

        def flush() -> None:
            if run:
                slot, _, start, weight = run[0]
                x = run[0][1] if len(run) == 1 else torch.cat([g for _, g, _, _ in run], dim=1)
                self._add_dense(out, slot, x * weight if weight != 1.0 else x, None, start)
                run.clear()

        for slot, grad in grads:
            shard = shards.get(slot.index)
            if slot.kind != "dense" or slot.index in self.scales or grad.is_sparse:
                self.add_grad(out, slot, grad, shard)  # other columns: a run of dense gradients goes on
                continue
            if shard is not None and shard.numel == 0:
                continue
            x = grad.reshape(grad.shape[0], -1)
            start, weight = _placement(shard)
            start += slot.offset
            if run:
                last, last_x, last_start, last_weight = run[-1]
                if not (last.col == slot.col and last_start + last_x.shape[1] == start and last_weight == weight
                        and last_x.dtype == x.dtype and last_x.shape[0] == x.shape[0]):
                    flush()
            self._mark(slot, grad)
            run.append((slot, x, start, weight))
        flush()

    def _mark(self, slot: Slot, *factors: torch.Tensor) -> None:
        """Record that ``slot`` got a nonzero contribution (checked until the first one; for factored contributions
        ``Σ_t g_t a_tᵀ`` a time step where both factors are nonzero)."""
        if slot.index in self.nonzero:
            return
        if len(factors) == 1:
            hit = bool(factors[0].ne(0).any())
        else:
            a, g = factors
            hit = bool((a.ne(0).any(-1) & g.ne(0).any(-1)).any())
        if hit:
            self.nonzero.add(slot.index)

    def _add_dense(self, out: torch.Tensor, slot: Slot, x: torch.Tensor, scale: Optional[torch.Tensor],
                   offset: Optional[int] = None) -> None:
        import tikmix_ext

        offset = slot.offset if offset is None else offset
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            x = x.to(torch.float32)
        block = out[:, slot.col : slot.col + slot.width]
        if not self._sketch_on_device:
            _warn_once(f"tikmix: no native sketch kernel for device {self.device}; dense sketches run on the CPU")
            y = tikmix_ext.sketch(x.cpu(), slot.width, self.seed, offset, None if scale is None else scale.cpu())
            block += y.to(block.device)
        elif x.shape[0] == 1 and block.is_contiguous():
            tikmix_ext.sketch_accumulate_(block, x.contiguous(), self.seed, offset, scale)
        else:
            block += tikmix_ext.sketch(x.contiguous(), slot.width, self.seed, offset, scale)

    # -- factored per-sample contributions (hooks) --
    def add_linear(self, out: torch.Tensor, slot: Slot, a: torch.Tensor, g: torch.Tensor) -> None:
        """``out[N] +=`` projection of per-sample ``W_n = Σ_t g[n,t] a[n,t]ᵀ`` (``a [N,T,in]``, ``g [N,T,out]``)."""
        if slot.kind == "kron":
            if slot.index in self.scales:
                raise AssertionError("diagonal scales cannot act on a Kronecker per-sample sketch")  # guarded upstream
            block = out[:, slot.col : slot.col + slot.width]
            if self._kron_op and a.dtype == g.dtype and a.dtype in (torch.float32, torch.bfloat16, torch.float16):
                import tikmix_ext

                y = tikmix_ext.sketch_kron(a.contiguous(), g.contiguous(), slot.k_in, slot.k_out, self.seed,
                                           slot.layer)
            else:
                at = torch.matmul(a.to(torch.float32), self.tile(slot, 0))  # [N, T, k_in]
                gt = torch.matmul(g.to(torch.float32), self.tile(slot, 1))  # [N, T, k_out]
                y = torch.bmm(gt.transpose(1, 2), at).reshape(a.shape[0], -1)
                y.mul_(_kron_scale(slot.k_in, slot.k_out))
            block += y
            # marked from the [N, k_in·k_out] sketch, not from the [N, T, d] factors (a pass over the activations):
            # a zero gradient has a zero sketch, and a nonzero one a nonzero sketch but with probability zero
            if slot.index not in self.nonzero and bool(y.ne(0).any()):
                self.nonzero.add(slot.index)
            return
        dtype = torch.float64 if slot.kind == "flat" else torch.float32
        for s, e in self._chunks(a.shape[0], slot.numel):
            w = torch.einsum("nto,nti->noi", g[s:e].to(dtype), a[s:e].to(dtype))
            self.add_grad(out[s:e], slot, w)

    def add_embedding(self, out: torch.Tensor, slot: Slot, idx: torch.Tensor, g: torch.Tensor) -> None:
        """``out[N] +=`` projection of per-sample ``W_n = Σ_t e_{idx[n,t]} g[n,t]ᵀ`` (``idx [N,T]``, ``g [N,T,d]``;
        the caller has already zeroed the rows of a padding index)."""
        n = idx.shape[0]
        if slot.kind == "kron":
            block = out[:, slot.col : slot.col + slot.width]
            at = torch.matmul(g.to(torch.float32), self.tile(slot, 0))  # [N, T, k_in]
            gt = self.tile(slot, 1)[idx]  # one-hot rows times R_out = rows of R_out: [N, T, k_out]
            y = torch.bmm(gt.transpose(1, 2), at).reshape(n, -1)
            y.mul_(_kron_scale(slot.k_in, slot.k_out))
            block += y
            if slot.index not in self.nonzero and bool(y.ne(0).any()):  # as in add_linear
                self.nonzero.add(slot.index)
            return
        dtype = torch.float64 if slot.kind == "flat" else torch.float32
        vocab, dim = slot.shape
        for s, e in self._chunks(n, slot.numel):
            m = e - s
            w = torch.zeros(m * vocab, dim, dtype=dtype, device=g.device)
            rows = (idx[s:e] + vocab * torch.arange(m, device=idx.device).unsqueeze(1)).reshape(-1)
            w.index_add_(0, rows, g[s:e].reshape(-1, dim).to(dtype))
            self.add_grad(out[s:e], slot, w.view(m, vocab, dim))

    def _chunks(self, n: int, numel: int):
        step = max(1, self._CHUNK_ELEMS // max(1, numel))
        for s in range(0, n, step):
            yield s, min(n, s + step)
