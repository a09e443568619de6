"""The eviction lineage panel (`kvpilot.dashboard.views.lineage.render_lineage`, on the Sessions page for
now) on SQLite and PostgreSQL: sampled requests worst answered first, the picked request's context with its
evicted units marked (stored text escaped), and its units' table."""

from __future__ import annotations

import time

from kvpilot.dashboard.views.lineage import marked_context
from tests.dashboard.helpers import frame, metrics, open_page, texts

PIECES = [("<|im_start|>user\n", 3, 1.0), ("Alice lives in *Paris*.", 6, 0.9), (" The code is 4417.", 6, 0.0),
          (" Bob lives in Rome.", 5, 0.4)]
CONTEXT = "".join(p for p, _, _ in PIECES)


def _units():
    units, tok, char = [], 0, 0
    for text, n, kept in PIECES:
        units.append([tok, tok + n, char, char + len(text), kept])
        tok, char = tok + n, char + len(text)
    return units


UNITS = _units()


def _seed(store):
    inst = store.register_instance("chat", "e0")
    now = time.time()
    good = store.add_lineage(request_key="good", kind="sentence", context=CONTEXT, context_tokens=20,
                             kept_fraction=0.95, units=[[0, 20, 0, len(CONTEXT), 0.95]],
                             answers=[{"question": "Where does Alice live?", "answer": "Paris"}], deployment="chat",
                             instance_id=inst.id, config={"policy": "knorm", "compression_ratio": 0.05}, ts=now - 20)
    bad = store.add_lineage(request_key="bad", kind="sentence", context=CONTEXT, context_tokens=20,
                            kept_fraction=0.55, units=UNITS,
                            answers=[{"question": "What is the code?", "answer": "1234"}], deployment="chat",
                            instance_id=inst.id, config={"policy": "streaming", "compression_ratio": 0.5}, ts=now - 10)
    store.add_events([{"ts": now - 5, "kind": "quality", "detail": {"request": "bad", "top1_agreement": 0.4,
                                                                    "mean_kl": 2.0}},
                      {"ts": now - 5, "kind": "quality", "detail": {"request": "good", "top1_agreement": 1.0,
                                                                    "mean_kl": 0.01}}], instance_id=inst.id)
    return good, bad


def test_lineage_panel_shows_what_the_cache_forgot(app, store, db_url):
    good, bad = _seed(store)
    at = open_page(app(db_url), "quality")
    assert not at.error, [e.value for e in at.error]
    requests = frame(at, "id", "kept", "evicted units", "top-1 agreement")
    assert list(requests["id"]) == [bad, good]  # worst answered first
    assert list(requests["evicted units"]) == ["2 / 4", "0 / 1"]
    assert requests["config"].tolist() == ["streaming-0.5", "knorm-0.05"]
    m = metrics(at)
    assert m["Kept"] == "55.0 %" and m["Evicted units"] == "2 / 4" and m["Top-1 agreement"] == "0.40"
    answers = frame(at, "question", "answer")
    assert answers.to_dict("records") == [{"question": "What is the code?", "answer": "1234"}]
    units = frame(at, "tokens", "characters", "kept", "evicted", "text")
    assert units["text"].tolist() == ["The code is 4417.", "Bob lives in Rome."]  # evicted only, by default
    marked = texts(at)
    assert r":red-background[The code is 4417\.]" in marked
    assert r"Alice lives in \*Paris\*\." in marked and r":red-background[Alice" not in marked  # escaped, kept
    at.checkbox(key="lineage_evicted_only").uncheck().run()
    assert len(frame(at, "tokens", "characters", "kept", "evicted", "text")) == 4
    at.selectbox(key="lineage_request").set_value(good).run()
    assert metrics(at)["Evicted units"] == "0 / 1" and metrics(at)["Top-1 agreement"] == "1.00"


def test_lineage_panel_without_lineage_says_how_to_record_it(app, store, db_url):
    store.register_instance("chat", "e0")
    at = open_page(app(db_url), "quality")
    assert "attach(engine, store, lineage=0.01)" in texts(at)


def test_marked_context_is_cut_and_escaped(store):
    _, bad = _seed(store)
    info = store.lineage(bad)
    assert marked_context(info, limit=20).endswith(" …")
    assert "<|im_start|>" not in marked_context(info)  # HTML-like text escaped
