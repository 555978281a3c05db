"""S3Gen: speech tokens + voice -> 24 kHz waveform (flow encoder + CFM -> mel -> HiFT vocoder).

Attribute names follow the reference's `S3Token2Wav` (`flow.*`, `mel2wav.*`), so `s3gen.safetensors`
keeps the original key prefixes.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..audio.fade import trim_fade
from ..config import S3GEN_SILENCE_TOKEN, SPEECH_VOCAB_SIZE, FlowConfig, HiFTConfig
from .flow import CausalMaskedDiffWithXvec
from .hift import HiFTGenerator

S3GEN_SR = 24000
SAMPLES_PER_TOKEN = 960  # 2 mel frames x 480 samples


class S3Gen(nn.Module):
    def __init__(self, flow: FlowConfig, hift: HiFTConfig):
        super().__init__()
        self.flow = CausalMaskedDiffWithXvec(flow)
        self.mel2wav = HiFTGenerator(hift)

    @staticmethod
    def valid_tokens(tokens) -> mx.array:
        """Drops ids the flow cannot embed (>= 6561: SOS/EOS/unused), as the English reference does."""
        tokens = mx.array(tokens).reshape(-1).astype(mx.int32)
        keep = [i for i, t in enumerate(tokens.tolist()) if 0 <= t < SPEECH_VOCAB_SIZE]
        return tokens[mx.array(keep, dtype=mx.int32)] if keep else mx.zeros((0,), mx.int32)

    def mel(self, tokens: mx.array, voice, n_timesteps: Optional[int] = None, noise=None, key=None) -> mx.array:
        """Valid tokens (N,) -> generated mel (1, 2N or 2N - 1, 80)."""
        return self.flow.inference(
            tokens[None], voice.gen_prompt_token, voice.gen_prompt_feat, voice.gen_embedding,
            n_timesteps=n_timesteps, noise=noise, key=key,
        )

    def inference(
        self,
        tokens,
        voice,
        *,
        n_timesteps: Optional[int] = None,
        drop_last_token: bool = False,
        silence_tokens: int = 0,
        key: Optional[mx.array] = None,
        noise: Optional[mx.array] = None,
        phases: Optional[mx.array] = None,
        sine_noise: Optional[mx.array] = None,
        f0: Optional[mx.array] = None,
    ) -> mx.array:
        """Speech tokens + Voice -> float32 samples (n,) at 24 kHz.

        `key` seeds the CFM noise and the SineGen randomness; `noise`, `phases` and `sine_noise`
        inject them explicitly, and `f0` (1, mel frames) replaces HiFT's predicted F0 (parity checks
        drive a voiced source). `drop_last_token` is the upstream profile's trim of the last token's
        audio, which "decodes to noise". `silence_tokens` S3GEN_SIL tokens are appended (Turbo
        appends 3, and keeps their audio). `n_timesteps`: the flow's own by default.
        """
        tokens = self.valid_tokens(tokens)
        if silence_tokens and tokens.shape[0]:
            tokens = mx.concatenate([tokens, mx.full((silence_tokens,), S3GEN_SILENCE_TOKEN, mx.int32)])
        n = tokens.shape[0]
        if n == 0:
            return mx.zeros((0,), mx.float32)
        flow_key = hift_key = None
        if key is not None:
            flow_key, hift_key = mx.random.split(key)
        mel = self.mel(tokens, voice, n_timesteps, noise, flow_key)
        wav = self.mel2wav(mel.astype(mx.float32), phases=phases, noise=sine_noise, key=hift_key, f0=f0)
        wav = trim_fade(wav[0].astype(mx.float32))
        if drop_last_token:
            wav = wav[: max(1, n - 1) * SAMPLES_PER_TOKEN]
        return wav
