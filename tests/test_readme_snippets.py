"""Every Python and shell snippet in README.md runs as printed, in README order, the way a newcomer would
paste them: one fresh working folder for all of them, the default store (`$KVPILOT_DB` pointed at a file in
that folder, so nothing lands in ~/.cache), and the `python` and `kvpilot` of this environment.

A snippet passes when it exits 0 and prints no Python warning. The few blocks that cannot run inside a test
(the set-up itself, long-running servers) are listed in NOT_RUN with the test that covers them instead;
a block that is neither run nor listed fails the test, and so does a NOT_RUN entry the README no longer has.
Slow: the snippets load the bundled model and run small evaluations, a tuning study and replays (5 min 43 s
with OMP_NUM_THREADS=1 on the shared 2-core machine at a load average of 8-10; `make test` runs it, `make
test-fast` leaves it out).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = {"python", "bash"}
TIMEOUT_S = 900

# first line of a block -> why it does not run here, and what covers it
NOT_RUN = {
    "make demo   #": "the whole set-up and the full demo; tests/test_demo_command.py runs the demo at a small size",
    "kvpilot dashboard  ": "a server that runs until stopped; tests/dashboard/test_command.py and test_browser.py "
                           "start it on a store and open every page",
    "make vllm-env": "set-up from a checkout (the Makefile); .ci/run builds it and tests/vllm runs on it",
    "# passkey and convqa: search-set and held-out": "measurements of tens of minutes to hours, run from a checkout "
                                                     "(benchmarks/); tests/tuner/test_heldout.py runs the held-out "
                                                     "tuner at a small size",
}
WARNING = re.compile(r"\b\w+Warning: ")


@dataclass(frozen=True)
class Snippet:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0] if self.code else ""


def snippets(text: str) -> list[Snippet]:
    """Every fenced code block of the text, with its language and where it starts."""
    out: list[Snippet] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        out.append(Snippet(m.group(1), start + 1, "\n".join(body) + "\n"))
        i += 1
    return out


def skipped_reason(snippet: Snippet) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if snippet.first_line.startswith(prefix)), None)


def test_every_block_is_runnable_or_listed():
    blocks = snippets(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no code blocks"
    for b in blocks:
        assert b.lang in RUNNABLE, f"README.md:{b.line}: a ```{b.lang} block; write runnable python or bash"
    for prefix in NOT_RUN:
        assert any(b.first_line.startswith(prefix) for b in blocks), f"NOT_RUN names a block README.md lacks: {prefix!r}"


@pytest.mark.slow
def test_readme_snippets_run_as_printed(tmp_path):
    env = dict(os.environ)
    env["KVPILOT_DB"] = f"sqlite:///{tmp_path / 'kvpilot.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONWARNINGS", None)
    ran = 0
    for s in snippets(README.read_text(encoding="utf-8")):
        if skipped_reason(s) is not None:
            continue
        argv = [sys.executable, "-c", s.code] if s.lang == "python" else ["bash", "-euo", "pipefail", "-c", s.code]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        where = f"README.md:{s.line} ({s.lang})"
        assert proc.returncode == 0, f"{where} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        warned = WARNING.findall(proc.stderr) + WARNING.findall(proc.stdout)
        assert not warned, f"{where} printed warnings:\n{proc.stderr[-3000:]}"
        ran += 1
    assert ran >= 6
