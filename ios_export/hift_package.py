"""HiFT as three Core ML packages over a fixed number of mel frames T, split by precision.

1. `hift_source.mlpackage` (fp32, CPU/GPU): mel -> F0 predictor -> SineGen/NSF excitation ->
   its STFT. The SineGen randomness is input: `phases` (1, 9) start phases in radians (the
   fundamental's is forced to 0 inside, as the reference does), `sine_noise` (1, 9, 480 T) standard
   normal, and `start_cycles` (1, 9) the phase already accumulated before the first frame, in
   cycles (zeros for a whole utterance; streaming continues it from the committed F0).
   The phase is integrated in fp32 without drift: per-frame increments are wrapped (mod 1 cycle)
   before the cumulative sum, so no partial sum exceeds T cycles.
2. `hift_body.mlpackage` (fp16, ANE-friendly): mel + source STFT -> conv_pre, the transposed-conv
   upsamplers, snake ResBlocks and source fusion -> the last activation before conv_post.
3. `hift_tail.mlpackage` (fp32, CPU/GPU): conv_post -> magnitude exp (clipped at 100) and phase
   sin -> iSTFT as one conv_transpose with a windowed inverse-DFT basis, divided by the
   overlap-add envelope (a constant) -> clip to +-audio_limit. fp16 phases would be audible.
Three packages rather than one multifunction package, so the app picks compute units per stage.
Layout (1, C, 1, L) as in layers.py; the packages' I/O is (1, C, L).
"""

import math

import mlx.core as mx
import numpy as np

from nightingale_mlx.models.hift import FINAL_LRELU_SLOPE, MAX_MAGNITUDE, SNAKE_EPS

from .layers import Layers, save_program

SOURCE, BODY, TAIL = "hift_source", "hift_body", "hift_tail"
PACKAGES = (SOURCE, BODY, TAIL)
FUNCTION = "main"


class HiFTExportError(ValueError):
    """HiFT cannot be exported as asked."""


