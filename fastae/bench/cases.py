"""What a benchmark case is, shared by the suites, the runner, the report and the bench/
pytest-benchmark files: a case names one measured thing (``"mlp-ae train step batch 4096
float32"``) and the implementations timed side by side (``"fastae"``, ``"eager"``, ``"compile"``,
``"fastae-cpu"`` …); the rows of the results JSON are (case, implementation) pairs."""

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import fastae
from fastae.ops import _backend

SCHEMA = "fastae-bench/1"  # the results JSON's schema: keep every field, add only optional ones
SUITES = ("ops", "losses", "train", "codec")
BASELINES = ("eager", "compile", "addmm_activation")  # each row's ratio_vs_<baseline>
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Target:
    """A goal the issue sets for fastae's rows of a case on CUDA; ``check(row)`` -> True/False/None."""
    text: str
    check: Callable[[dict], Optional[bool]]


def ratio_target(text, eager=None, compile=None, frac=None) -> Target:
    """A target met when the row's ratios to eager / compile and its fraction of peak reach these."""
    def check(row):
        needs = [(row.get("ratio_vs_eager"), eager), (row.get("ratio_vs_compile"), compile),
                 (row.get("frac_of_peak"), frac)]
        needs = [(v, goal) for v, goal in needs if goal is not None]
        if any(v is None for v, _ in needs):
            return None
        return all(v >= goal for v, goal in needs)

    return Target(text, check)


@dataclass
class Prepared:
    """What a case's setup returns: ``impls`` maps each implementation to a zero-argument step
    (or to a string: why it cannot run here); ``inputs`` are the tensors whose ``.grad`` a step
    makes (cleared before a peak-memory measurement); ``extra`` maps an implementation to figures
    its row carries (bits/symbol)."""
    impls: dict
    inputs: tuple = ()
    extra: dict = field(default_factory=dict)


class Lazy:
    """An impl's step that is built only when that impl runs (compiling, building a model)."""

    def __init__(self, build):
        self.build = build


@dataclass(repr=False)
class Case:
    suite: str
    name: str
    impls: tuple
    setup: Callable[[], Prepared]
    dtype: Optional[str] = None  # which matmul peak flops are compared against
    flops: Optional[float] = None
    bytes: Optional[float] = None
    rates: dict = field(default_factory=dict)  # unit -> amount per call, e.g. {"samples/s": 4096}
    target: Optional[Target] = None
    memory: Optional[str] = None  # "cuda": peak allocated in-process; "rss": a subprocess per impl
    memory_spec: Optional[dict] = None  # rss: {"batch": …, "impls": the impls measured}
    device: Optional[torch.device] = None  # where it runs, when not the run's device (the codec's CPU rows)

    def __repr__(self):  # short: pytest-benchmark writes a parameter's repr into its JSON
        return f"Case({self.name!r})"


class Notes(dict):
    """An ordered set of notes: what a run left out and why."""

    def add(self, text):
        self[text] = None


def is_fastae(impl) -> bool:
    return impl.startswith("fastae")


def fastae_backends(device, notes) -> list:
    """fastae backends that run natively on ``device``: [(impl name, backend)]."""
    device = torch.device(device)
    out = []
    for name, (ok, reason) in fastae.ops.available_backends().items():
        if name == "torch" or not _backend._runs_on(name, device):
            continue
        if name == "triton" and device.type == "cpu":
            notes.add("fastae-triton rows skipped on the CPU: Triton runs there only in its interpreter "
                      "(TRITON_INTERPRET=1), which tests correctness and is not a speed")
            continue
        if not ok:
            notes.add(f"fastae-{name} not available: {reason}")
            continue
        out.append((f"fastae-{name}", name))
    if not out:
        notes.add(f"no fused fastae backend runs on {device.type} here; the fastae rows are the torch backend")
        out.append(("fastae-torch", "torch"))
    return out


def compiled(fn, **kwargs):
    """``torch.compile(fn)`` after a reset: every case compiles afresh (shared code objects would
    hit the recompile limit)."""
    torch._dynamo.reset()
    return torch.compile(fn, **kwargs)


def backend_call(name, fn):
    """``fn`` run under ``fastae.ops.backend(name)``."""
    def call():
        with fastae.ops.backend(name):
            return fn()
    return call


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
