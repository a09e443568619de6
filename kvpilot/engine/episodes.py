"""EpiCache episodes: one compressed cache per topic of a conversation, each question answered on its nearest.

A question-agnostic cache has to guess what will be asked. EpiCache (Kim et al., arXiv 2509.17396) narrows
the guess: the conversation's utterances are grouped into windows, embedded and clustered (k-means) into
episodes; each episode's cache is compressed under a scoring prompt patched with its medoid utterances (the
windows nearest its centroid), so it keeps what that part of the conversation needs; the caches are kept off
the device, and a question is answered on the episode whose centroid is nearest to it. Memory grows with
the number of episodes, and every stored cache counts in the request's figures.

Embeddings are the mean of one hidden layer of the served model by default (no second model to ship),
centred on the conversation's mean so the direction every utterance shares does not dominate the cosine.
A sentence-transformers model can be named instead; it is used only if installed, never downloaded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import forward
from kvpilot.engine.prompts import chat_parts
from kvpilot.engine.units import unit_ids
from kvpilot.errors import KVPilotError

if TYPE_CHECKING:
    from kvpilot.engine.engine import Compression, Engine, GenerationResult

LONG_UTTERANCE = 96  # tokens: a longer line is split into sentences before windows are formed (EpiCache: 500 chars)
EMBED_BATCH = 16  # segments per embedding forward
OFF_DEVICE = torch.device("cpu")  # where episode caches wait for their questions


class EpisodeError(KVPilotError, ValueError):
    """Episodes cannot be built for this request (the message says why)."""


class Embedder(Protocol):
    """Turns pieces of token ids into one vector each (rows of a float array)."""

    def embed(self, pieces: Sequence[Sequence[int]]) -> np.ndarray: ...


@dataclass
class ModelEmbedder:
    """Mean of one hidden layer of the served model over each piece, run on its own (plain causal SDPA)."""

    model: Any
    layer: int

    @torch.inference_mode()
    def embed(self, pieces: Sequence[Sequence[int]]) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))  # similar lengths share a batch
        base = self.model.base_model
        for start in range(0, len(order), EMBED_BATCH):
            batch = order[start : start + EMBED_BATCH]
            width = max(len(pieces[i]) for i in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            valid = torch.zeros(len(batch), width, dtype=torch.bool)
            for row, i in enumerate(batch):
                ids[row, : len(pieces[i])] = torch.as_tensor(list(pieces[i]))
                valid[row, : len(pieces[i])] = True
            # Right padding under a causal mask leaves every real token's states exact; padding is not pooled.
            hidden = base(input_ids=ids.to(self.model.device), output_hidden_states=True,
                          use_cache=False).hidden_states[self.layer].float().cpu()
            # Each token's state is normalised before pooling, and a piece's first token is left out: from
            # the first few layers on it carries a massive activation (an attention sink) that would swamp
            # the mean.
            hidden = hidden / hidden.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            valid[:, 0] &= valid.sum(1) == 1
            mask = valid[..., None].float()
            means = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            for row, i in enumerate(batch):
                out[i] = means[row].numpy()
        return np.stack([v for v in out if v is not None])


@dataclass
class SentenceEmbedder:
    """A sentence-transformers model on the decoded text of each piece."""

    encoder: Any
    tokenizer: Any

    def embed(self, pieces: Sequence[Sequence[int]]) -> np.ndarray:
        texts = [self.tokenizer.decode(list(p), skip_special_tokens=True) for p in pieces]
        return np.asarray(self.encoder.encode(texts, convert_to_numpy=True), dtype=np.float32)


def embedder_for(engine: Engine, params: dict[str, Any]) -> Embedder:
    """The embedder ``episode_params`` names; a sentence-transformers model must already be on this machine."""
    name = params["encoder"]
    if name == "model":
        layers = engine.shape.num_layers
        layer = params["layer"] if params["layer"] is not None else layers // 2
        if layer > layers:
            raise EpisodeError(f"episode_params.layer={layer}: the model has {layers} layers (0 is the embeddings)")
        return ModelEmbedder(engine.model, layer)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EpisodeError(f"episode_params.encoder={name!r} needs the sentence-transformers package, which is "
                           'not installed; use "model" (the served model\'s hidden states)') from None
    try:
        encoder = SentenceTransformer(name, local_files_only=True)
    except Exception as exc:  # the library raises several kinds for a model that is not on disk
        raise EpisodeError(f"episode_params.encoder={name!r}: not available locally ({exc}); models are never "
                           "downloaded at run time") from None
    return SentenceEmbedder(encoder, engine.tokenizer)


# ----- segments and questions --------------------------------------------------------------------------


def utterances(tokenizer, ids: Sequence[int]) -> list[list[int]]:
    """The context's lines as token lists; a long line is split into sentences, so one long turn does not
    make a window of its own topic mix. Blank lines and the chat template's own lines (a role header, the
    system prompt: any line holding a special token) are dropped: they say nothing about a topic."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[list[int]] = []
    for line in _runs(list(ids), unit_ids(tokenizer, ids, "turn") or []):
        if special.intersection(line) or not tokenizer.decode(line).strip():
            continue
        if len(line) > LONG_UTTERANCE:
            out += [s for s in _runs(line, unit_ids(tokenizer, line, "sentence") or []) if tokenizer.decode(s).strip()]
        else:
            out.append(line)
    return out


