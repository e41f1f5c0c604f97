"""Checkpoints: ``model.safetensors`` (weights), ``config.json`` (which model, its config, how far
training got) and ``training_state.pt`` (optimizer state, RNG, history: for resuming), each
written atomically."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import fastae
from fastae._device import resolve_device
from fastae._io import atomic_path, read_json, read_safetensors, read_training_state, write_text

WEIGHTS, CONFIG, STATE = "model.safetensors", "config.json", "training_state.pt"


def write_weights(out, model, name: str):
    """``model``'s state dict as ``out``/model.safetensors (atomically; metadata: the model name)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(Path(out) / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"model": name})


def write_config(out, name: str, config: dict, **progress):
    """``out``/config.json: the fastae version, the model name and config, how far training got."""
    body = {"fastae": fastae.__version__, "model": name, "config": config, **progress}
    write_text(Path(out) / CONFIG, json.dumps(body, indent=2) + "\n")


def save_checkpoint(out, model, epoch, optimizers=None, history=None, extra=None):
    """Write the checkpoint files of ``model`` after ``epoch`` epochs into the folder ``out``."""
    out = Path(out)
    write_weights(out, model, model.name)
    if optimizers is not None:
        with atomic_path(out / STATE) as tmp:
            torch.save({"epoch": epoch, "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                        "rng": torch.get_rng_state(), "history": history}, tmp)
    write_config(out, model.name, model.config, epoch=epoch, **(extra or {}))


def read_config(folder):
    path = Path(folder) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"no fastae checkpoint in {folder}: {CONFIG} is missing")
    return read_json(path)


def check_config(folder, model):
    """Raise ValueError if the checkpoint in ``folder`` was written for another model or config."""
    saved = read_config(folder)
    if saved["model"] != model.name:
        raise ValueError(f"checkpoint {folder} holds a {saved['model']!r} model, not {model.name!r}")
    differ = {k: (saved["config"].get(k), v) for k, v in model.config.items()
              if json.loads(json.dumps(v)) != saved["config"].get(k)}
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a!r}, requested {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ValueError(f"checkpoint {folder} was written with another model config ({detail})")


def load_model(folder, device="cpu"):
    """Rebuild the model saved in ``folder`` and load its weights."""
    from fastae.models import build_model

    device = resolve_device(device, "load_model: device")
    saved = read_config(folder)
    model = build_model(saved["model"], **saved["config"])
    model.load_state_dict(read_safetensors(Path(folder) / WEIGHTS, device))
    return model.to(device)


def load_training_state(folder, model, optimizers):
    """Load weights and optimizer state from ``folder`` into ``model`` and ``optimizers``; returns
    (epochs done, history)."""
    check_config(folder, model)
    model.load_state_dict(read_safetensors(Path(folder) / WEIGHTS))
    state = read_training_state(Path(folder) / STATE)
    for name, opt in optimizers.items():
        saved = state["optimizers"].get(name)
        if saved is None or {k for g in saved["param_groups"] for k in g} != \
                {k for g in opt.state_dict()["param_groups"] for k in g}:
            raise ValueError(f"checkpoint {folder} was trained with another optimizer (or other optimizer "
                             f"settings) than {type(opt).__name__}: resume it with the --optimizer it was trained with")
        opt.load_state_dict(saved)
    torch.set_rng_state(state["rng"])
    return state["epoch"], state["history"]
