"""HiFT vocoder (S3Gen `mel2wav`): mel (B, T, 80) -> 24 kHz waveform (B, 480 T).

F0 predictor -> NSF harmonic source -> HiFi-GAN upsampler fused with the source's STFT ->
magnitude/phase head -> iSTFT. Attribute names equal the reference's state-dict names under
`mel2wav.` (weight norm folded at conversion), activations are channels-last.
"""

import math
from functools import partial
from typing import List, Optional

import mlx.core as mx
import mlx.nn as nn

from ..audio.stft import hann_window, istft, stft
from ..config import HiFTConfig
from .cpu_kernels import on_cpu, snake as cpu_snake
from .f0 import ConvRNNF0Predictor, SourceModuleHnNSF, upsample_nearest

FINAL_LRELU_SLOPE = 0.01  # the reference's last leaky_relu uses torch's default slope, not 0.1
SNAKE_EPS = 1e-9
MAX_MAGNITUDE = 100.0  # the reference clips the iSTFT magnitude at 1e2


class MelShapeError(ValueError):
    pass


def snake(x: mx.array, alpha: mx.array) -> mx.array:
    """x + 1/alpha * sin^2(alpha x), alpha per channel (last axis), in x's dtype.

    Computed in fp32: in fp16 the 1e-9 is 0 (alpha = 0 gives NaN) and 1/alpha overflows below ~1.5e-5.
    On the CPU in numpy (cpu_kernels.snake: SIMD sin, ~40% of HiFT's time with MLX's).
    """
    return cpu_snake(x, alpha, SNAKE_EPS) if on_cpu() else _snake(x, alpha)


