"""Fitting the `surrogate` policy: a per-model linear model of KVzip's reconstruction scores.

Calibration contexts are prefilled with reconstruction scoring (the expensive pass, once, offline) and
nothing evicted; each cached pair's features (`kvpilot.policies.surrogate.pair_features`) and the log of
its reconstruction score become one regression row of its (layer, KV head). Ridge regression per head
(normal equations accumulated context by context, so memory stays small) gives the weights; with
``hidden=W`` each head gets a ReLU layer of width W beside its linear part instead, trained by Adam on
the standardised features (all rows kept in memory: about 2 GB for the bundled model's 35k calibration
tokens). Contexts held out of the fit measure how well the prediction ranks the pairs (Spearman per
head, averaged), which is what selection uses.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import Reconstruction, extend, forward, prefill
from kvpilot.engine.model import model_fingerprint
from kvpilot.engine.prompts import chat_parts
from kvpilot.policies.surrogate import FEATURES, FORMAT, feature_count, pair_features, predict
from kvpilot.workloads.sample import Sample

SCORE_FLOOR = 1e-6  # scores are attention probabilities; the log needs a floor for pairs nobody read
CALIBRATION = KVConfig(policy="kvzip", scoring="reconstruct", compression_ratio=0.5)
QUESTIONS = KVConfig(policy="kvzip", scoring="prompt", compression_ratio=0.5)
# what the fit predicts: reconstruction's scores, the questions', or log(reconstruction + questions); an
# answer weight adds "+ {answer_weight} x max(answer score, floor)" inside the log
TARGET_FORMULAS = {
    "reconstruction": "log(max(reconstruction score, {floor}))",
    "questions": "log(max(question score, {floor}))",
    "both": "log(max(reconstruction score, {floor}) + {weight} x max(question score, {floor}))",
}
AnswerReading = tuple[list[int], list[int]]  # (the question's tokens after the context, its answer's tokens)
TARGETS = tuple(TARGET_FORMULAS)


PASSES = ("reconstruction", "questions", "answers")


@dataclass
class Reading:
    """One calibration context as the fit needs it: per layer the pairs' features [H_kv, n, F] and the raw
    scores [H_kv, n] of each pass that ran ("reconstruction", "questions", "answers"; the attention sinks
    left out: they are always kept). The target is built from the scores afterwards (`target_logs`), so one
    reading serves fits of any target and weight (`ReadingStore` keeps them on disk)."""

    features: list[torch.Tensor]
    scores: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def read_context(model: Any, context_ids: Sequence[int], reconstruction: Reconstruction, features: str = FEATURES,
                 *, passes: Sequence[str] = ("reconstruction",), question_ids: Sequence[int] | None = None,
                 answers: Sequence[AnswerReading] | None = None, reading: Reading | None = None) -> Reading:
    """The context prefilled once per pass (nothing evicted), its features and each pass's scores; passes
    already in `reading` are not run again."""
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown calibration passes {sorted(unknown)}; passes: {', '.join(PASSES)}")
    if "questions" in passes and not question_ids:
        raise ValueError("the questions' pass needs the calibration questions' token ids")
    if "answers" in passes and not answers:
        raise ValueError("the answers' pass needs the calibration answers")
    out = reading or Reading(features=[])
    for name in passes:
        if name in out.scores:
            continue
        if name == "answers":
            assert answers is not None
            out.scores[name] = answer_scores(model, context_ids, answers)
            continue
        config, scoring_ids = (CALIBRATION, None) if name == "reconstruction" else (QUESTIONS, question_ids)
        cache = ManagedCache.for_model(model, config)
        with torch.inference_mode():
            prefill(model, cache, context_ids, reconstruction=reconstruction, scoring_ids=scoring_ids, evict=False)
        layer_scores = []
        for layer in cache.layers:
            assert layer.keys is not None and layer.values is not None and layer.positions is not None
            scores = layer.stats.scoring_mass
            if scores is None:
                raise RuntimeError(f"layer {layer.layer_idx} recorded no scoring attention")
            keep = layer.positions[0] >= config.sink_tokens
            if len(out.features) < len(cache.layers):  # the same in every pass (same context, nothing evicted)
                out.features.append(pair_features(layer.keys[0], layer.values[0], features=features,
                                                  positions=layer.positions, seen=layer.seen,
                                                  rope=cache.rope)[:, keep].cpu())
            layer_scores.append(scores[:, : keep.numel()][:, keep].float().cpu())
        out.scores[name] = layer_scores
    return out


def _target_parts(target: str, question_weight: float = 1.0, answer_weight: float = 0.0,
                  floor_quantile: float = 0.0) -> list[tuple[str, float]]:
    """The passes a target sums inside its log, each with the log of its weight (checked here, once)."""
    if not 0.0 <= floor_quantile < 1.0:
        raise ValueError(f"floor_quantile must be in [0, 1), got {floor_quantile}")
    if target not in TARGETS:
        raise ValueError(f"unknown surrogate target {target!r}; targets: {', '.join(TARGETS)}")
    if question_weight <= 0:
        raise ValueError(f"question_weight must be positive, got {question_weight}")
    if answer_weight < 0:
        raise ValueError(f"answer_weight must be >= 0, got {answer_weight}")
    parts = {"reconstruction": [("reconstruction", 0.0)], "questions": [("questions", 0.0)],
             "both": [("reconstruction", 0.0), ("questions", math.log(question_weight))]}[target]
    return parts + ([("answers", math.log(answer_weight))] if answer_weight else [])


def passes_for(target: str, answer_weight: float = 0.0) -> tuple[str, ...]:
    """The passes a target needs."""
    return tuple(name for name, _ in _target_parts(target, answer_weight=answer_weight))


def target_logs(reading: Reading, target: str = "reconstruction", question_weight: float = 1.0,
                answer_weight: float = 0.0, floor_quantile: float = 0.0) -> list[torch.Tensor]:
    """Per layer [H_kv, n]: the log target of `TARGET_FORMULAS` (floored scores, weighted, summed inside the
    log), plus ``answer_weight`` x the answers' scores inside the log when it is positive.

    ``floor_quantile`` q > 0 raises every target below the context's q-quantile (over all layers and heads,
    the pool global selection draws from) to it: selection keeps only the top few percent, so the fit need
    not rank the pairs it will drop among themselves, and spends its capacity on the top."""
    parts = _target_parts(target, question_weight, answer_weight, floor_quantile)
    missing = [name for name, _ in parts if name not in reading.scores]
    if missing:
        raise ValueError(f"this reading lacks the {', '.join(missing)} pass(es) target {target!r} needs")
    logs: list[torch.Tensor] | None = None
    for name, shift in parts:
        layer_logs = [s.clamp_min(SCORE_FLOOR).log() + shift for s in reading.scores[name]]
        logs = layer_logs if logs is None else [torch.logaddexp(a, b) for a, b in zip(logs, layer_logs, strict=True)]
    assert logs is not None
    if floor_quantile:
        flat = torch.cat([t.flatten() for t in logs])
        floor = flat.kthvalue(max(1, math.ceil(floor_quantile * flat.numel()))).values
        logs = [t.clamp_min(floor) for t in logs]
    return logs


def scored_layers(model: Any, context_ids: Sequence[int], reconstruction: Reconstruction,
                  features: str = FEATURES, *, question_ids: Sequence[int] | None = None,
                  target: str = "reconstruction", question_weight: float = 1.0,
                  answers: Sequence[AnswerReading] | None = None, answer_weight: float = 0.0,
                  floor_quantile: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: features [H_kv, n, F] and log target scores [H_kv, n] of the context's pairs (the attention
    sinks left out: they are always kept).

    `target` "reconstruction": KVzip's scores (the context reproduced as queries); "questions": the largest
    attention that `question_ids` (questions about the context with their answers, as the model will later
    read them) give each pair, i.e. what a question-agnostic score should have foreseen; "both": the log of
    their sum, so a pair either pass needs ranks high; `question_weight` scales the questions' part (reconstruction
    reads every token about once, so at weight 1 its scores dominate the sum for most pairs).

    `answer_weight` > 0 adds, inside the log, that weight times the largest attention the queries that
    produce each answer give a pair (`answers`: each question read after the context, stored, then its
    answer's predicting positions as scoring queries): what the answer itself reads, not the names the
    question mentions, which also appear around look-alike distractors. ``floor_quantile``: see `target_logs`."""
    passes = [name for name, _ in _target_parts(target, question_weight, answer_weight, floor_quantile)]
    if target != "reconstruction" and not question_ids:
        raise ValueError(f"target {target!r} needs the calibration questions' token ids")
    if answer_weight < 0 or (answer_weight and not answers):
        raise ValueError(f"answer_weight must be >= 0 and needs the calibration answers, got {answer_weight}")
    reading = read_context(model, context_ids, reconstruction, features, passes=passes,
                           question_ids=question_ids, answers=answers)
    return list(zip(reading.features, target_logs(reading, target, question_weight, answer_weight, floor_quantile),
                    strict=True))


