"""Shadow fidelity: what compression costs in answer quality, measured in production on sampled requests.

Offline evaluation says how a config did on a benchmark; this says how it does on the traffic it serves.
For a sampled fraction of requests (`rate`), the answer the compressed cache produced is replayed through
the full cache, teacher-forced over the same answer tokens, and the two next-token distributions are
compared at every answer position: top-1 agreement and KL(full || compressed) in nats, as the evaluator's
fidelity (`kvpilot.evaluation.fidelity.compare`). The replay runs in a worker thread on a second `Engine`
over the same model (no probes, no request hooks, so it is neither recorded as traffic nor observed),
after the response has been returned: the request pays only for keeping its answer's logits. A bounded
queue drops work rather than grow (counted in `dropped`).

Each measurement is one `quality` cache event (detail: top1_agreement, mean_kl, tokens, config hash and
label, deployment config version, and `request`: the key its eviction lineage is stored under, when any) and OpenTelemetry `kvpilot.quality.top1_agreement` and
`kvpilot.quality.kl` histograms plus a `kvpilot.quality.measurements` counter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kvpilot.config import KVConfig, config_hash, config_label
from kvpilot.engine.engine import Engine, Request, Response
from kvpilot.evaluation.fidelity import Reference, compare, log_probs
from kvpilot.probes.worker import SampledWorker

log = logging.getLogger(__name__)

DEFAULT_RATE = 0.05
QUALITY_EVENT = "quality"


@dataclass(frozen=True)
class QualityMeasurement:
    """One answered question, compressed vs full cache over the compressed answer's tokens."""

    question: int
    tokens: int
    top1_agreement: float | None
    mean_kl: float | None
    config: KVConfig
    version: int | None


class ShadowFidelity(SampledWorker):
    """Sample requests, and measure their answers' fidelity against the full cache in a worker thread.

    recorder: where `quality` events go (a `kvpilot.probes.recorder.Recorder`, or None);
    telemetry: a `kvpilot.probes.otel.Telemetry` for the `kvpilot.quality.*` instruments, or None.
    """

    def __init__(self, engine: Engine, *, rate: float = DEFAULT_RATE, recorder: Any = None, telemetry: Any = None,
                 seed: int | None = None, max_pending: int = 4, version: Any = None) -> None:
        self.recorder = recorder
        self.shadow = Engine(engine.model, engine.tokenizer)  # same weights; no observer, no request hooks
        self._version = version or (lambda: None)
        self.measurements: list[QualityMeasurement] = []  # the latest ones, for tests and the handle
        self._instruments = _instruments(telemetry)
        super().__init__("kvpilot-shadow-fidelity", rate, what="shadow fidelity rate", seed=seed,
                         max_pending=max_pending)

    def sample(self, request: Request) -> bool:
        """Whether this request is measured: a fresh context (not a session's continuation), at `rate`."""
        return request.cache is None and self._draw()

    def submit(self, request: Request, response: Response, version: int | None = None, *, tagged: bool = False,
               key: str | None = None) -> bool:
        """Queue a served request (its answers kept their logits) for the full-cache replay; never blocks.
        With `tagged`, `version` is the deployment config version that served it (a canary's or the
        incumbent's; None for a request with its own config); otherwise the version in force. ``key``: the
        request's key (its eviction lineage's), carried by its `quality` events."""
        return self._offer((request, response, version if tagged else self._version(), key))

    def handle(self, job: tuple[Request, Response, int | None, str | None]) -> None:
        request, response, version, key = job
        for m in self.measure(request, response, version):
            self._record(m, key)

    def failed(self, exc: Exception) -> None:
        log.error("shadow fidelity measurement failed", exc_info=exc)

    def measure(self, request: Request, response: Response, version: int | None = None) -> list[QualityMeasurement]:
        """Replay the request on the full cache, teacher-forced over each compressed answer's tokens."""
        answers = response.answers
        teacher = [list(a.raw_token_ids) for a in answers]
        questions = list(request.questions)
        full = self.shadow.serve(Request(request.context_ids, questions, 0, config=KVConfig(), teacher_tokens=teacher))
        out = []
        for qi, (answer, shadow) in enumerate(zip(answers, full.answers, strict=True)):
            if not answer.raw_token_ids or not answer.step_logits or shadow.teacher_logits is None:
                continue
            reference = Reference(tokens=list(answer.raw_token_ids), logprobs=log_probs(shadow.teacher_logits), text="")
            fid = compare(reference, answer.step_logits)
            out.append(QualityMeasurement(qi, fid.tokens, fid.agreement, fid.mean_kl, answer.config, version))
        return out

    def _record(self, m: QualityMeasurement, key: str | None = None) -> None:
        self.measurements = [*self.measurements[-999:], m]
        detail = {"question": m.question, "tokens": m.tokens, "top1_agreement": m.top1_agreement,
                  "mean_kl": m.mean_kl, "config_hash": config_hash(m.config), "config": config_label(m.config),
                  "version": m.version}
        if key is not None:
            detail["request"] = key
        if self.recorder is not None:
            self.recorder.event(QUALITY_EVENT, detail=detail)
        if self._instruments is not None:
            agreement, kl, count, attrs = self._instruments
            labels = {**attrs, "kvpilot.config": detail["config"], "kvpilot.config.version": m.version or 0}
            count.add(1, labels)
            if m.top1_agreement is not None:
                agreement.record(m.top1_agreement, labels)
            if m.mean_kl is not None:
                kl.record(m.mean_kl, labels)


def _instruments(telemetry: Any) -> tuple[Any, Any, Any, dict[str, Any]] | None:
    if telemetry is None:
        return None
    meter = telemetry.meter_provider.get_meter("kvpilot.quality")
    agreement = meter.create_histogram("kvpilot.quality.top1_agreement", unit="1",
                                       description="Share of answer tokens whose argmax matches the full cache's",
                                       explicit_bucket_boundaries_advisory=[0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])
    kl = meter.create_histogram("kvpilot.quality.kl", unit="nat",
                                description="Mean KL(full || compressed) over the answer tokens",
                                explicit_bucket_boundaries_advisory=[0.001, 0.01, 0.05, 0.1, 0.3, 1.0, 3.0])
    count = meter.create_counter("kvpilot.quality.measurements", unit="{answer}",
                                 description="Answers measured against the full cache")
    return agreement, kl, count, dict(telemetry.attributes)