@partial(mx.compile, shapeless=True)
def _snake(x: mx.array, alpha: mx.array) -> mx.array:
    xf, af = x.astype(mx.float32), alpha.astype(mx.float32)
    return (xf + (1.0 / (af + SNAKE_EPS)) * mx.square(mx.sin(xf * af))).astype(x.dtype)


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = mx.ones((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        return snake(x, self.alpha)


def conv_transpose1d(x: mx.array, weight: mx.array, stride: int, padding: int) -> mx.array:
    """`mx.conv_transpose1d(x, weight, stride, padding)` as one matmul and an overlap-add.

    x (B, T, I), weight (O, K, I). On CPU MLX's own kernel is ~20-100x slower than this at HiFT's
    shapes. Each input frame emits K taps at offset t * stride; taps are grouped into m = ceil(K /
    stride) blocks of `stride` samples, and block j of frame t lands on output block t + j.
    """
    dtype = x.dtype
    x, weight = x.astype(mx.float32), weight.astype(mx.float32)  # MLX's CPU fp16 matmul is ~40x slower than BLAS
    B, T, _ = x.shape
    O, K, I = weight.shape
    m = -(-K // stride)
    w = mx.pad(weight, [(0, 0), (0, m * stride - K), (0, 0)])
    w = w.transpose(1, 0, 2).reshape(m * stride * O, I)  # rows (tap, out channel)
    y = (x @ w.T).reshape(B, T, m, stride, O)
    out = None
    for j in range(m):
        part = mx.pad(y[:, :, j], [(0, 0), (j, m - 1 - j), (0, 0), (0, 0)])  # (B, T + m - 1, s, O)
        out = part if out is None else out + part
    length = (T - 1) * stride + K - 2 * padding
    return out.reshape(B, (T + m - 1) * stride, O)[:, padding : padding + length].astype(dtype)


def dilated_conv1d(x: mx.array, weight: mx.array, dilation: int, padding: int) -> mx.array:
    """`mx.conv1d(x, weight, padding=padding, dilation=dilation)` as K shifted matmuls.

    MLX's CPU kernel for dilated convolutions is ~20-70x slower than this at HiFT's shapes.
    """
    dtype = x.dtype
    x, weight = x.astype(mx.float32), weight.astype(mx.float32)  # as in conv_transpose1d
    O, K, _ = weight.shape
    x = mx.pad(x, [(0, 0), (padding, padding), (0, 0)])
    T = x.shape[1] - dilation * (K - 1)
    out = None
    for k in range(K):
        part = x[:, k * dilation : k * dilation + T] @ weight[:, k].T
        out = part if out is None else out + part
    return out.astype(dtype)


class ConvTranspose1d(nn.Module):
    """nn.ConvTranspose1d's parameters (weight (O, K, I), bias); the matmul form on CPU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        scale = math.sqrt(1.0 / (in_channels * kernel_size))
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels))
        self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.padding = padding

    def __call__(self, x: mx.array) -> mx.array:
        if on_cpu():
            y = conv_transpose1d(x, self.weight, self.stride, self.padding)
        else:
            y = mx.conv_transpose1d(x, self.weight, stride=self.stride, padding=self.padding)
        return y + self.bias


class Conv1d(nn.Conv1d):
    """nn.Conv1d whose dilated form runs as shifted matmuls on CPU (see `dilated_conv1d`)."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.dilation == 1 or not on_cpu():
            return super().__call__(x)
        return dilated_conv1d(x, self.weight, self.dilation, self.padding) + self.bias


class ResBlock(nn.Module):
    """Snake residual block: per dilation d, x += conv_1(snake(conv_d(snake(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: List[int]):
        super().__init__()
        self.convs1 = [
            Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        ]
        self.convs2 = [
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        ]
        self.activations1 = [Snake(channels) for _ in dilations]
        self.activations2 = [Snake(channels) for _ in dilations]

    def __call__(self, x: mx.array) -> mx.array:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + c2(a2(c1(a1(x))))
        return x


class HiFTGenerator(nn.Module):
    """HiFTNet (neural source filter + iSTFTNet) as S3Gen configures it.

    `hift(mel)` -> waveform (B, 480 T), clamped to +-audio_limit. `f0` (B, T) in Hz replaces the
    predicted F0; `phases` (B, 9), `noise` (B, 480 T, 9) and `key` control the source's randomness
    (see SourceModuleHnNSF). The S3Gen wrapper applies `audio.fade.trim_fade` afterwards.
    """

    def __init__(self, cfg: HiFTConfig):
        super().__init__()
        self.cfg = cfg
        base, n_fft = cfg.base_channels, cfg.istft_n_fft
        self.m_source = SourceModuleHnNSF(cfg)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = [
            ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, (k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        ]
        # The source spectrogram (one frame per output hop) is brought down to each stage's rate.
        rates = cfg.upsample_rates
        down = [math.prod(rates[len(rates) - i :]) for i in range(len(rates) - 1, -1, -1)]  # 15, 3, 1
        self.source_downs, self.source_resblocks = [], []
        for i, (u, k, d) in enumerate(
            zip(down, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes)
        ):
            ch = base // 2 ** (i + 1)
            if u == 1:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, 1))
            else:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, 2 * u, stride=u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = [
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)
        ]
        self.conv_post = nn.Conv1d(base // 2 ** len(self.ups), n_fft + 2, 7, padding=3)
        self.f0_predictor = ConvRNNF0Predictor(cfg)
        self._window = hann_window(n_fft, periodic=True)

    def _check_mel(self, mel: mx.array) -> None:
        n = self.cfg.in_channels
        if mel.ndim != 3 or mel.shape[-1] != n or mel.shape[1] < 1:
            raise MelShapeError(
                f"mel has shape {tuple(mel.shape)}; expected channels-last (B, T, {n}) with T >= 1"
            )

    def predict_f0(self, mel: mx.array) -> mx.array:
        """mel (B, T, 80) -> F0 in Hz per frame (B, T)."""
        self._check_mel(mel)
        return self.f0_predictor(mel)

    def source(
        self,
        f0: mx.array,
        phases: Optional[mx.array] = None,
        noise: Optional[mx.array] = None,
        key: Optional[mx.array] = None,
    ) -> mx.array:
        """F0 per frame (B, T) -> NSF excitation per sample (B, 480 T, 1)."""
        return self.m_source(f0, phases=phases, noise=noise, key=key)

    def decode(self, mel: mx.array, source: mx.array) -> mx.array:
        """mel (B, T, 80) and excitation (B, 480 T, 1) -> waveform (B, 480 T)."""
        return self.spectrum_to_wav(self.decode_spectrum(mel, source))

    def decode_spectrum(self, mel: mx.array, source: mx.array) -> mx.array:
        """The network before the iSTFT: conv_post's output (B, 120 T + 1, n_fft + 2), that is
        log-magnitudes then pre-sine phases per frame."""
        self._check_mel(mel)
        cfg = self.cfg
        spec = stft(source[..., 0], cfg.istft_n_fft, cfg.istft_hop, self._window)  # (B, 120 T + 1, bins)
        s_stft = mx.concatenate([spec.real, spec.imag], axis=-1)

        x = self.conv_pre(mel)
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = mx.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels
        return self.conv_post(nn.leaky_relu(x, FINAL_LRELU_SLOPE))

    def spectrum_to_wav(self, x: mx.array) -> mx.array:
        """conv_post output -> clamped waveform: magnitude exp(.) clipped at 100, phase sin(.)."""
        cfg = self.cfg
        bins = cfg.istft_n_fft // 2 + 1
        magnitude = mx.minimum(mx.exp(x[..., :bins]), MAX_MAGNITUDE)
        phase = mx.sin(x[..., bins:])  # the reference's (redundant) sin
        spec = magnitude * mx.cos(phase) + 1j * (magnitude * mx.sin(phase))
        wav = istft(spec, cfg.istft_n_fft, cfg.istft_hop, self._window)
        return mx.clip(wav, -cfg.audio_limit, cfg.audio_limit)

    def __call__(
        self,
        mel: mx.array,
        phases: Optional[mx.array] = None,
        noise: Optional[mx.array] = None,
        key: Optional[mx.array] = None,
        f0: Optional[mx.array] = None,
    ) -> mx.array:
        if f0 is None:
            f0 = self.predict_f0(mel)
        elif tuple(f0.shape) != tuple(mel.shape[:2]):
            raise MelShapeError(f"f0 has shape {tuple(f0.shape)}; expected (B, T) = {tuple(mel.shape[:2])}")
        return self.decode(mel, self.source(f0, phases=phases, noise=noise, key=key))


__all__ = ["HiFTGenerator", "conv_transpose1d", "snake", "upsample_nearest"]