class ReadingStore:
    """Calibration readings kept in a directory, one file per context, so that refitting with another target,
    weight, width or step count skips the model passes (the expensive part of a fit). A file is named by the
    model's shape and weights, the feature set and the context's tokens; it records the questions and answers
    its passes read, and a pass read with other ones is run again."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, model: Any, context_ids: Sequence[int], features: str) -> Path:
        """Named by the model's contents (`model_fingerprint`: its files, not a float sum of a weight, which
        changed with the thread count and so missed every stored reading in a process with other threads)."""
        fingerprint = [model_fingerprint(model), features, list(context_ids)]
        return self.directory / (hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:24] + ".pt")

    def read(self, model: Any, context_ids: Sequence[int], reconstruction: Reconstruction, features: str = FEATURES,
             *, passes: Sequence[str], question_ids: Sequence[int] | None = None,
             answers: Sequence[AnswerReading] | None = None) -> Reading:
        """The stored reading with every pass in `passes`, the missing ones run (and stored) first."""
        file = self.path(model, context_ids, features)
        stored: dict[str, Any] = torch.load(file, weights_only=True) if file.exists() else {}
        inputs = {"questions": list(question_ids or []), "answers": [list(map(list, a)) for a in answers or []]}
        stored_inputs: dict[str, Any] = stored.get("inputs", {})
        reading = Reading(features=stored.get("features", []))
        for name, scores in stored.get("scores", {}).items():
            if name in passes and name in inputs and stored_inputs.get(name) != inputs[name]:
                continue  # read with other questions or answers: read again below
            reading.scores[name] = scores  # a pass not asked for now is kept as stored
        if all(name in reading.scores for name in passes):
            return reading
        read_context(model, context_ids, reconstruction, features, passes=passes, question_ids=question_ids,
                     answers=answers, reading=reading)
        kept_inputs = {name: inputs[name] if name in passes else stored_inputs.get(name)
                       for name in reading.scores if name in inputs}
        tmp = file.with_suffix(".tmp")
        torch.save({"features": reading.features, "scores": reading.scores, "inputs": kept_inputs}, tmp)
        tmp.replace(file)
        return reading


def answer_scores(model: Any, context_ids: Sequence[int], answers: Sequence[AnswerReading]) -> list[torch.Tensor]:
    """Per layer [H_kv, n]: the largest attention any answer-producing query gives each context pair (the
    sinks left out, like `scored_layers`). Each question is read after the context on its own copy of the
    cache (its tokens stored, so they compete as keys), then the positions that predict its answer's tokens
    (the question's last token and the answer's tokens but the last) run as scoring queries only."""
    cache = ManagedCache.for_model(model, QUESTIONS)
    n = len(context_ids)
    best: list[torch.Tensor | None] = [None] * len(cache.layers)
    with torch.inference_mode():
        extend(model, cache, context_ids)
        saved = cache.snapshot()
        for prompt, answer in answers:
            cache.restore(saved)
            extend(model, cache, prompt[:-1])
            with cache.scoring_pass():
                forward(model, cache, prompt[-1:] + answer[:-1])
            for li, layer in enumerate(cache.layers):
                mass = layer.stats.scoring_mass
                if mass is None:
                    raise RuntimeError(f"layer {li} recorded no scoring attention")
                mass = mass[:, :n].float()
                prev = best[li]
                best[li] = mass if prev is None else torch.maximum(prev, mass)
    out = []
    for layer, mass in zip(cache.layers, best, strict=True):
        assert mass is not None and layer.positions is not None
        keep = layer.positions[0, :n] >= QUESTIONS.sink_tokens
        out.append(mass[:, keep].cpu())
    return out


def calibration_questions(tokenizer: Any, sample: Sample) -> list[int]:
    """Every question of `sample` with its answer, as the model reads them after the context (the chat
    template's turn, the answer prefix, the answer), one after another: the queries of target "questions"."""
    return [token for prompt, answer in calibration_answers(tokenizer, sample) for token in prompt + answer]


def calibration_answers(tokenizer: Any, sample: Sample) -> list[AnswerReading]:
    """Every question of `sample` as the model reads it after the context, with its answer's tokens: the
    answer-producing queries of `answer_weight`."""
    return [(chat_parts(tokenizer, sample.context, qa.question, qa.answer_prefix).question_ids,
             list(tokenizer(" " + qa.answers[0], add_special_tokens=False)["input_ids"])) for qa in sample.qa]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order; fine for continuous scores)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom else 0.0


