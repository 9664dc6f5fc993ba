"""``KVCache``: the keys and values of one attention layer, kept for KV-cached generation.

Shape legend (see ``nxcore.typing``): batch = sequences decoded together (CFG rows, beams),
kv_heads = key/value heads, max_len = slots preallocated per sequence, kv = slots filled so far
(``length``), new = tokens appended by one call, head_dim = width of one head.

Storage is static: two tensors [batch, kv_heads, max_len, head_dim] allocated once, so decoding
never reallocates. ``append(k, v)`` writes the new keys/values (already rotated by RoPE) behind
the filled slots and returns views of everything so far; the attention then runs over those
views. Every row of the batch has the same length. ``crop(n)`` forgets everything after slot n,
so a shared prefix can be reused (sample one continuation, crop back, sample another);
``reorder(index)`` permutes or repeats rows (beam search). ``reset()`` empties the cache.

Meant for inference (under ``torch.no_grad()``): the buffers are written in place, so gradients
cannot flow through more than one ``append``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.nn._checks import check_dim
from nxcore.typing import Float, Int, typecheck

__all__ = ["KVCache"]


class KVCache:
    """Preallocated keys and values [batch, kv_heads, max_len, head_dim] of one attention layer."""

    def __init__(
        self,
        batch: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        check_dim("batch", batch)
        check_dim("num_kv_heads", num_kv_heads)
        check_dim("max_len", max_len)
        check_dim("head_dim", head_dim)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"dtype must be a floating-point torch.dtype (e.g. torch.bfloat16), got {dtype!r}"
            )
        shape = (batch, num_kv_heads, max_len, head_dim)
        self._k = torch.zeros(shape, dtype=dtype, device=device)
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self._length = 0

    def __repr__(self) -> str:
        return (
            f"KVCache(batch={self.batch}, num_kv_heads={self.num_kv_heads}, length={self.length}, "
            f"max_len={self.max_len}, head_dim={self.head_dim}, dtype={self.dtype}, device={self.device})"
        )

    @property
    def batch(self) -> int:
        return self._k.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self._k.shape[1]

    @property
    def max_len(self) -> int:
        return self._k.shape[2]

    @property
    def head_dim(self) -> int:
        return self._k.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self._k.dtype

    @property
    def device(self) -> torch.device:
        return self._k.device

    @property
    def length(self) -> int:
        """Slots filled so far (the same for every row)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def keys(self) -> Float[Tensor, "batch kv_heads kv head_dim"]:
        """The keys so far (a view of the storage)."""
        return self._k[:, :, : self._length]

    @property
    def values(self) -> Float[Tensor, "batch kv_heads kv head_dim"]:
        """The values so far (a view of the storage)."""
        return self._v[:, :, : self._length]

    @typecheck
    def append(
        self,
        k: Float[Tensor, "batch kv_heads new head_dim"],
        v: Float[Tensor, "batch kv_heads new head_dim"],
    ) -> tuple[Float[Tensor, "batch kv_heads kv head_dim"], Float[Tensor, "batch kv_heads kv head_dim"]]:
        """Store ``k``/``v`` behind the filled slots; return all keys and values so far."""
        store_k, store_v = self._k, self._v
        if not (  # the usual call, checked in one expression; anything else gets the named checks
            type(k) is Tensor and type(v) is Tensor and k.shape == v.shape and k.ndim == 4
            and k.shape[0] == store_k.shape[0] and k.shape[1] == store_k.shape[1]
            and k.shape[3] == store_k.shape[3] and k.dtype == v.dtype == store_k.dtype
            and k.device == store_k.device and v.device == store_k.device
        ):
            self._check_append(k, v)
        start, end = self._length, self._length + k.shape[2]
        if end > store_k.shape[2]:
            raise ValueError(
                f"KVCache overflow: it holds {start} of max_len={self.max_len} slots and cannot take "
                f"{k.shape[2]} more; build it with max_len >= {end} (prompt + generated tokens) or "
                "crop() it first"
            )
        store_k[:, :, start:end] = k
        store_v[:, :, start:end] = v
        self._length = end
        return store_k[:, :, :end], store_v[:, :, :end]

    def _check_append(self, k: object, v: object) -> None:
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, ndim=4, kind="float")
            expected = (self.batch, self.num_kv_heads, t.shape[2], self.head_dim)
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but this cache holds [batch={self.batch}, "
                    f"kv_heads={self.num_kv_heads}, new, head_dim={self.head_dim}]; build the cache "
                    "with the attention's batch, num_kv_heads and head_dim"
                )
            if t.dtype != self.dtype:
                raise TypeError(
                    f"{name} has dtype {t.dtype} but the cache stores {self.dtype}; build the cache with "
                    f"dtype={t.dtype} (or cast the model)"
                )
            if t.device != self.device:
                raise ValueError(
                    f"{name} is on {t.device} but the cache is on {self.device}; build the cache with "
                    f"device={str(t.device)!r}"
                )
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"k has {k.shape[2]} new tokens but v has {v.shape[2]}; append them together")

    def crop(self, length: int) -> None:
        """Keep the first ``length`` slots and forget the rest (reuse a shared prefix)."""
        check_dim("length", length, at_least=0)
        if length > self._length:
            raise ValueError(
                f"cannot crop the KVCache to length {length}: it holds only {self._length} slots; "
                f"pass a length in [0, {self._length}]"
            )
        self._length = length

    def reset(self) -> None:
        """Empty the cache (the storage is kept; stale slots are never read)."""
        self._length = 0

    @typecheck
    def reorder(self, index: Int[Tensor, " batch"]) -> None:
        """Row i becomes old row ``index[i]`` (beam search: follow the surviving beams)."""
        check_tensor("index", index, ndim=1, kind="int", device=self.device)
        if index.shape[0] != self.batch:
            raise ValueError(
                f"index has {index.shape[0]} entries but the cache has batch={self.batch}; give one "
                "source row per row"
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.batch):
            raise ValueError(
                f"index must be in [0, {self.batch}), got values from {int(index.min())} to "
                f"{int(index.max())}"
            )
        n = self._length
        self._k[:, :, :n] = self._k[:, :, :n].index_select(0, index)
        self._v[:, :, :n] = self._v[:, :, :n].index_select(0, index)
