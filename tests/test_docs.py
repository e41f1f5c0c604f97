"""Every ```python, ```sh and ```bash block of README.md and docs/*.md runs, so no example can lie.

Each block runs on its own (a fresh process) in a scratch copy of the repository's layout: a
folder whose entries link to the checkout's (so `bench/results/...` and `experiments/...` read as
in the docs) and whose parent holds `shared/` (a link to the data beside the checkout), so
`../shared/data/kodak` resolves as it does for a user; what a block writes stays in the scratch
folder. A block that reads `../shared` is skipped where the data is absent (a contributor's clone
without it). Not run: the README's first sh block (install, then the test suite: it is what CI
runs) and blocks fenced as ```text (command synopses, and commands that need a GPU or hours).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RUN = {"python": [sys.executable, "-"], "sh": ["bash", "-euo", "pipefail", "-s"], "bash": ["bash", "-euo", "pipefail", "-s"]}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    out = []
    for page in pages:
        text = page.read_text()
        first_sh = True
        for match in FENCE.finditer(text):
            lang, code = match.group(1), match.group(2)
            if lang not in RUN:
                continue
            if page.name == "README.md" and lang == "sh" and first_sh:
                first_sh = False  # install + tests: CI runs exactly this block
                continue
            line = text[:match.start()].count("\n") + 1
            out.append(pytest.param(lang, code, id=f"{page.relative_to(ROOT)}:{line}"))
    return out


def test_docs_have_runnable_blocks():
    assert len(blocks()) >= 10


@pytest.fixture()
def scratch(tmp_path):
    """A folder that looks like the checkout beside ../shared, where writes stay."""
    work = tmp_path / "fastae"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "runs", "build", "dist"):
            (work / entry.name).symlink_to(entry)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("lang, code", blocks())
def test_block_runs(lang, code, scratch):
    if "../shared" in code and not SHARED.is_dir():
        pytest.skip(f"needs the data beside the checkout ({SHARED})")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    env.pop("TRITON_INTERPRET", None)  # as a user runs it: no CUDA here means the triton backend is unavailable
    done = subprocess.run(RUN[lang], input=code, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"block failed (exit {done.returncode}):\n{code}\n--- stdout\n{done.stdout[-3000:]}" \
                                 f"\n--- stderr\n{done.stderr[-3000:]}"