def fit_surrogate(
    model: Any,
    contexts: Sequence[Sequence[int]],
    reconstruction: Reconstruction,
    *,
    held_out: int = 1,
    ridge: float = 1e-3,
    name: str = "",
    progress: Callable[[Any], Any] | None = None,
    questions: Sequence[Sequence[int]] | None = None,
    target: str = "reconstruction",
    question_weight: float = 1.0,
    hidden: int = 0,
    steps: int = 2000,
    seed: int = 0,
    answers: Sequence[Sequence[AnswerReading]] | None = None,
    answer_weight: float = 0.0,
    store: ReadingStore | None = None,
    floor_quantile: float = 0.0,
) -> dict[str, Any]:
    """Weights for the `surrogate` policy, fitted on ``contexts[held_out:]`` and checked on the first ones.

    Returns the JSON-ready weights file (`save_weights` writes it): format, feature set, the model shape it
    fits, the weights [layers][KV heads][features] and the fit's figures; with ``hidden`` > 0 also the
    hidden layer (``steps`` Adam steps of 2,048 pairs, ``seed`` for its initialisation and order).
    ``store`` keeps each context's reading on disk and reuses it (refits skip the model passes).
    ``floor_quantile`` flattens the target below that quantile of each context (`target_logs`); the held-out
    Spearman is then measured on the flattened target too.
    """
    if hidden < 0 or (hidden and steps < 1):
        raise ValueError(f"hidden must be >= 0 and steps >= 1, got hidden={hidden}, steps={steps}")
    if len(contexts) <= held_out:
        raise ValueError(f"need more than {held_out} calibration contexts (held_out={held_out}), got {len(contexts)}")
    _target_parts(target, question_weight, answer_weight, floor_quantile)  # bad input fails before any pass
    wrap = progress or (lambda it: tqdm(it, desc="calibration contexts", unit="ctx"))
    xtx: list[torch.Tensor] = []
    xty: list[torch.Tensor] = []
    tests: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    rows: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per layer, kept only for a hidden layer's training
    pairs = 0
    if questions is not None and len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} question sets for {len(contexts)} contexts")
    if answers is not None and len(answers) != len(contexts):
        raise ValueError(f"{len(answers)} answer sets for {len(contexts)} contexts")
    for i, ctx in enumerate(wrap(list(contexts))):
        question_ids = None if questions is None else questions[i]
        answers_i = None if answers is None else answers[i]
        if store is None:
            layers = scored_layers(model, ctx, reconstruction, question_ids=question_ids, target=target,
                                   question_weight=question_weight, answers=answers_i, answer_weight=answer_weight,
                                   floor_quantile=floor_quantile)
        else:
            reading = store.read(model, ctx, reconstruction, passes=passes_for(target, answer_weight),
                                 question_ids=question_ids, answers=answers_i)
            layers = list(zip(reading.features,
                              target_logs(reading, target, question_weight, answer_weight, floor_quantile), strict=True))
            del reading
        if i < held_out:
            tests.append(layers)
            continue
        pairs += sum(log_scores.numel() for _, log_scores in layers)
        if hidden:
            rows = rows or [[] for _ in layers]
            for li, layer_rows in enumerate(layers):
                rows[li].append(layer_rows)
            continue
        for li, (feats, log_scores) in enumerate(layers):
            x, y = feats.double(), log_scores.double()
            a = torch.einsum("hnf,hng->hfg", x, x)
            b = torch.einsum("hnf,hn->hf", x, y)
            if li == len(xtx):
                xtx.append(a)
                xty.append(b)
            else:
                xtx[li] += a
                xty[li] += b
    hidden_in: list[torch.Tensor] | None = None
    hidden_out: list[torch.Tensor] | None = None
    if hidden:
        weights, hidden_in, hidden_out = _train_hidden(rows, hidden, steps, seed, quiet=progress is not None)
    else:
        weights = []
        for a, b in zip(xtx, xty, strict=True):
            eye = torch.eye(a.shape[-1], dtype=a.dtype)
            scale = a.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
            weights.append(torch.linalg.solve(a + ridge * scale * eye, b[..., None]).squeeze(-1).float())  # [H, F]
    by_layer = []
    for li, w in enumerate(weights):
        rhos = []
        for layers in tests:
            feats, log_scores = layers[li]
            pred = predict(feats, w, *((hidden_in[li], hidden_out[li]) if hidden_in and hidden_out else ()))
            rhos += [spearman(pred[h], log_scores[h]) for h in range(log_scores.shape[0])]
        by_layer.append(sum(rhos) / len(rhos))
    head_dim = next(d for d in range(2, 4096, 2) if feature_count(d) == weights[0].shape[-1])
    extra: dict[str, Any] = {}
    if hidden_in is not None and hidden_out is not None:
        extra["hidden"] = {"in": [_rounded(m) for m in hidden_in], "out": [_rounded(m) for m in hidden_out]}
    return {
        "format": FORMAT,
        "features": FEATURES,
        "model": name,
        "num_layers": len(weights),
        "num_kv_heads": int(weights[0].shape[0]),
        "head_dim": head_dim,
        "weights": [_rounded(w) if hidden else w.tolist() for w in weights],
        **extra,
        "fit": {
            "contexts": len(contexts) - held_out,
            "held_out_contexts": held_out,
            "pairs": pairs,
            "ridge": None if hidden else ridge,
            "hidden": hidden,
            "steps": steps if hidden else None,
            "target": target,
            "question_weight": question_weight if target == "both" else None,
            "answer_weight": answer_weight or None,
            "floor_quantile": floor_quantile or None,
            "target_formula": TARGET_FORMULAS[target].format(floor=SCORE_FLOOR, weight=f"{question_weight:g}")
            + (f" (+ {answer_weight:g} x max(answer score, {SCORE_FLOOR}) inside the log)" if answer_weight else ""),
            "held_out_spearman_mean": sum(by_layer) / len(by_layer),
            "held_out_spearman_by_layer": [round(r, 4) for r in by_layer],
        },
    }


