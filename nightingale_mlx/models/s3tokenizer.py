"""S3TokenizerV2 (`speech_tokenizer_v2_25hz`, package `s3tokenizer`): 16 kHz audio -> 25 Hz speech
codes in [0, 6561) (spec §5.1).

Two stride-2 convs, then blocks of pre-LN FSMN attention (RoPE over the full 64-wide head, q and k
each scaled by 64^-0.25, a depthwise conv memory over v) and a GELU MLP; FSQ turns each frame
into 8 ternary digits. One clip at a time, so there is no padding mask (the reference's mel
clamp is per call anyway, spec §5.4a).
"""

import mlx.core as mx
import mlx.nn as nn

from ..audio.mel import S3_TOKENIZER_MEL, mel_spectrogram
from ..config import S3TokenizerConfig

HEAD_DIM = 64  # fixed by the reference's RoPE table (precompute_freqs_cis(64, ...))
FSQ_LEVELS = 3
FSQ_DIGITS = 8
FSQ_SCALE = 0.9990000128746033  # float32(0.999), as the reference writes it
MEL_FRAMES_PER_TOKEN = 4
MAX_FRAMES = 3000  # 30 s: longer clips take the reference's sliding-window path (never hit by voices)


class FSMNMultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int, kernel_size: int, rope_theta: float):
        super().__init__()
        self.n_head = n_head
        self.rope_theta = rope_theta
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        pad = (kernel_size - 1) // 2  # the reference pads (k-1)//2 left and the rest right; k is odd
        self.fsmn_block = nn.Conv1d(n_state, n_state, kernel_size, padding=pad, groups=n_state, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        B, T, C = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)
        memory = self.fsmn_block(v) + v
        # (B, T, C) -> (B, H, T, D)
        q, k, vh = (a.reshape(B, T, self.n_head, -1).transpose(0, 2, 1, 3) for a in (q, k, v))
        q = mx.fast.rope(q, HEAD_DIM, traditional=False, base=self.rope_theta, scale=1.0, offset=0)
        k = mx.fast.rope(k, HEAD_DIM, traditional=False, base=self.rope_theta, scale=1.0, offset=0)
        scale = (C // self.n_head) ** -0.25
        # Scores and softmax in fp32: an fp16 tokenizer's scores can exceed fp16's range.
        q, k = q.astype(mx.float32) * scale, k.astype(mx.float32) * scale
        w = mx.softmax(q @ k.transpose(0, 1, 3, 2), axis=-1).astype(vh.dtype)
        wv = (w @ vh).transpose(0, 2, 1, 3).reshape(B, T, C)
        return self.out(wv) + memory


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: S3TokenizerConfig):
        super().__init__()
        n = cfg.n_state
        self.attn = FSMNMultiHeadAttention(n, cfg.n_head, cfg.fsmn_kernel, cfg.rope_theta)
        self.attn_ln = nn.LayerNorm(n, eps=1e-5)
        self.mlp = [nn.Linear(n, 4 * n), nn.GELU(), nn.Linear(4 * n, n)]  # torch Sequential indices
        self.mlp_ln = nn.LayerNorm(n, eps=1e-5)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.attn(self.attn_ln(x))
        h = self.mlp_ln(x)
        for layer in self.mlp:
            h = layer(h)
        return x + h


class AudioEncoderV2(nn.Module):
    def __init__(self, cfg: S3TokenizerConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.n_state, 3, stride=2, padding=1)
        self.conv2 = nn.Conv1d(cfg.n_state, cfg.n_state, 3, stride=2, padding=1)
        self.blocks = [ResidualAttentionBlock(cfg) for _ in range(cfg.n_layer)]

    def __call__(self, mel: mx.array) -> mx.array:
        """(B, T, n_mels) -> (B, ceil(T/4), n_state)."""
        x = nn.gelu(self.conv1(mel))
        x = nn.gelu(self.conv2(x))
        for block in self.blocks:
            x = block(x)
        return x


class FSQCodebook(nn.Module):
    def __init__(self, n_state: int):
        super().__init__()
        self.project_down = nn.Linear(n_state, FSQ_DIGITS)

    def __call__(self, x: mx.array) -> mx.array:
        h = mx.round(mx.tanh(self.project_down(x).astype(mx.float32)) * FSQ_SCALE) + 1  # digits in {0, 1, 2}
        powers = FSQ_LEVELS ** mx.arange(FSQ_DIGITS, dtype=mx.float32)
        return (h * powers).sum(axis=-1).astype(mx.int32)


class FSQVectorQuantization(nn.Module):
    def __init__(self, n_state: int):
        super().__init__()
        # The reference calls it `_codebook`; MLX skips `_` attributes, so the converter renames it.
        self.codebook = FSQCodebook(n_state)


class S3TokenizerV2(nn.Module):
    def __init__(self, cfg: S3TokenizerConfig):
        super().__init__()
        if cfg.n_state % cfg.n_head or cfg.n_state // cfg.n_head != HEAD_DIM:
            raise ValueError(f"S3 tokenizer head dim must be {HEAD_DIM}: n_state {cfg.n_state}, n_head {cfg.n_head}")
        self.cfg = cfg
        self.encoder = AudioEncoderV2(cfg)
        self.quantizer = FSQVectorQuantization(cfg.n_state)

    def quantize(self, mel: mx.array) -> mx.array:
        """(B, T, n_mels) log-mel -> (B, ceil(T/4)) int32 codes."""
        return self.quantizer.codebook(self.encoder(mel))

    def __call__(self, wav16, max_len: int = None) -> mx.array:
        """The reference's `S3Tokenizer.forward([wav], max_len)` for one 16 kHz clip -> (1, N) int32.

        The mel is cut to `max_len * 4` frames (25 tokens/s at 100 frames/s), as the reference does.
        """
        mel = mel_spectrogram(wav16, S3_TOKENIZER_MEL)
        if max_len is not None:
            mel = mel[: max_len * MEL_FRAMES_PER_TOKEN]
        if mel.shape[0] > MAX_FRAMES:
            raise ValueError(f"clips over {MAX_FRAMES // 100} s need the reference's windowed tokenizer; crop the audio")
        # fp32 weights reproduce the reference (which always tokenizes in fp32); fp16 is a recipe choice.
        return self.quantize(mel[None].astype(self.encoder.conv1.weight.dtype))
