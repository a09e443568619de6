"""One layer of the managed cache: its slots, their logical positions, padding, statistics and eviction.

Keys and values are stored per KV head ([1, H_kv, n, d], never repeated for GQA). Heads may keep
different numbers of tokens (Ada-KV, KVzip's pair-level selection): in a forward the shorter heads are
padded, the padding marked invalid and masked in attention; at rest (between forwards) such a layer is
*packed*: only its valid slots are held, slot by slot (each slot's heads together), so the memory a ragged
selection saves is really freed. A config with ``kv_storage="int8"`` or ``"int4"`` packs every layer at rest, its slots held
as integers with a scale per group (kvpilot.cache.precision). Positions and the validity mask keep the
padded layout (a few bytes per slot), and the padded tensors are rebuilt from the packed ones when a
forward, a scoring pass or an eviction needs them; after a forward that only appended slots, an integer
layer quantises just those. The byte figures count what is held: the packed slots at rest, the padded
tensors (and an integer layer's codes) while they exist. The
layer owns its state and evicts itself down to the budget the cache hands it (cross-layer decisions stay
in the cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

from kvpilot.cache.exchange import StatsRequest
from kvpilot.cache.precision import StoredRows, append_rows, store_rows, write_rows
from kvpilot.cache.selection import keep_indices, protected_slots
from kvpilot.config import KVConfig
from kvpilot.policies.base import LayerStats, RopeInfo, ScoringInputs
from kvpilot.policies.heads import head_budgets, within_budget

SNAPSHOT_FIELDS = ("positions", "valid", "seen", "decode_steps")


def spare_slots(slots: int) -> int:
    """Room left behind a layer's slots for appends: a quarter more, at least 64."""
    return max(64, slots // 4)


class ManagedLayer(CacheLayerMixin):
    """Per-layer storage that keeps the logical length (tokens seen) apart from the physical one."""

    is_sliding = False
    is_croppable = False

    def __init__(self, layer_idx: int = 0, **kwargs: Any) -> None:
        self._k: torch.Tensor | None = None  # padded [1, H_kv, n, d] while a forward or an eviction needs it
        self._v: torch.Tensor | None = None
        self._packed: tuple[StoredRows, StoredRows] | None = None  # valid slots only, [T, d] each, at rest
        # while an integer-stored layer is unpacked: its codes and its width then, so that settling after a
        # forward that only appended slots quantises just the new ones (dropped by anything that moves slots)
        self._unpacked_from: tuple[tuple[StoredRows, StoredRows], int] | None = None
        self.slot_bytes = 0  # bytes of one slot of one KV head (its key and value)
        super().__init__()
        self.layer_idx = layer_idx
        self.positions: torch.Tensor | None = None  # [H_kv, n] logical position of each slot
        self.valid: torch.Tensor | None = None  # [H_kv, n] bool, None when every slot is valid
        self.seen = 0
        self.stats = LayerStats()
        self.decode_steps = 0
        self.scoring_past = -1  # during a scoring pass: how many slots are real past (the rest is transient)
        self.evicted_total = 0
        self.nbytes = 0
        self.peak_nbytes = 0
        self._buffers: dict[str, torch.Tensor] = {}  # spare capacity behind keys/values/positions/valid
        self.on_resize: Callable[[int], None] | None = None  # told every change of nbytes (the cache's total)

    # ----- storage: padded in use, packed at rest when the heads are ragged ------------------------

    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        if self._k is None and self._packed is not None:
            self._unpack()
        return self._k

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        if value is not None and self._k is None and self._packed is not None:
            self._packed = None  # the values half is replaced right after (compaction, restore)
        self._k = value

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        if self._v is None and self._packed is not None:
            self._unpack()
        return self._v

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = value

    @property
    def packed(self) -> bool:
        """True while the layer holds only its valid slots (between forwards: ragged heads or integer storage)."""
        return self._packed is not None and self._k is None

    def _unpack(self) -> None:
        """Rebuild the padded tensors from the packed slots (the validity mask says where each goes).

        Packed rows go slot by slot, each slot's heads together, so slots appended later are rows appended."""
        assert self._packed is not None and self.positions is not None
        h_kv, width = self.positions.shape
        padded = []
        for name, stored in zip(("keys", "values"), self._packed, strict=True):
            # written into a buffer with the spare room an append wants, so the forward's new slots cost no copy
            shape = (1, h_kv, width + spare_slots(width), stored.width)
            empty = torch.empty if self.valid is None else torch.zeros
            buffer = empty(shape, dtype=stored.dtype, device=stored.data.device)
            view = buffer.narrow(2, 0, width)
            if self.valid is None:  # every slot valid
                write_rows(stored, view[0].transpose(0, 1))
            else:
                view[0].transpose(0, 1)[self.valid.T] = stored.rows()
            self._buffers[name] = buffer
            padded.append(view)
        if self._packed[0].scale is not None:  # integer codes: kept (and counted) until the layer settles
            self._unpacked_from = (self._packed, width)
        (self._k, self._v), self._packed = padded, None
        self._account()

    def _slot_rows(self, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid slots from slot ``start`` on as rows [T, d], slot by slot (each slot's heads together)."""
        assert self._k is not None and self._v is not None
        k, v = self._k[0, :, start:].transpose(0, 1), self._v[0, :, start:].transpose(0, 1)  # [n, H_kv, d]
        if self.valid is None:
            return k.reshape(-1, k.shape[-1]), v.reshape(-1, v.shape[-1])
        mask = self.valid[:, start:].T
        return k[mask], v[mask]

    def settle(self, storage: str = "model") -> None:
        """Between forwards: a layer whose heads hold different numbers of tokens keeps only its valid slots,
        and with integer ``storage`` every layer holds its slots quantised.

        Called by the cache once a layer's forward (and any eviction it triggers) is over."""
        if self._k is None or self._v is None or self.scoring_past >= 0:
            return
        before, self._unpacked_from = self._unpacked_from, None
        if self.valid is None and storage == "model":
            self._account()
            return
        if before is not None and before[0][0].storage == storage:  # only slots appended since: store those
            width = self._k.shape[-2]
            if width == before[1]:
                self._packed = before[0]
            else:
                rows_k, rows_v = self._slot_rows(start=before[1])
                self._packed = (append_rows(before[0][0], rows_k), append_rows(before[0][1], rows_v))
        else:
            rows_k, rows_v = self._slot_rows()
            self._packed = (store_rows(rows_k, storage), store_rows(rows_v, storage))
        self._k = self._v = None
        self._buffers.clear()
        self._account()

    # ----- transformers' CacheLayerMixin -------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        h_kv, d = key_states.shape[1], key_states.shape[-1]
        self.keys = key_states.new_empty(1, h_kv, 0, d)
        self.values = value_states.new_empty(1, h_kv, 0, value_states.shape[-1])
        self.positions = torch.empty(h_kv, 0, dtype=torch.long, device=self.device)
        self.slot_bytes = d * key_states.element_size() + value_states.shape[-1] * value_states.element_size()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Append new tokens (or, in a scoring pass, only show them to this forward's attention)."""
        if key_states.shape[0] != 1:
            raise ValueError(f"kvpilot's managed cache serves batch size 1, got {key_states.shape[0]}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None and self.values is not None
        q = key_states.shape[-2]
        if self.scoring_past >= 0:  # scoring pass: attend to the new tokens, never store them
            self.scoring_past = self.keys.shape[-2]
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)
        h_kv = key_states.shape[1]
        fresh = self.keys.shape[-2] == 0
        self.keys = self._append("keys", key_states, dim=-2)
        self.values = self._append("values", value_states, dim=-2)
        new_pos = torch.arange(self.seen, self.seen + q, device=self.device).expand(h_kv, q)
        self.positions = self._append("positions", new_pos, dim=-1)
        if self.valid is not None:
            self.valid = self._append("valid", self.valid.new_ones(h_kv, q), dim=-1)
        self.seen += q
        self.stats.pad_to(self.keys.shape[-2])
        self._account()
        if fresh:  # the first prefill attends to exactly the new tokens: hand over the contiguous originals
            return key_states, value_states
        return self.keys, self.values

    def _append(self, name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
        """``name``'s slots followed by ``new``, written into spare capacity when there is some.

        Appending by concatenation copies the whole layer on every decode step; a buffer with spare room
        (a quarter more, at least 64 slots, once the layer holds tokens) makes an append cost only its own
        tokens. The attribute is a
        view of the buffer's first slots. Compaction and restore replace the tensors and drop the buffers,
        so a snapshot's tensors are never written to.
        """
        current = getattr(self, name)
        n, q = current.shape[dim], new.shape[dim]
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[dim] < n + q:
            shape = list(current.shape)
            shape[dim] = n + q + (spare_slots(n + q) if n else 0)  # a first prefill gets no spare room
            buffer = current.new_empty(shape)
            buffer.narrow(dim, 0, n).copy_(current)
            self._buffers[name] = buffer
        buffer.narrow(dim, n, q).copy_(new)
        return buffer.narrow(dim, 0, n + q)

    def get_seq_length(self) -> int:
        """Logical length: generate() derives new tokens' positions from it, so it must count evictions."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:  # type: ignore[override]
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        on_resize = self.on_resize
        self.__init__(self.layer_idx)  # type: ignore[misc]
        self.on_resize = on_resize

    # ----- what the attention function sees --------------------------------------------------------

    @property
    def physical_length(self) -> int:
        """Slots per KV head in the padded layout (the longest head)."""
        return 0 if self.positions is None else self.positions.shape[-1]

    def key_valid(self, key_len: int) -> torch.Tensor | None:
        """[H_kv, key_len] validity of the keys the attention sees (None: all valid)."""
        if self.valid is None:
            return None
        extra = key_len - self.valid.shape[-1]
        if extra:
            return torch.cat([self.valid, self.valid.new_ones(self.valid.shape[0], extra)], dim=-1)
        return self.valid

    def record_stats(self, req: StatsRequest, key_mass: torch.Tensor, group: int, q_len: int) -> None:
        """Store ``key_mass`` [H_kv, n] (summed over queries and the GQA group) for the policy.

        Accumulated (H2O) mass also counts how many queries saw each key, for the length-bias correction:
        every old key was seen by all ``q_len`` new queries, the new keys by the causal rest.
        """
        st = self.stats
        if req.record_stop is not None:
            key_mass = key_mass[:, : req.record_stop]
        n = key_mass.shape[-1]
        if req.kind == "accumulated":
            q = q_len
            first_new = n - q
            seen_by = torch.full((n,), float(q), device=key_mass.device)
            seen_by[first_new:] = torch.arange(q, 0, -1, device=key_mass.device, dtype=torch.float32)
            count = (seen_by * group).expand_as(key_mass)
            st.pad_to(n)
            st.acc_mass = key_mass if st.acc_mass is None else st.acc_mass[:, :n] + key_mass
            st.acc_count = count.clone() if st.acc_count is None else st.acc_count[:, :n] + count
            return
        if req.accumulate and st.scoring_mass is not None:
            prev = torch.nn.functional.pad(st.scoring_mass, (0, max(0, n - st.scoring_mass.shape[-1])))
            st.scoring_mass = torch.maximum(prev[:, :n], key_mass) if req.reduce == "max" else prev[:, :n] + key_mass
        else:
            st.scoring_mass = key_mass

    def restrict_mask(self, positions: tuple[int, int], sinks: int) -> torch.Tensor:
        """[H_kv, n] slots whose logical position is a sink or lies in [start, stop) (and is not padding)."""
        assert self.positions is not None
        start, stop = positions
        mask = (self.positions < sinks) | ((self.positions >= start) & (self.positions < stop))
        return mask if self.valid is None else mask & self.valid

    def record_query_moments(self, queries_pre_rope: torch.Tensor) -> None:
        """Accumulate first and second moments of pre-RoPE queries [H, q, d] (Expected Attention)."""
        st = self.stats
        q = queries_pre_rope.float()
        s, outer = q.sum(dim=1), torch.einsum("hqd,hqe->hde", q, q)
        st.query_sum = s if st.query_sum is None else st.query_sum + s
        st.query_outer = outer if st.query_outer is None else st.query_outer + outer
        st.query_count += q.shape[1]

    # ----- eviction ---------------------------------------------------------------------------------

    def valid_mask(self) -> torch.Tensor:
        assert self.positions is not None
        if self.valid is None:
            return torch.ones(self.positions.shape, dtype=torch.bool, device=self.positions.device)
        return self.valid

    def kept_per_head(self) -> list[int]:
        return self.valid_mask().sum(dim=-1).tolist() if self.positions is not None else []

    def candidate_scores(
        self, budget: int, config: KVConfig, policy: Any, *, num_heads: int, rope: RopeInfo | None
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """This layer's scores with protected and padding slots at -inf, the protected slots of each head and
        the valid slots of each head: what a cross-layer allocator weighs."""
        assert self.positions is not None and self.keys is not None and self.values is not None
        valid = self.valid_mask()
        inputs = ScoringInputs(layer_idx=self.layer_idx, keys=self.keys[0], values=self.values[0],
                               positions=self.positions, valid=valid, seen=self.seen, num_heads=num_heads,
                               config=config, stats=self.stats, rope=rope)
        scores = policy.score(inputs)
        protected = protected_slots(self.positions, valid, self.seen, config.sink_tokens, config.window, budget)
        masked = scores.float().masked_fill(protected | ~valid, float("-inf"))
        return masked, protected.sum(dim=-1).tolist(), valid.sum(dim=-1).tolist()

    def evict(
        self,
        budget: int,
        config: KVConfig,
        policy: Any,
        *,
        num_heads: int,
        rope: RopeInfo | None,
        units_of: Callable[[torch.Tensor], torch.Tensor | None],
        per_head: list[int] | None = None,
    ) -> int:
        """Keep at most ``budget`` tokens per KV head (split over heads as the config says, or as ``per_head``
        says when a cross-layer allocator decided each head's share); returns the number evicted."""
        if self.positions is None:
            return 0
        valid = self.valid_mask()
        kept_now = valid.sum(dim=-1).tolist()
        if per_head is None and within_budget(config, kept_now, budget):
            return 0
        if per_head is not None and all(k <= b for k, b in zip(kept_now, per_head, strict=True)):
            return 0
        assert self.keys is not None and self.values is not None
        inputs = ScoringInputs(
            layer_idx=self.layer_idx,
            keys=self.keys[0],
            values=self.values[0],
            positions=self.positions,
            valid=valid,
            seen=self.seen,
            num_heads=num_heads,
            config=config,
            stats=self.stats,
            rope=rope,
        )
        scores = policy.score(inputs)
        protected = protected_slots(self.positions, valid, self.seen, config.sink_tokens, config.window, budget)
        if per_head is None:
            per_head = head_budgets(config, scores, valid, protected, budget)
        if per_head == kept_now:
            return 0
        keep = keep_indices(scores, valid, protected, per_head, units_of(self.positions), config.unit_pooling)
        # reconstruction scores each block's own tokens once: the kept tokens keep theirs for later blocks
        return self.compact(keep, keep_scores=config.scoring == "reconstruct")

    def compact(self, keep: list[torch.Tensor], keep_scores: bool = False) -> int:
        """Keep only the given slot indices per head (sorted), padding heads to the longest. Returns evicted."""
        assert self.keys is not None and self.values is not None and self.positions is not None
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
        self._buffers.clear()
        self._unpacked_from = None  # the slots moved: the codes no longer describe a prefix of them
        self.stats.gather(index)
        if not keep_scores:
            self.stats.scoring_mass = None
        evicted = before - sum(lengths)
        self.evicted_total += evicted
        self._account()
        return evicted

    # ----- snapshots and accounting -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A cheap copy of this layer's state (tensors are replaced, never mutated, so references suffice);
        a packed layer is saved packed."""
        saved = {k: getattr(self, k) for k in SNAPSHOT_FIELDS}
        saved |= {"_k": self._k, "_v": self._v, "_packed": self._packed, "stats": LayerStats(**vars(self.stats))}
        return saved

    def restore(self, saved: dict[str, Any]) -> None:
        for k, v in saved.items():
            setattr(self, k, LayerStats(**vars(v)) if k == "stats" else v)
        self._buffers.clear()  # the restored tensors may be views another snapshot still holds
        self._unpacked_from = None
        self.is_initialized = self._k is not None or self._packed is not None
        self._account()

    def _account(self) -> None:
        """Bytes of the slots held now (the padded tensors while they exist, padding included, else the packed
        slots; not the spare capacity behind them), and the peak; the cache hears the change, whatever caused
        it (an append, an eviction, a forward or a scoring pass unpacking the layer)."""
        held = sum(t.nbytes for t in (self._k, self._v) if t is not None)
        for packed in (self._packed, self._unpacked_from[0] if self._unpacked_from else None):
            if packed is not None:
                held += sum(stored.nbytes for stored in packed)
        delta, self.nbytes = held - self.nbytes, held
        if self.nbytes > self.peak_nbytes:
            self.peak_nbytes = self.nbytes
        if delta and self.on_resize is not None:
            self.on_resize(delta)
