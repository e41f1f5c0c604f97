"""Store the latent codes of any fastae autoencoder in a .fae file.

    model = fastae.train.load_model("runs/mnist-ae")          # e.g. the MNIST MLP AE, 64-d code
    lc = fastae.codec.LatentCodec(model, step=0.05)
    data = lc.compress(x)                                     # x: [B, 1, 28, 28] -> bytes
    x_hat = lc.decompress(data)                               # [B, 1, 28, 28], model.decode of the stored codes
    z_hat = lc.decompress(data, decode=False)                 # the dequantized codes [B, latent]

The codes are quantized uniformly with ``step`` (a smaller step keeps more detail and costs more
bits), and coded with rANS under their own histogram, which the file carries (a per-file
adaptive table: no training of an entropy model needed). The header records the model's name and
a hash of its weights: a file decodes only with the same weights.
"""

import struct

import numpy as np
import torch

from fastae.codec import rans
from fastae.codec.format import CODER_RANS, CodecError, Header, pack, unpack
from fastae.codec.model_file import model_hash
from fastae.codec.tables import quantize_pmf

MAX_SYMBOLS = 1 << 12  # distinct quantized values a file may use


def _cdf(freq: np.ndarray) -> np.ndarray:
    """The one-table cdf [1, K+1] of frequencies ``freq`` [K]."""
    return np.concatenate([[0], np.cumsum(freq)]).astype(np.int32)[None]


class LatentCodec:
    """Compress batches through ``model.encode`` into .fae bytes, and back through ``model.decode``."""

    def __init__(self, model, step: float = 0.05):
        if not hasattr(model, "encode") or not hasattr(model, "decode"):
            raise TypeError(f"LatentCodec: expected a fastae autoencoder (with encode and decode), "
                            f"got {type(model).__name__}")
        if not (isinstance(step, (int, float)) and step > 0 and np.isfinite(step)):
            raise ValueError(f"LatentCodec: step must be a positive number, got {step!r}")
        self.model, self.step = model, float(step)
        self.model_id = f"latent:{getattr(model, 'name', type(model).__name__)}"[:64]
        self.hash = model_hash(model.state_dict())
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> bytes:
        """The codes of the batch ``x`` as .fae bytes."""
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"LatentCodec.compress: expected a non-empty batch tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        was_training = self.model.training
        self.model.eval()
        try:
            z = self.model.encode(x.to(self.device))
        finally:
            self.model.train(was_training)
        if isinstance(z, tuple):  # a VAE's encode gives (mu, logvar): store the mean
            z = z[0]
        z = z.reshape(z.shape[0], -1).float()
        if z.numel() == 0:
            raise ValueError(f"LatentCodec.compress: empty batch (codes of shape {tuple(z.shape)})")
        if not torch.isfinite(z).all():
            raise ValueError("LatentCodec.compress: the model's codes are not all finite (NaN or inf)")
        q = torch.round(z / self.step).to(torch.int64).cpu()
        b, d = q.shape
        lo, hi = int(q.min()), int(q.max())
        hi = max(hi, lo + 1)  # at least two symbols: a one-symbol table's 2**16 does not fit its 16 bits
        if hi - lo + 1 > MAX_SYMBOLS:
            raise ValueError(f"LatentCodec.compress: the codes span {hi - lo + 1} quantization steps, more than "
                             f"{MAX_SYMBOLS}; use a larger step (now {self.step})")
        counts = torch.bincount((q - lo).flatten(), minlength=hi - lo + 1).numpy()
        freq = quantize_pmf(counts / counts.sum(), 0.0)[:-1]  # no escape: the table covers every value
        freq[np.argmax(freq)] += 1  # give the dropped escape's slot back
        cdf = _cdf(freq)
        stream = rans.encode((q - lo).reshape(1, -1).to(torch.int32), cdf, np.zeros(1, np.int32))
        params = struct.pack("<dqI", self.step, lo, len(freq)) + freq.astype("<u2").tobytes()
        header = Header(self.model_id, self.hash, 1, CODER_RANS, rans.PRECISION, b, d, 1, 8, ((b, d),), (),
                        version=1)  # version 1: the header names the autoencoder
        return pack(header, [params, stream])

    @torch.no_grad()
    def decompress(self, data, decode: bool = True) -> torch.Tensor:
        """``model.decode`` of the stored codes (``decode=False``: the dequantized codes [B, latent])."""
        header, streams = unpack(data)
        if header.model_id != self.model_id or header.model_hash != self.hash:
            raise CodecError(f"model hash mismatch: the file holds codes of {header.model_id!r} "
                             f"(hash {header.model_hash.hex()}), this is {self.model_id!r} (hash {self.hash.hex()})")
        b, d = header.height, header.width
        if header.latent_shapes != ((b, d),) or len(streams) != 2 or len(streams[0]) < 20:
            raise CodecError("corrupt .fae file: unexpected latent shapes or streams for latent codes")
        step, lo, k = struct.unpack("<dqI", streams[0][:20])
        if not (1 <= k <= MAX_SYMBOLS and len(streams[0]) == 20 + 2 * k and step > 0 and np.isfinite(step)):
            raise CodecError("corrupt .fae file: bad quantization parameters")
        freq = np.frombuffer(streams[0][20:], dtype="<u2").astype(np.int64)
        if freq.sum() != 1 << rans.PRECISION:
            raise CodecError("corrupt .fae file: the frequency table does not add up")
        cdf = _cdf(freq)
        try:
            symbols = rans.decode(streams[1], cdf, np.zeros(1, np.int32), b * d)
        except ValueError as e:
            raise CodecError(f"corrupt .fae file: {e}") from None
        z = ((symbols.reshape(b, d).to(torch.int64) + lo).to(torch.float32) * step).to(self.device)
        if not decode:
            return z
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.decode(z)
        finally:
            self.model.train(was_training)
