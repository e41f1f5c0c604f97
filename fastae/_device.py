"""The device a user asks for (``resolve_device``) and the autocast dtype it trains in (``autocast_dtype``)."""

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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(amp, device: torch.device, cpu: bool = False):
    """The dtype to ``torch.autocast`` to for ``amp`` on ``device``, or None for no autocast.

    ``amp``: "auto" (or True): bfloat16 where the hardware computes it natively: a CUDA GPU that
    supports it and, with ``cpu=True``, a CPU with AVX512-BF16/AMX (asked for by the codec trainer,
    whose steps were measured ~1.7x faster so on a Zen 4 CPU); "bf16" or "fp16": that dtype on any
    device; "off" (or False, None): no autocast."""
    if amp in (False, None, "off"):
        return None
    if amp in (True, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if cpu and device.type == "cpu" and cpu_has_bf16() else None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"amp must be 'auto', 'off', 'bf16' or 'fp16', got {amp!r}")
    return dtypes[amp]