def _rounded(t: torch.Tensor) -> list:
    """Nested lists of 6 significant digits (a hidden layer's file stays a few MB instead of ten)."""
    if t.dim() == 0:
        return float(f"{t.item():.6g}")  # type: ignore[return-value]
    return [_rounded(x) for x in t]


def _train_hidden(rows: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int, steps: int, seed: int,
                  quiet: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per (layer, KV head): score = z @ w_lin + relu(z @ w_in + b_in) @ w_out + b, z the standardised
    features, all heads trained together by Adam on squared error; returned folded into the raw features
    (the constant last feature carries the biases and the standardisation), so the policy needs no scaler.

    rows[layer] = [(features [H, n, F], targets [H, n]) per context]; every layer has the same pairs. It is
    consumed (emptied layer by layer) so that the features are held once: copied into one array, never
    permuted or standardised as a whole (each batch is gathered and standardised on its own): one copy of
    the features where concatenating, permuting and standardising made four (-n 12 at 1k/2k/4k peaked at
    19 GiB that way)."""
    gen = torch.Generator().manual_seed(seed)
    heads, feats = rows[0][0][0].shape[0], rows[0][0][0].shape[-1]
    n = sum(t.shape[1] for _, t in rows[0])
    groups = len(rows) * heads
    x = torch.empty(groups, n, feats)  # [L*H, N, F]
    y = torch.empty(groups, n)
    for li in range(len(rows)):
        at = 0
        for f, t in rows[li]:
            x[li * heads:(li + 1) * heads, at:at + t.shape[1]] = f
            y[li * heads:(li + 1) * heads, at:at + t.shape[1]] = t
            at += t.shape[1]
        rows[li] = []
    mu, sd = x.mean(1, keepdim=True), x.std(1, keepdim=True).clamp_min(1e-4)
    mu[..., -1], sd[..., -1] = 1.0, 1.0  # the constant feature standardises to 0: the biases below replace it
    order = torch.randperm(n, generator=gen)
    w_in = (torch.randn(groups, feats, width, generator=gen) / math.sqrt(feats)).requires_grad_()
    b_in = torch.zeros(groups, 1, width, requires_grad=True)
    w_out = (torch.randn(groups, width, 1, generator=gen) / math.sqrt(width)).requires_grad_()
    w_lin = torch.zeros(groups, feats, 1, requires_grad=True)
    bias = y.mean(1).reshape(groups, 1, 1).clone().requires_grad_()
    opt = torch.optim.Adam([w_in, b_in, w_out, w_lin, bias], lr=3e-3)
    batch = min(2048, n)
    for step in tqdm(range(steps), desc="training the hidden layer", unit="step", leave=False, disable=quiet):
        start = (step * batch) % max(n - batch, 1)
        picked = order[start:start + batch]
        zb, yb = (x[:, picked] - mu) / sd, y[:, picked]
        pred = (torch.relu(zb @ w_in + b_in) @ w_out + zb @ w_lin + bias).squeeze(-1)
        loss = ((pred - yb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scale = (mu / sd).squeeze(1)  # [G, F]
        scale[:, -1] = 0.0  # the constant feature's row is replaced by the folded biases
        fold_in = w_in / sd.transpose(1, 2)  # rows of the raw features
        fold_in[:, -1] = b_in.squeeze(1) - torch.einsum("gf,gfw->gw", scale, w_in)
        fold_lin = (w_lin / sd.transpose(1, 2)).squeeze(-1)
        fold_lin[:, -1] = bias.reshape(groups) - torch.einsum("gf,gf->g", scale, w_lin.squeeze(-1))
        return (list(fold_lin.reshape(-1, heads, feats)), list(fold_in.reshape(-1, heads, feats, width)),
                list(w_out.squeeze(-1).reshape(-1, heads, width)))


def blend_weights(files: Sequence[dict[str, Any]], shares: Sequence[float] | None = None) -> dict[str, Any]:
    """One weights file whose score is the weighted mean of the given files' scores (an ensemble of, say, a
    linear and a hidden-layer fit, which err on different pairs). Exact, not refitted: the linear parts add
    up and the hidden layers sit side by side, each output scaled by its share, so serving it costs one
    hidden layer as wide as theirs together. Shares default to equal and must be positive."""
    if len(files) < 2:
        raise ValueError("blending needs at least two weights files")
    shares = list(shares) if shares is not None else [1.0 / len(files)] * len(files)
    if len(shares) != len(files) or any(s <= 0 for s in shares):
        raise ValueError(f"need one positive share per file, got {shares} for {len(files)} files")
    shape = [(f["features"], f["num_layers"], f["num_kv_heads"], f["head_dim"]) for f in files]
    if len(set(shape)) != 1:
        raise ValueError(f"the files were fitted for different shapes or feature sets: {sorted(set(shape))}")
    linear = sum(torch.tensor(f["weights"], dtype=torch.float64) * s for f, s in zip(files, shares, strict=True))
    assert isinstance(linear, torch.Tensor)
    hidden = [(torch.tensor(f["hidden"]["in"], dtype=torch.float64), torch.tensor(f["hidden"]["out"]) * s)
              for f, s in zip(files, shares, strict=True) if f.get("hidden")]
    out = {k: files[0][k] for k in ("format", "features", "model", "num_layers", "num_kv_heads", "head_dim")}
    out["weights"] = [_rounded(w) for w in linear]
    if hidden:
        out["hidden"] = {"in": [_rounded(m) for m in torch.cat([h for h, _ in hidden], -1)],
                         "out": [_rounded(m) for m in torch.cat([o for _, o in hidden], -1)]}
    out["fit"] = {"blend": [{"share": s, **f["fit"]} for f, s in zip(files, shares, strict=True)]}
    return out


def save_weights(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


__all__ = ["PASSES", "TARGETS", "Reading", "ReadingStore", "answer_scores", "blend_weights", "calibration_answers", "calibration_questions", "fit_surrogate", "passes_for", "read_context", "save_weights", "scored_layers", "spearman", "target_logs"]
