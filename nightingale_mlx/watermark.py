"""Resemble AI's Perth implicit watermark (resemble-perth 1.0.1, `PerthImplicitWatermarker`) in MLX.

The reference marks every generate() output with it; so do we, with its trained weights.
Embedding: the audio is resampled to 32 kHz (soxr HQ, librosa's default), its STFT (n_fft 2048,
hop 320, Hann) magnitudes in dB are normalised to [0, 1], a conv network adds a residual to the
bins below 2 kHz of every frame that is not silent, and the iSTFT with the original phase is
resampled back. Detection: polyphase resampling to 32 kHz (as the reference), three conv branches
over the same bins at 1.25x, 1x and 0.75x time scale, their masked means weighted by a softmax
attention: a score in [0, 1]; the reference rounds it, so >= 0.5 is marked.

`WatermarkStream` is the one embedding path: generate() pushes the whole utterance at once, stream()
pushes chunk by chunk. Each push marks a window that starts `CONTEXT` samples before the first
unsent one (the whole receptive field, so the left side is exactly the one-shot result) and holds
back the newest `holdback` samples until their right context arrives; soxr's streaming resamplers
give the one-shot samples. Chunks therefore join without seams.
"""

import logging
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .audio.stft import hann_window, istft, stft
from .models.cpu_kernels import _own_threads, on_cpu

logger = logging.getLogger(__name__)

