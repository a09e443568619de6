"""How a layer's kept keys and values are held between forwards: as computed, or as small integers.

Eviction decides *which* pairs stay; storage precision decides how many bytes each one costs, and the two
multiply. ``"int8"`` and ``"int4"`` hold each row (one slot's key or value for one KV head) as symmetric
absmax-quantised integers with one float16 scale per group of ``GROUP`` values (the whole row when a head
is narrower), so an outlier channel costs precision only in its own group. A forward gets the rows back in
the compute dtype; quantising rows that were dequantised from the same format gives back the same
integers, so a layer re-stored after a forward does not drift. The cost: a layer held as integers is
dequantised before every forward, decode steps included; after a forward that only appended slots, only
the new rows are quantised and joined to the codes already held (`append_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpilot.config import KV_STORAGE_GROUP as GROUP

STORAGE_BITS = {"model": 0, "int8": 8, "int4": 4}


@dataclass(frozen=True)
class StoredRows:
    """Rows [T, d] as held at rest: the original tensor, or integer codes plus one scale per group."""

    data: torch.Tensor  # the rows themselves; int8 codes [T, d]; or uint8 [T, d / 2], two int4 codes per byte
    scale: torch.Tensor | None  # [T, d / GROUP] float16
    width: int
    dtype: torch.dtype
    storage: str = "model"

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scale is None else self.scale.nbytes)

    def rows(self) -> torch.Tensor:
        """The rows in their compute dtype (dequantised when stored as integers)."""
        if self.scale is None:
            return self.data
        out = torch.empty(self.data.shape[0], self.width, dtype=self.dtype, device=self.data.device)
        write_rows(self, out)
        return out

    def codes(self) -> torch.Tensor:
        """The integer codes [T, d] as int8 (int4's two codes per byte unpacked)."""
        if self.data.dtype != torch.uint8:
            return self.data
        # int4: low nibble first, stored offset by 8
        return torch.stack((self.data & 0xF, self.data >> 4), dim=-1).reshape(self.data.shape[0], -1).to(torch.int8) - 8


def write_rows(stored: StoredRows, out: torch.Tensor) -> None:
    """Write the rows into ``out`` [..., d] (the same number of rows, any strides), integer codes dequantised
    in place: unpacking a layer before each forward writes straight into its padded buffer."""
    if stored.scale is None:
        out.copy_(stored.data.view(out.shape))
        return
    g = group_size(stored.width)
    grouped = out.unflatten(-1, (stored.width // g, g))
    grouped.copy_(stored.codes().view(grouped.shape))
    grouped.mul_(stored.scale.view(*grouped.shape[:-1], 1))


def append_rows(stored: StoredRows, rows: torch.Tensor) -> StoredRows:
    """``stored`` followed by ``rows`` [T, d] in the same format: only the new rows are quantised, which
    gives the same integers as storing them all again (see the module docstring)."""
    new = store_rows(rows, stored.storage)
    scale = None if stored.scale is None or new.scale is None else torch.cat((stored.scale, new.scale))
    return StoredRows(torch.cat((stored.data, new.data)), scale, stored.width, stored.dtype, stored.storage)


def group_size(head_dim: int) -> int:
    """Values per scale: ``GROUP``, or the whole row of a narrower head."""
    return min(GROUP, head_dim)


def store_rows(rows: torch.Tensor, storage: str) -> StoredRows:
    """Hold ``rows`` [T, d] as ``storage`` says ("model": as they are)."""
    bits = STORAGE_BITS[storage]
    if not bits:
        return StoredRows(rows, None, rows.shape[-1], rows.dtype)
    n, d = rows.shape
    qmax = (1 << (bits - 1)) - 1  # 127 or 7: symmetric, so zero stays exact
    g = group_size(d)
    grouped = rows.detach().float().reshape(n, d // g, g)
    scale = (grouped.abs().amax(dim=-1) / qmax).to(torch.float16)
    safe = scale.float().clamp_min(torch.finfo(torch.float16).tiny).unsqueeze(-1)
    codes = torch.round(grouped / safe).clamp_(-qmax, qmax).to(torch.int8).reshape(n, d)
    if bits == 4:
        nibbles = (codes + 8).to(torch.uint8).reshape(n, d // 2, 2)
        codes = nibbles[..., 0] | (nibbles[..., 1] << 4)
    return StoredRows(codes, scale, d, rows.dtype, storage)


def stored_slot_bytes(storage: str, head_dim: int, element_size: int) -> int:
    """Bytes one slot (its key and value row) costs when held as ``storage``."""
    bits = STORAGE_BITS[storage]
    if not bits:
        return 2 * head_dim * element_size
    return 2 * (head_dim * bits // 8 + 2 * (head_dim // group_size(head_dim)))


def eviction_for_memory(memory_ratio: float, storage: str, head_dim: int) -> float:
    """The eviction ratio that, with kept pairs held as ``storage``, saves ``memory_ratio`` of a 16-bit cache.

    Eviction and storage multiply: (1 - eviction) x (a stored pair's share of a 16-bit pair) = 1 - memory_ratio,
    so 8x less memory (0.875) in int8 is eviction 0.7647 at head_dim 64, twice the pairs eviction alone keeps.
    Raises ValueError when the storage alone already saves more than ``memory_ratio``."""
    if not 0.0 <= memory_ratio < 1.0:
        raise ValueError(f"memory_ratio must be in [0, 1), got {memory_ratio}")
    share = stored_slot_bytes(storage, head_dim, 2) / stored_slot_bytes("model", head_dim, 2)
    eviction = round(1 - (1 - memory_ratio) / share, 6)
    if eviction < 0:
        raise ValueError(f"{storage} storage alone saves {1 - share:.3f} of a 16-bit cache, more than {memory_ratio}")
    return eviction
