"""Writing files so that a crash or a kill never leaves a half-written one behind."""

import contextlib
import os
import tempfile
from pathlib import Path


TEMP_SUFFIX = ".fastae-tmp"  # distinctive: a folder run removes stale ones and must not take a user's file


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on
    POSIX), on failure removed — either the old file or the complete new one is there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a new temporary folder beside ``path``; on success it takes the place of ``path`` (an
    existing ``path`` is removed only then), on failure it is removed with what was written in it
    — so ``path`` is either the old folder or the complete new one."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if os.path.lexists(path):  # replaced: moved aside, then removed once the new one is in place
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
            os.replace(path, old / "old")
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_safetensors(path, device="cpu") -> dict:
    """The tensors of the safetensors file ``path``; a truncated or foreign file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def safetensors_metadata(path) -> dict:
    """The metadata of the safetensors file ``path`` ({} if none); ValueError naming a bad file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def read_training_state(path) -> dict:
    """A training state written by ``torch.save``; a truncated or foreign file is a ValueError naming it."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a readable training state ({str(e).splitlines()[0]})") from None


def read_json(path):
    """The JSON in ``path``; a damaged or non-JSON file is a ValueError naming it."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def replace_between(text: str, section: str, start: str, end: str) -> str:
    """``text`` with everything between the marker lines ``start`` and ``end`` replaced by
    ``section``; the rest byte for byte. ValueError unless each marker occurs once, in order."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected exactly one {start} and one {end} in the file")
    head, rest = text.split(start)
    if end not in rest:
        raise ValueError(f"{end} comes before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{section}\n{end}{tail}"


def rewrite_section(path, section: str, start: str, end: str):
    """Rewrite the text between the markers of the file ``path`` (atomically; its line endings and
    the rest stay as they are)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    text = replace_between(text, section, start, end)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