SAMPLE_RATE, N_FFT, HOP = 32000, 2048, 320  # the checkpoint's hparams.yaml
SUBBAND = 128  # round(1025 * max_wmark_freq 2000 / 16000): the bins it marks and reads
HIDDEN = 256
MAG_MIN_DB, HEADROOM_DB = -180.0, 15.0  # 20 log10(stft_magnitude_min 1e-9); normalize()'s headroom
DB_RANGE = HEADROOM_DB - MAG_MIN_DB
MASK_FRACTION = 0.05  # magmask: frames whose summed magnitude exceeds 5% of the loudest are marked
THRESHOLD = 0.5  # get_watermark rounds the clipped score
WATERMARK_FILE = "watermark.safetensors"
# Left context that makes a window's output exact: half an STFT window, the encoder's receptive
# field (5 convs of width 7: 15 frames), half an iSTFT window; rounded up to whole hops.
CONTEXT = -(-(N_FFT + 15 * HOP) // HOP) * HOP
STREAM_HOLDBACK = 2 * HOP  # measured: see README, Watermark (seams and deviation from one-shot)
MIN_SAMPLES = N_FFT // 2 + 1  # the STFT's reflect padding needs this many 32 kHz samples


class WatermarkError(ValueError):
    """Missing or unusable watermark weights."""


class _Conv(nn.Module):
    """perth's Conv: a same-padded Conv1d, LeakyReLU(0.01) unless last."""

    def __init__(self, i: int, o: int, k: int, act: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(i, o, k, padding=(k - 1) // 2)
        self.act = act

    def __call__(self, x):
        x = self.conv(x)
        return nn.leaky_relu(x, 0.01) if self.act else x


def _layers(i: int, o: int) -> list:
    return [_Conv(i, HIDDEN, 1), *[_Conv(HIDDEN, HIDDEN, 7) for _ in range(5)], _Conv(HIDDEN, o, 1, act=False)]


def _run(layers, x):
    """A conv stack over (1, T, C). On MLX's CPU backend the convs are numpy matmuls (numpy's own
    BLAS: MLX's CPU convs go through the system BLAS, ~8x slower without OpenBLAS, measured)."""
    if not on_cpu():
        for layer in layers:
            x = layer(x)
        return x
    with _own_threads():  # one BLAS thread: two pools spinning on two cores were 3-10x slower (measured)
        return mx.array(_run_numpy(layers, np.array(x[0], dtype=np.float32)))[None]


def _run_numpy(layers, h: np.ndarray) -> np.ndarray:
    for layer in layers:
        w, b = _numpy_conv(layer.conv)
        k = w.shape[0] // h.shape[1]
        if k > 1:
            p = (k - 1) // 2
            padded = np.pad(h, ((p, p), (0, 0)))
            h = np.concatenate([padded[i : i + len(h)] for i in range(k)], axis=1)
        h = h @ w + b
        if layer.act:
            h = np.where(h > 0, h, np.float32(0.01) * h)
    return h


def _numpy_conv(conv: nn.Conv1d):
    """The layer's weight as a (K * I, O) matrix for an im2col product, and its bias (cached)."""
    cached = getattr(conv, "_numpy", None)
    if cached is None or cached[2] is not conv.weight:
        w = np.array(conv.weight, dtype=np.float32)  # (O, K, I)
        cached = (np.ascontiguousarray(w.reshape(w.shape[0], -1).T), np.array(conv.bias, np.float32), conv.weight)
        object.__setattr__(conv, "_numpy", cached)
    return cached[0], cached[1]


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _layers(SUBBAND, SUBBAND)


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.slow_layers, self.normal_layers, self.fast_layers = (_layers(SUBBAND, 2) for _ in range(3))


class PerthNet(nn.Module):
    """The encoder and decoder; parameter names are the checkpoint's (`encoder.layers.0.conv.weight`)."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = _Encoder(), _Decoder()


def _lerp_index(n_in: int, n_out: int):
    """F.interpolate(mode='linear', align_corners=True) source indices and weights, in float32 as torch."""
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    src = np.arange(n_out, dtype=np.float32) * scale
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """F.interpolate(mode='nearest') source indices: floor(dst * in / out) in float32, clamped."""
    src = np.floor(np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)).astype(np.int64)
    return np.minimum(src, n_in - 1)


class Watermarker:
    """Perth embed and detect at any sample rate, with the trained weights."""

    sample_rate = SAMPLE_RATE

    def __init__(self, net: PerthNet):
        self.net = net
        self.window = hann_window(N_FFT)
        mx.eval(self.window, net.parameters())  # usable from any thread's stream (TTS.running)

    # --- shared front end -------------------------------------------------------------------

    def _spectrum(self, x32: np.ndarray):
        """-> complex STFT (1, T, 1025) and its normalised dB magnitudes (cx_to_magphase)."""
        spec = stft(mx.array(x32, dtype=mx.float32)[None], N_FFT, HOP, self.window)
        db = 20 * mx.log10(mx.maximum(mx.abs(spec), 10 ** (MAG_MIN_DB / 20)))
        return spec, (db - MAG_MIN_DB) / DB_RANGE

    # --- embedding --------------------------------------------------------------------------

    def mark32(self, x32: np.ndarray, peak: float = 0.0):
        """Marks 32 kHz samples; `peak` is the loudest frame seen before (magmask's max).
        Returns (marked samples, same length; the new peak)."""
        if len(x32) < MIN_SAMPLES:
            return np.asarray(x32, np.float32), peak
        spec, mag = self._spectrum(x32)
        level = mag.sum(axis=-1)  # (1, T)
        peak = max(peak, float(level.max()))
        mask = (level > peak * MASK_FRACTION).astype(mx.float32)[..., None]
        residual = _run(self.net.encoder.layers, mag[..., :SUBBAND]) * mask
        # Adding r to the normalised dB magnitude multiplies the bin by 10^(r * range / 20); the
        # phase is kept (magphase_to_cx with the original phase).
        gain = mx.power(10.0, residual * (DB_RANGE / 20))
        marked = mx.concatenate([spec[..., :SUBBAND] * gain, spec[..., SUBBAND:]], axis=-1)
        out = istft(marked, N_FFT, HOP, self.window, length=len(x32))[0]
        return np.array(out, dtype=np.float32), peak

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """`PerthImplicitWatermarker.apply_watermark`, keeping the input's length."""
        return WatermarkStream(self, sample_rate, holdback=0).push(wav, last=True)

    # --- detection --------------------------------------------------------------------------

    def detect(self, wav: np.ndarray, sample_rate: int) -> float:
        """`get_watermark(round=False)`: the score in [0, 1]; >= THRESHOLD means marked."""
        x = np.asarray(wav, np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {x.shape}")
        if sample_rate != SAMPLE_RATE:
            from math import gcd

            from scipy.signal import resample_poly

            g = gcd(SAMPLE_RATE, sample_rate)
            x = resample_poly(x, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)
        if len(x) < MIN_SAMPLES:
            return 0.0
        _, mag = self._spectrum(x)
        level = mag.sum(axis=-1)
        mask = (level > level.max() * MASK_FRACTION).astype(mx.float32)[0]  # (T,)
        sub = mag[..., :SUBBAND]
        T = sub.shape[1]
        dec = self.net.decoder
        attn, marks = [], []
        for layers, size in ((dec.slow_layers, int(T * 1.25)), (dec.normal_layers, T), (dec.fast_layers, int(T * 0.75))):
            x_in = sub
            if size != T:
                i0, i1, w = _lerp_index(T, size)
                w = mx.array(w)[None, :, None]
                x_in = sub[:, mx.array(i0)] * (1 - w) + sub[:, mx.array(i1)] * w
            out = _run(layers, x_in)[0]  # (size, 2)
            m = mask[mx.array(_nearest_index(T, size))][:, None]
            means = (out * m).sum(axis=0) / mx.maximum(m.sum(), 1e-9)  # (2,): attention, mark
            attn.append(means[0])
            marks.append(means[1])
        score = (mx.softmax(mx.stack(attn)) * mx.stack(marks)).sum()
        return float(mx.clip(score, 0.0, 1.0))


class WatermarkStream:
    """Marks audio pushed in pieces at `sample_rate`; the pieces out join into the one-shot result
    (exactly on the left, within a small deviation where a piece's right edge was held back
    `holdback` 32 kHz samples). `watermarker=None` passes audio through unchanged."""

    def __init__(self, watermarker: Optional[Watermarker], sample_rate: int, holdback: int = STREAM_HOLDBACK):
        import soxr

        self.wm, self.rate, self.holdback = watermarker, sample_rate, holdback
        self.n_in = self.n_out = 0
        if watermarker is None:
            return
        same = sample_rate == SAMPLE_RATE
        self._up = None if same else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        self._down = None if same else soxr.ResampleStream(SAMPLE_RATE, sample_rate, 1, dtype="float32", quality="HQ")
        self._buf = np.zeros(0, np.float32)  # 32 kHz samples from absolute index self._base
        self._base = self._done = 0  # _done: 32 kHz samples already marked and sent on
        self._peak = 0.0

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        self.n_in += len(samples)
        if self.wm is None:
            self.n_out += len(samples)
            return samples
        new = self._up.resample_chunk(samples, last=last) if self._up else samples
        self._buf = np.concatenate([self._buf, np.asarray(new, np.float32)])
        total = self._base + len(self._buf)
        end = total if last else max(self._done, total - self.holdback)
        out = np.zeros(0, np.float32)
        if end > self._done:
            start = max(0, self._done - CONTEXT) // HOP * HOP  # frames on the one-shot grid
            marked, self._peak = self.wm.mark32(self._buf[start - self._base:], self._peak)
            out = marked[self._done - start : end - start]
            self._done = end
            keep = max(0, end - CONTEXT) // HOP * HOP
            self._buf, self._base = self._buf[keep - self._base:], keep
        if self._down is not None:
            out = np.asarray(self._down.resample_chunk(out, last=last), np.float32)
        if last:  # the one-shot length: the input's (librosa's fix_length on the way back)
            out = out[: max(0, self.n_in - self.n_out)]
            out = np.pad(out, (0, self.n_in - self.n_out - len(out)))
        self.n_out += len(out)
        # The mark can lift peaks past full scale (S3Gen's own output stays within +-0.99); the
        # reference leaves that to the file writer, we keep every output a valid float signal.
        return np.clip(out, -1.0, 1.0)


# --- weights ---------------------------------------------------------------------------------

PERTH_DIST = "resemble-perth"
PERTH_CHECKPOINT = "perth/perth_net/pretrained/implicit/perth_net_250000.pth.tar"


def installed_checkpoint() -> Optional[Path]:
    """The trained checkpoint shipped in the installed resemble-perth wheel (found without
    importing perth, which needs torch), or None."""
    from importlib import metadata

    try:
        dist = metadata.distribution(PERTH_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(PERTH_CHECKPOINT))
    return path if path.is_file() else None


def weights_from_checkpoint(path) -> dict:
    """The .pth.tar's state dict (read by the safe reader) -> our parameter names and layouts."""
    from convert.checkpoint import read_pt

    state = read_pt(path)
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise WatermarkError(f"{path}: not a Perth checkpoint (no 'model' state dict)")
    out = {}
    for name, value in model.items():
        if name.startswith(("encoder.", "decoder.")):
            value = np.asarray(value, np.float32)
            out[name] = value.transpose(0, 2, 1) if value.ndim == 3 else value  # (O, I, K) -> (O, K, I)
    return out


def build(weights: dict, source) -> PerthNet:
    from .model_io import ModelDirError, _load_strict

    net = PerthNet()
    try:
        _load_strict(net, {k: mx.array(v) for k, v in weights.items()}, source)
    except ModelDirError as e:
        raise WatermarkError(f"{e}; not the Perth implicit checkpoint") from e
    mx.eval(net.parameters())
    return net


def save_weights(weights: dict, path: Path) -> None:
    from .model_io import FORMAT_METADATA

    mx.save_safetensors(str(path), {k: mx.array(v) for k, v in weights.items()},
                        metadata={**FORMAT_METADATA, "source": "resemble-perth 1.0.1 perth_net_250000"})


def load_from(path) -> Watermarker:
    """An explicit source: a model dir, a converted watermark.safetensors or a perth_net .pth.tar."""
    path = Path(path)
    if path.is_dir():
        if not (path / WATERMARK_FILE).is_file():
            raise WatermarkError(f"{path}: no {WATERMARK_FILE}; convert the model with resemble-perth installed")
        path = path / WATERMARK_FILE
    if path.suffix == ".safetensors":
        from .model_io import load_weights

        net = PerthNet()
        load_weights(net, path)
        return Watermarker(net)
    return Watermarker(build(weights_from_checkpoint(path), path))


def load(model_dir: Optional[Path] = None) -> Optional[Watermarker]:
    """The model dir's converted weights, else the installed resemble-perth's checkpoint, else None."""
    if model_dir is not None and (Path(model_dir) / WATERMARK_FILE).is_file():
        return load_from(model_dir)
    source = installed_checkpoint()
    if source is None:
        return None
    return Watermarker(build(weights_from_checkpoint(source), source))


MISSING_WARNING = ("no Perth watermark weights (not in the model dir, resemble-perth not installed): this output "
                   "is NOT watermarked; pip install resemble-perth, or nightingale convert --watermark FILE")
