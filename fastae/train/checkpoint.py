"""Checkpoints of both trainers (``fit`` and ``train_codec``): one folder of four files.

    model.safetensors   the weights (metadata: the model name)
    config.json         {"fastae": version, "model": name, "config": {...}, "epoch" | "step": n}
    training_state.pt   for resuming: optimizer states, the torch (and CUDA) RNG states, the data
                        generator's state, the history and trainer settings
    history.json        the history, to read

    save_checkpoint(out, model, 3, {"ae": opt}, history)                 # fit: epochs
    done, history, extra = resume_checkpoint(out, model, {"ae": opt})
    model = load_model(out)                                              # any fastae model or codec

``save_checkpoint`` writes every file under a temporary name and renames them only when all are
complete, training_state.pt first and config.json last, so a kill while writing leaves the
previous checkpoint, and one between two renames leaves the two files of different progress,
which ``resume_checkpoint`` refuses.
Checkpoints written before this module (the zoo's ``{"epoch", "optimizers", "rng", "history"}``
state, the codec trainer's ``{"step", "optimizer", "generator", "torch_rng", "hyper_input"}``
state with its history in history.json) load and resume as they are.
"""

import contextlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

import fastae
from fastae._device import resolve_device
from fastae._io import atomic_path, read_json, read_safetensors, read_training_state

WEIGHTS, CONFIG, STATE, HISTORY = "model.safetensors", "config.json", "training_state.pt", "history.json"
CODEC = "image_codec"  # the model name of checkpoints of fastae.train.codec (its models have no ``name``)
UNITS = ("epoch", "step")  # what a trainer counts: fit epochs, train_codec steps
_FORMAT = 2  # training_state.pt written by this module (the trainers' own formats before it had no "format")


def _json(obj):
    """``obj`` as JSON with NaN and inf as null (a diverged loss must not make the file unreadable)."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(obj), indent=1) + "\n"


def save_checkpoint(out, model, done: int, optimizers=None, history=None, *, unit: str = "epoch", name=None,
                    generator=None, extra=None):
    """Write the checkpoint of ``model`` after ``done`` epochs (or steps: ``unit="step"``) into the folder ``out``.

    Args:
        model: a fastae model; ``name`` (default ``model.name``) and ``model.config`` go to config.json.
        optimizers: ``{name: optimizer}``; None writes no training_state.pt (a model to load, not to resume).
        history: anything JSON can hold (``fit``: dict of per-epoch lists; ``train_codec``: list of rows).
        generator: the ``torch.Generator`` that draws the data, whose state a resume restores.
        extra: settings of the trainer (JSON-like) that a resume must check, returned by ``resume_checkpoint``.
    """
    if unit not in UNITS:
        raise ValueError(f"save_checkpoint: unit must be one of {UNITS}, got {unit!r}")
    out = Path(out)
    name = model.name if name is None else name
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {"fastae": fastae.__version__, "model": name, "config": model.config, unit: done}
    written = [CONFIG, *([HISTORY] if history is not None else []), WEIGHTS,
               *([STATE] if optimizers is not None else [])]
    with contextlib.ExitStack() as files:
        # Renamed in the reverse order of entry once every file is written: the state first, config.json last.
        tmp = {f: files.enter_context(atomic_path(out / f)) for f in written}
        # One metadata key: safetensors writes several in a random order, and the same weights must give the same file.
        save_file(weights, str(tmp[WEIGHTS]), metadata={"model": name})
        if optimizers is not None:
            torch.save({"format": _FORMAT, "unit": unit, "done": done,
                        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "generator": None if generator is None else generator.get_state(),
                        "history": history, "extra": extra or {}}, tmp[STATE])
        if history is not None:
            tmp[HISTORY].write_text(_json(history))
        tmp[CONFIG].write_text(json.dumps(config, indent=2) + "\n")


def read_config(folder) -> dict:
    """config.json of the checkpoint in ``folder``; FileNotFoundError when there is none."""
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no fastae checkpoint in {folder}: {CONFIG} is missing")
    config = read_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) or "model" not in config:
        raise ValueError(f"{path}: not a fastae checkpoint config (expected {{'model', 'config', ...}})")
    return config


def _normalized(v):
    return json.loads(json.dumps(v))


def check_config(folder, model, name=None):
    """Raise ValueError if the checkpoint in ``folder`` was written for another model or config."""
    name = model.name if name is None else name
    saved = read_config(folder)
    if saved["model"] != name:
        raise ValueError(f"checkpoint {folder} holds a {saved['model']!r} model, not {name!r}")
    ours = _normalized(model.config)
    differ = {k: (saved["config"].get(k), ours.get(k)) for k in saved["config"].keys() | ours.keys()
              if saved["config"].get(k) != ours.get(k)}
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ValueError(f"checkpoint {folder} was written with another model config ({detail})")


def load_model(folder, device="cpu"):
    """Rebuild the model saved in ``folder`` (by ``fit``, ``train_codec`` or ``save_checkpoint``)
    and load its weights: a fastae.models autoencoder, or for a codec checkpoint its codec model."""
    from fastae.models import build_model
    from fastae.models.codec import build_codec

    device = resolve_device(device, "load_model: device")
    saved = read_config(folder)
    model = build_codec(saved["config"]) if saved["model"] == CODEC else build_model(saved["model"], **saved["config"])
    model.load_state_dict(read_safetensors(Path(folder) / WEIGHTS))
    return model.to(device)


def _read_state(folder) -> dict:
    """training_state.pt of ``folder`` in this module's format, from any format written so far."""
    folder = Path(folder)
    state = read_training_state(folder / STATE)
    if not isinstance(state, dict):
        raise ValueError(f"{folder / STATE}: not a fastae training state")
    if state.get("format") == _FORMAT:
        return state
    if "optimizers" in state and "epoch" in state:  # fit before this module
        return {"unit": "epoch", "done": state["epoch"], "optimizers": state["optimizers"],
                "torch_rng": state["rng"], "cuda_rng": None, "generator": None, "history": state["history"],
                "extra": {}}
    if "optimizer" in state and "step" in state:  # train_codec before this module: history beside it
        history = read_json(folder / HISTORY) if (folder / HISTORY).exists() else []
        return {"unit": "step", "done": state["step"], "optimizers": {"codec": state["optimizer"]},
                "torch_rng": state["torch_rng"], "cuda_rng": None, "generator": state["generator"],
                "history": history, "extra": {"hyper_input": state.get("hyper_input")}}
    raise ValueError(f"{folder / STATE}: not a training state fastae wrote (keys {sorted(state)})")