def _np(a) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def stft_basis(n_fft: int, window: np.ndarray) -> np.ndarray:
    """(2 * bins, n_fft): windowed rfft rows, real parts then imaginary parts (= -sin)."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    angle = 2 * np.pi * k * np.arange(n_fft)[None] / n_fft
    return np.concatenate([np.cos(angle), -np.sin(angle)]) * window[None]


def istft_basis(n_fft: int, window: np.ndarray) -> np.ndarray:
    """(2 * bins, n_fft): irfft of [Re; Im] times the window; interior bins count twice (COREML_NOTES §3.1)."""
    bins = n_fft // 2 + 1
    c = np.full(bins, 2.0 / n_fft)
    c[0] = c[-1] = 1.0 / n_fft
    k = np.arange(bins)[:, None]
    angle = 2 * np.pi * k * np.arange(n_fft)[None] / n_fft
    return np.concatenate([c[:, None] * np.cos(angle), -c[:, None] * np.sin(angle)]) * window[None]


def ola_envelope(n_fft: int, hop: int, frames: int, window: np.ndarray) -> np.ndarray:
    """Summed squared window over the overlap-add output (length n_fft + hop (frames - 1))."""
    env = np.zeros(n_fft + hop * (frames - 1))
    for f in range(frames):
        env[f * hop: f * hop + n_fft] += window ** 2
    return env


def _conv(L, x, m):
    """An MLX Conv1d with its own stride/padding/dilation."""
    return L.conv(x, m, pad=(m.padding, m.padding), stride=m.stride, dilation=m.dilation)


def _snake(L, x, act):
    mb = L.mb
    alpha = _np(act.alpha)
    s = mb.sin(x=mb.mul(x=x, y=L.channel_const(alpha)))
    return mb.add(x=x, y=mb.mul(x=mb.mul(x=s, y=s), y=L.channel_const(1.0 / (alpha + SNAKE_EPS))))


def _resblock(L, x, block):
    for c1, c2, a1, a2 in zip(block.convs1, block.convs2, block.activations1, block.activations2):
        x = L.mb.add(x=x, y=_conv(L, _snake(L, _conv(L, _snake(L, x, a1), c1), a2), c2))
    return x


def _source_program(hift, T: int):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    cfg, m = hift.cfg, hift.m_source
    H, factor, n_fft, hop = m.n_harmonics, m.factor, cfg.istft_n_fft, cfg.istft_hop
    N = T * factor
    specs = {"mel": mb.TensorSpec((1, cfg.in_channels, T), dtype=types.fp32),
             "phases": mb.TensorSpec((1, H), dtype=types.fp32),
             "sine_noise": mb.TensorSpec((1, H, N), dtype=types.fp32),
             "start_cycles": mb.TensorSpec((1, H), dtype=types.fp32)}
    with Function(specs, opset_version=ct.target.iOS18) as func:
        a = func.inputs
        L = Layers(mb, "fp32", fp32_islands=True, blockwise=False)
        x = mb.expand_dims(x=a["mel"], axes=[2])  # (1, 80, 1, T)
        pred = hift.f0_predictor
        for conv in pred.condnet[::2]:
            x = mb.elu(x=_conv(L, x, conv), alpha=1.0)
        f0 = mb.abs(x=L.linear(x, pred.classifier, "mel2wav.f0_predictor.classifier"))  # (1, 1, 1, T)
        f0 = mb.reshape(x=f0, shape=[1, 1, T])
        harmonics = np.arange(1, H + 1, dtype=np.float32).reshape(1, H, 1)
        per_sample = mb.mul(x=f0, y=harmonics / np.float32(m.sampling_rate))  # cycles per sample (1, H, T)
        per_frame = mb.mul(x=per_sample, y=np.float32(factor))
        per_frame = mb.sub(x=per_frame, y=mb.floor(x=per_frame))  # whole cycles do not move the phase
        start = mb.add(x=mb.cumsum(x=per_frame, axis=2, exclusive=True),
                       y=mb.expand_dims(x=a["start_cycles"], axes=[2]))
        start = mb.sub(x=start, y=mb.floor(x=start))
        j = np.arange(1, factor + 1, dtype=np.float32).reshape(1, 1, 1, factor)  # inclusive cumsum
        phase = mb.add(x=mb.expand_dims(x=start, axes=[3]), y=mb.mul(x=mb.expand_dims(x=per_sample, axes=[3]), y=j))
        phase = mb.sub(x=phase, y=mb.floor(x=phase))  # (1, H, T, factor)
        keep = np.ones((1, H), np.float32)
        keep[0, 0] = 0.0  # the fundamental starts at phase 0
        offsets = mb.reshape(x=mb.mul(x=a["phases"], y=keep), shape=[1, H, 1, 1])
        sine = mb.mul(x=mb.sin(x=mb.add(x=mb.mul(x=phase, y=np.float32(2 * math.pi)), y=offsets)),
                      y=np.float32(m.sine_amp))
        uv = mb.cast(x=mb.greater(x=f0, y=np.float32(m.voiced_threshold)), dtype="fp32")
        uv = mb.expand_dims(x=uv, axes=[3])  # (1, 1, T, 1): constant within a frame
        noise_amp = mb.add(x=mb.mul(x=uv, y=np.float32(m.noise_std - m.sine_amp / 3)), y=np.float32(m.sine_amp / 3))
        noise = mb.reshape(x=a["sine_noise"], shape=[1, H, T, factor])
        sine = mb.add(x=mb.mul(x=sine, y=uv), y=mb.mul(x=noise_amp, y=noise))
        w = _np(m.l_linear.weight).reshape(1, H, 1, 1)
        merged = mb.add(x=mb.reduce_sum(x=mb.mul(x=sine, y=w), axes=[1], keep_dims=True),
                        y=_np(m.l_linear.bias).reshape(1, 1, 1, 1))
        source = mb.reshape(x=mb.tanh(x=merged), shape=[1, 1, 1, N])
        padded = L.pad_time(source, n_fft // 2, n_fft // 2, mode="reflect")  # center=True
        basis = stft_basis(n_fft, _np(hift._window))[:, None, None, :].astype(np.float32)  # (18, 1, 1, n_fft)
        spec = mb.conv(x=padded, weight=basis, strides=[1, hop], pad_type="valid")  # (1, 18, 1, N/hop + 1)
        spec = mb.cast(x=mb.squeeze(x=spec, axes=[2]), dtype="fp16", name="source_stft")
        func.set_outputs([mb.identity(x=mb.squeeze(x=f0, axes=[1]), name="f0"), spec])
    prog = Program()
    prog.add_function(FUNCTION, func)
    return prog


def _body_program(hift, T: int):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    cfg = hift.cfg
    F = T * cfg.upsample_factor // cfg.istft_hop + 1
    specs = {"mel": mb.TensorSpec((1, cfg.in_channels, T), dtype=types.fp16),
             "source_stft": mb.TensorSpec((1, cfg.istft_n_fft + 2, F), dtype=types.fp16)}
    with Function(specs, opset_version=ct.target.iOS18) as func:
        a = func.inputs
        L = Layers(mb, "fp16", fp32_islands=False, blockwise=False)
        s_stft = mb.expand_dims(x=a["source_stft"], axes=[2])
        x = _conv(L, mb.expand_dims(x=a["mel"], axes=[2]), hift.conv_pre)
        n = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(hift.ups):
            x = L.conv_transpose(mb.leaky_relu(x=x, alpha=np.float16(cfg.lrelu_slope)), up, up.stride, up.padding)
            if i == len(hift.ups) - 1:
                x = mb.concat(values=[L.time_slice(x, 1, 2), x], axis=3)  # ReflectionPad1d((1, 0))
            x = mb.add(x=x, y=_resblock(L, _conv(L, s_stft, hift.source_downs[i]), hift.source_resblocks[i]))
            outs = [_resblock(L, x, block) for block in hift.resblocks[i * n: (i + 1) * n]]
            total = outs[0]
            for o in outs[1:]:
                total = mb.add(x=total, y=o)
            x = mb.mul(x=total, y=np.float16(1.0 / n))
        x = mb.leaky_relu(x=x, alpha=np.float16(FINAL_LRELU_SLOPE))
        func.set_outputs([mb.squeeze(x=x, axes=[2], name="features")])
    prog = Program()
    prog.add_function(FUNCTION, func)
    return prog


def _tail_program(hift, T: int):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    cfg = hift.cfg
    n_fft, hop = cfg.istft_n_fft, cfg.istft_hop
    bins, N = n_fft // 2 + 1, T * cfg.upsample_factor
    F = N // hop + 1
    C = hift.conv_post.weight.shape[-1]
    specs = {"features": mb.TensorSpec((1, C, F), dtype=types.fp16)}
    with Function(specs, opset_version=ct.target.iOS18) as func:
        L = Layers(mb, "fp32", fp32_islands=True, blockwise=False)
        x = mb.expand_dims(x=mb.cast(x=func.inputs["features"], dtype="fp32"), axes=[2])
        x = _conv(L, x, hift.conv_post)  # (1, 2 * bins, 1, F)
        magnitude = mb.minimum(x=mb.exp(x=L.channel_slice(x, 0, bins)), y=np.float32(MAX_MAGNITUDE))
        phase = mb.sin(x=L.channel_slice(x, bins, 2 * bins))  # the reference's (redundant) sin
        spec = mb.concat(values=[mb.mul(x=magnitude, y=mb.cos(x=phase)), mb.mul(x=magnitude, y=mb.sin(x=phase))],
                         axis=1)
        window = _np(hift._window).astype(np.float64)
        basis = istft_basis(n_fft, window)[:, None, None, :].astype(np.float32)  # (2 bins, 1, 1, n_fft)
        wav = mb.conv_transpose(x=spec, weight=basis, strides=[1, hop], pad_type="valid")  # overlap-add
        env = ola_envelope(n_fft, hop, F, window)[n_fft // 2: n_fft // 2 + N]
        inv_env = (1.0 / np.maximum(env, 1e-11)).astype(np.float32)
        wav = mb.mul(x=L.time_slice(wav, n_fft // 2, n_fft // 2 + N), y=inv_env)
        wav = mb.clip(x=wav, alpha=np.float32(-cfg.audio_limit), beta=np.float32(cfg.audio_limit))
        func.set_outputs([mb.reshape(x=wav, shape=[1, N], name="wav")])
    prog = Program()
    prog.add_function(FUNCTION, func)
    return prog


def build_hift_packages(hift, out_dir, frames: int) -> dict:
    """Writes hift_source/body/tail.mlpackage for `frames` mel frames; returns their manifest entry."""
    if frames <= 0:
        raise HiFTExportError(f"vocoder frames must be positive, got {frames}")
    cfg = hift.cfg
    if cfg.upsample_factor % cfg.istft_hop:
        raise HiFTExportError(f"hop {cfg.istft_hop} must divide the {cfg.upsample_factor} samples per frame")
    builders = {SOURCE: _source_program, BODY: _body_program, TAIL: _tail_program}
    for name, build in builders.items():
        save_program(build(hift, frames), f"{out_dir}/{name}.mlpackage")
    H, N = hift.m_source.n_harmonics, frames * cfg.upsample_factor
    F, C = N // cfg.istft_hop + 1, hift.conv_post.weight.shape[-1]
    return {
        "frames": frames, "samples": N, "sample_rate": cfg.sampling_rate,
        "packages": {
            SOURCE: {"package": f"{SOURCE}.mlpackage", "precision": "fp32", "compute_units": "cpuAndGPU",
                     "inputs": {"mel": [[1, cfg.in_channels, frames], "fp32"], "phases": [[1, H], "fp32"],
                                "sine_noise": [[1, H, N], "fp32"], "start_cycles": [[1, H], "fp32"]},
                     "outputs": {"f0": [[1, frames], "fp32"], "source_stft": [[1, cfg.istft_n_fft + 2, F], "fp16"]}},
            BODY: {"package": f"{BODY}.mlpackage", "precision": "fp16", "compute_units": "cpuAndNeuralEngine",
                   "inputs": {"mel": [[1, cfg.in_channels, frames], "fp16"],
                              "source_stft": [[1, cfg.istft_n_fft + 2, F], "fp16"]},
                   "outputs": {"features": [[1, C, F], "fp16"]}},
            TAIL: {"package": f"{TAIL}.mlpackage", "precision": "fp32", "compute_units": "cpuAndGPU",
                   "inputs": {"features": [[1, C, F], "fp16"]}, "outputs": {"wav": [[1, N], "fp32"]}},
        },
        "randomness": {"phases": "uniform(-pi, pi) per harmonic, drawn once per utterance",
                       "sine_noise": "standard normal per sample and harmonic",
                       "start_cycles": "frac(sum of f0 over frames before this window * k * "
                                       f"{cfg.upsample_factor} / {cfg.sampling_rate}), k = 1..{H}; 0 at the start"},
    }