def _runs(ids: list[int], units: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i, (tok, unit) in enumerate(zip(ids, units, strict=True)):
        if i == 0 or unit != units[i - 1]:
            runs.append([])
        runs[-1].append(tok)
    return runs


def segments(lines: list[list[int]], window: int) -> list[list[int]]:
    """Consecutive windows of ``window`` utterances, concatenated (the last may be shorter)."""
    return [sum(lines[i : i + window], []) for i in range(0, len(lines), window)]


def question_text_ids(tokenizer, ids: Sequence[int]) -> list[int]:
    """The question's own tokens: what comes before the chat template closes the user's turn."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[int] = []
    for tok in ids:
        if tok in special:
            if out:
                break
            continue
        out.append(int(tok))
    return out or [int(t) for t in ids if t not in special] or list(ids)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


# ----- clustering ----------------------------------------------------------------------------------------


@dataclass
class Clustering:
    """Episodes of one conversation: centroids in the centred, unit embedding space, and each one's medoids."""

    centre: np.ndarray  # [d] the mean segment embedding, subtracted before normalising
    centroids: np.ndarray  # [E, d] unit rows
    labels: list[int]  # the episode of each segment
    medoids: list[list[int]]  # per episode, the indices of its medoid segments, in conversation order

    def nearest(self, embedding: np.ndarray) -> int:
        """The episode whose centroid has the largest cosine with ``embedding`` (a raw embedding)."""
        q = _unit((embedding - self.centre)[None])[0]
        return int(np.argmax(self.centroids @ q))


def cluster(embeddings: np.ndarray, episodes: int, medoids: int, seed: int) -> Clustering:
    """k-means (scikit-learn) over centred unit embeddings; medoids are the members nearest their centroid."""
    from sklearn.cluster import KMeans

    centre = embeddings.mean(0)
    points = _unit(embeddings - centre)
    k = max(1, min(episodes, len(points)))
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(points)
    centroids = _unit(km.cluster_centers_)
    labels = [int(x) for x in km.labels_]
    chosen = []
    for e in range(k):
        members = [i for i, lab in enumerate(labels) if lab == e] or list(range(len(points)))
        near = sorted(members, key=lambda i: -float(points[i] @ centroids[e]))[:medoids]
        chosen.append(sorted(near))
    return Clustering(centre, centroids, labels, chosen)


# ----- the caches ----------------------------------------------------------------------------------------


def _moved(value: Any, device: torch.device) -> Any:
    """A copy of a cache snapshot with every tensor on ``device`` (the snapshot's own tensors are untouched)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _moved(getattr(value, f.name), device) for f in fields(value) if f.init})
    return value


@dataclass
class Episode:
    """One episode's compressed cache, held off the device, and what it cost."""

    state: list[dict[str, Any]]
    logits: torch.Tensor  # the context's last logits under this episode's prefill (answer with no question)
    kv_bytes: int
    prompt_tokens: int  # the patched scoring prompt's length


@dataclass
class Episodes:
    """A request's episodes: build them once, then restore the routed one into the working cache per question."""

    engine: Engine
    clustering: Clustering
    embedder: Embedder
    episodes: list[Episode]
    build_peak: int  # the device cache's peak while building, plus the episodes already stored
    last_episode: int  # the episode of the conversation's last segment (where an answer with no question goes)
    route_s: float = 0.0  # time the last routing took (embedding the question), added to that answer's TTFT

    @property
    def stored_bytes(self) -> int:
        return sum(e.kv_bytes for e in self.episodes)

    def route(self, question: Sequence[int] | None) -> int:
        """The episode a question is answered on (the conversation's last one when there is no question)."""
        if not question or len(self.episodes) == 1:
            return self.last_episode
        ids = question_text_ids(self.engine.tokenizer, question)
        return self.clustering.nearest(self.embedder.embed([ids])[0])

    def select(self, cache: ManagedCache, question: Sequence[int] | None) -> tuple[int, torch.Tensor]:
        """Restore the routed episode's cache onto the model's device; returns (episode, its context logits)."""
        t0 = time.perf_counter()
        e = self.route(question)
        self.route_s = time.perf_counter() - t0
        cache.restore(_moved(self.episodes[e].state, self.engine.model.device))
        return e, self.episodes[e].logits

    def account(self, answer: GenerationResult, episode: int) -> None:
        """Count the stored episode caches in an answer's memory figures (they are held while it decodes)."""
        answer.ttft_s += self.route_s
        answer.kv_bytes += self.stored_bytes
        answer.peak_kv_bytes = max(self.build_peak, answer.peak_kv_bytes + self.stored_bytes)
        if answer.logical_kv_bytes:
            answer.compression_ratio = 1.0 - answer.kv_bytes / answer.logical_kv_bytes
        answer.extra |= {"episode": episode, "episodes": len(self.episodes), "episode_kv_bytes": self.stored_bytes}

    def account_compression(self, compression: Compression) -> None:
        """Every stored episode cache is held: the request's bytes are their sum, its peak the build's."""
        compression.kv_bytes = self.stored_bytes
        compression.peak_kv_bytes = self.build_peak
        if compression.logical_kv_bytes:
            compression.compression_ratio = 1.0 - self.stored_bytes / compression.logical_kv_bytes

    def peak(self, cache: ManagedCache) -> int:
        """The request's peak: building, or the stored caches plus the working cache while answering."""
        return max(self.build_peak, self.stored_bytes + cache.peak_bytes)


def build(engine: Engine, config: KVConfig, context_ids: Sequence[int]) -> tuple[Episodes, ManagedCache]:
    """Cluster the context into episodes and compress one cache per episode; returns them and the working cache.

    Each episode is compressed as `prefill` would with the scoring prompt patched by its medoids (blocks,
    units, allocators as the config says; a one-shot prefill runs the context once for all of them), and
    its result is copied off the device before the next one.
    """
    tok = engine.tokenizer
    if tok is None:
        raise EpisodeError("episodes need the engine's tokenizer (utterances are lines of text)")
    params = config.episode_params
    lines = utterances(tok, context_ids)
    segs = segments(lines, params["window"])
    if not segs:
        raise EpisodeError("episodes: the context has no utterances to cluster")
    embedder = embedder_for(engine, params)
    clustering = cluster(embedder.embed(segs), config.episodes, params["medoids"], params["seed"])
    instruction = chat_parts(tok, "x", config.scoring_prompt.strip()).question_ids
    prompts = [instruction + sum((segs[i] for i in medoids), []) for medoids in clustering.medoids]
    one_block = config.prefill_block_size is None or config.prefill_block_size >= len(context_ids)
    stored, cache, build_peak = (_shared_prefill if one_block else _prefill_each)(engine, config, context_ids, prompts)
    cache.reset_peak()
    episodes = Episodes(engine, clustering, embedder, stored, build_peak, clustering.labels[-1])
    return episodes, cache


def _prefill_each(engine: Engine, config: KVConfig, context_ids: Sequence[int],
                  prompts: list[list[int]]) -> tuple[list[Episode], ManagedCache, int]:
    """Block-wise prefill: each episode evicts after every block, so each prefills the context itself."""
    stored: list[Episode] = []
    build_peak = 0
    for prompt in prompts:
        cache = engine.new_cache(config)
        logits = engine.compress(cache, context_ids, scoring_ids=prompt)
        build_peak = max(build_peak, cache.peak_bytes + sum(e.kv_bytes for e in stored))
        stored.append(Episode(_moved(cache.snapshot(), OFF_DEVICE), logits, cache.physical_bytes, len(prompt)))
    return stored, cache, build_peak


def _shared_prefill(engine: Engine, config: KVConfig, context_ids: Sequence[int],
                    prompts: list[list[int]]) -> tuple[list[Episode], ManagedCache, int]:
    """One-shot prefill: the context goes in once; each episode restores it, runs its scoring prompt as
    queries only and evicts, exactly what `prefill` does with that prompt, without E prefills of the context.
    The uncompressed context is held until the last episode is compressed, and counts in the peak."""
    cache = engine.new_cache(config)
    units = unit_ids(engine.tokenizer, context_ids, config.granularity)
    stored: list[Episode] = []
    with torch.inference_mode():
        if units is not None:
            cache.set_units(0, torch.as_tensor(units))
        with cache.prompt_scoring_driven():
            logits = forward(engine.model, cache, context_ids)
        context = cache.snapshot()
        for prompt in prompts:
            cache.restore(context)
            with cache.scoring_pass():
                forward(engine.model, cache, prompt)
            cache.evict()
            stored.append(Episode(_moved(cache.snapshot(), OFF_DEVICE), logits, cache.physical_bytes, len(prompt)))
    return stored, cache, cache.peak_bytes + sum(e.kv_bytes for e in stored)
