"""The user's device argument as a ``torch.device``, or a ValueError that says why it cannot be used."""

import torch


def resolve_device(device="auto", what: str = "device") -> torch.device:
    """``"auto"``: the current CUDA device if there is one, else the CPU. Any other value must name a
    device this torch can use now: "cuda" on a machine without a GPU (or a CPU build of torch),
    "cuda:3" on a machine with two GPUs or an unknown name raise ValueError naming ``what``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: {device!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {device!r} is not available here: torch {torch.__version__} sees no CUDA "
                             f"device (torch.cuda.is_available() is False); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{what}: {device!r} is not available here: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif dev.type == "meta":
        raise ValueError(f"{what}: 'meta' tensors hold no data; expected auto, cpu, cuda or cuda:N")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as e:  # each backend (mps, xpu, ...) fails its own way, some at length
            reason = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0]
            raise ValueError(f"{what}: {device!r} is not available here ({reason})") from None
    return dev
