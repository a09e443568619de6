"""One layer of the managed cache: physical slots, their logical positions, padding and statistics.

Keys and values are stored per KV head ([1, H_kv, n, d], never repeated for GQA). Heads may keep
different numbers of tokens (Ada-KV); the shorter ones are padded and the padding is marked invalid and
masked in attention. Padding is real memory, so it counts in the physical bytes.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from kvpilot.cache.policies.base import LayerStats


class ManagedLayer(CacheLayerMixin):
    """Per-layer storage that keeps the logical length (tokens seen) apart from the physical one."""

    is_sliding = False
    is_croppable = False

    def __init__(self, layer_idx: int = 0, **kwargs):
        super().__init__()
        self.layer_idx = layer_idx
        self.positions: torch.Tensor | None = None  # [H_kv, n] logical position of each slot
        self.valid: torch.Tensor | None = None  # [H_kv, n] bool, None when every slot is valid
        self.seen = 0
        self.stats = LayerStats()
        self.decode_steps = 0
        self.pending_queries = 0  # query length of the forward in flight (0 when none)
        self.scoring_past = -1  # during a scoring pass: how many slots are real past (the rest is transient)
        self.evicted_total = 0

    # ----- transformers' CacheLayerMixin -------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        h_kv, d = key_states.shape[1], key_states.shape[-1]
        self.keys = key_states.new_empty(1, h_kv, 0, d)
        self.values = value_states.new_empty(1, h_kv, 0, value_states.shape[-1])
        self.positions = torch.empty(h_kv, 0, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise ValueError(f"kvpilot's managed cache serves batch size 1, got {key_states.shape[0]}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        self.pending_queries = q
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        if self.scoring_past >= 0:  # scoring pass: attend to the new tokens, never store them
            self.scoring_past = self.keys.shape[-2]
            return keys, values
        h_kv = key_states.shape[1]
        new_pos = torch.arange(self.seen, self.seen + q, device=self.device).expand(h_kv, q)
        self.positions = torch.cat([self.positions, new_pos], dim=-1)
        if self.valid is not None:
            self.valid = torch.cat([self.valid, self.valid.new_ones(h_kv, q)], dim=-1)
        self.keys, self.values = keys, values
        self.seen += q
        self.stats.pad_to(keys.shape[-2])
        return keys, values

    def get_seq_length(self) -> int:
        """Logical length: generate() derives new tokens' positions from it, so it must count evictions."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.layer_idx)

    # ----- kvpilot --------------------------------------------------------------------------------

    @property
    def physical_length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def valid_mask(self) -> torch.Tensor:
        if self.valid is None:
            return torch.ones(self.positions.shape, dtype=torch.bool, device=self.positions.device)
        return self.valid

    def kept_per_head(self) -> list[int]:
        return self.valid_mask().sum(dim=-1).tolist() if self.positions is not None else []

    def compact(self, keep: list[torch.Tensor]) -> int:
        """Keep only the given slot indices per head (sorted), padding heads to the longest. Returns evicted."""
        before = int(self.valid_mask().sum())
        lengths = [int(k.numel()) for k in keep]
        width = max(lengths)
        index = torch.zeros(len(keep), width, dtype=torch.long, device=self.device)
        for h, k in enumerate(keep):
            index[h, : k.numel()] = k
            if k.numel() < width:  # pad with the head's last kept slot; marked invalid below
                index[h, k.numel() :] = k[-1] if k.numel() else 0
        gather = index[None, :, :, None]
        self.keys = self.keys.gather(2, gather.expand(-1, -1, -1, self.keys.shape[-1]))
        self.values = self.values.gather(2, gather.expand(-1, -1, -1, self.values.shape[-1]))
        self.positions = self.positions.gather(1, index)
        if min(lengths) == width:
            self.valid = None
        else:
            lens = torch.tensor(lengths, device=self.device)[:, None]
            self.valid = torch.arange(width, device=self.device)[None, :] < lens
        self.stats.gather(index)
        self.stats.scoring_mass = None
        evicted = before - sum(lengths)
        self.evicted_total += evicted
        return evicted