def resume_checkpoint(folder, model, optimizers: dict, generator=None, *, unit: str = "epoch", name=None):
    """Load the checkpoint in ``folder`` into ``model``, ``optimizers`` (``{name: optimizer}``, as
    saved) and ``generator``, and restore the torch RNG: training continues where it stopped.

    Returns:
        ``(done, history, extra)``: epochs (or steps) done, the history and the trainer's ``extra``.

    Raises:
        FileNotFoundError: no checkpoint in ``folder``.
        ValueError: another model, config or optimizer; a checkpoint of the other trainer; files
            of different progress (a save that was interrupted while renaming).
    """
    check_config(folder, model, name)
    folder = Path(folder)
    if not (folder / STATE).exists():
        raise FileNotFoundError(f"no training state to resume in {folder} ({STATE} is missing)")
    state = _read_state(folder)
    if state["unit"] != unit:
        raise ValueError(f"checkpoint {folder} counts {state['unit']}s, not {unit}s: the other trainer wrote it")
    recorded = read_config(folder).get(unit)
    if recorded != state["done"]:  # renamed first and last: equal unless a save was cut between its renames
        raise ValueError(f"checkpoint {folder} is inconsistent ({CONFIG} at {unit} {recorded}, {STATE} at {unit} "
                         f"{state['done']}): a save was interrupted; start again or restore the folder from a copy")
    model.load_state_dict(read_safetensors(folder / WEIGHTS))
    for key, opt in optimizers.items():
        saved = state["optimizers"].get(key)
        if saved is None or {k for g in saved["param_groups"] for k in g} != \
                {k for g in opt.state_dict()["param_groups"] for k in g}:
            raise ValueError(f"checkpoint {folder} was trained with another optimizer (or other optimizer "
                             f"settings) than {type(opt).__name__}: resume it with the --optimizer it was trained with")
        opt.load_state_dict(saved)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        for i, rng in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, i)
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    return state["done"], state["history"], state["extra"]
