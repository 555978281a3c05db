"""Chunked streaming: speech tokens arrive in chunks, audio leaves in chunks that join without seams.

`S3GenStreamer` turns a growing token list into audio with the same S3Gen weights as generate():
- only settled frames are rendered: the last `pre_lookahead_len` (3) tokens, 6 mel frames, wait
  for their lookahead until the stream ends;
- the encoder + CFM run over a bounded window (`context_tokens` of the prompt/speech before the
  new frames), so every chunk costs the same however long the utterance grows;
- the CFM noise and the vocoder's sine noise come from buffers indexed by absolute frame/sample,
  so re-rendered frames see the same noise;
- HiFT carries its state: the committed F0 history continues the source phase, stored mel frames
  give the vocoder its left context, the last frames wait for their right context
  (`holdback_frames`), and a short linear crossfade joins the renders.
"""

import itertools
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional

import mlx.core as mx
import numpy as np

from .audio.fade import TRIM_FADE_SAMPLES, trim_fade_window
from .config import S3GEN_SILENCE_TOKEN, SPEECH_VOCAB_SIZE

NOISE_BLOCK_FRAMES = 64  # CFM noise is drawn in blocks of this many frames
BLOCK_KEY_STRIDE = 0x9E3779B97F4A7C15  # spreads block indices over the seed space (golden ratio)
SINE_NOISE_BLOCK = 480 * 64  # vocoder source noise block, in samples
BOUNDARY_HALF_WINDOW_S = 0.005  # boundary_hf_ratio: +-5 ms around each chunk boundary
ROUGHNESS_WINDOW_S = 0.010  # ... against the median over all 10 ms windows


class StreamError(ValueError):
    """Bad streaming arguments (chunk sizes, window sizes)."""


@dataclass
class StreamConfig:
    """The streamer's windows. `context_tokens` trades fidelity (the encoder and CFM attend both
    ways) for a bounded per-chunk cost; see bench/streaming.py for the measured trade-off."""

    context_tokens: int = 50  # encoder/CFM left context before the first new frame, in tokens
    vocoder_context_frames: int = 24  # HiFT left context (its receptive field is ~+-14 frames)
    holdback_frames: int = 14  # HiFT output of the newest frames waits for their right context (measured)
    crossfade_samples: int = 240  # 10 ms linear crossfade between renders
    n_timesteps: Optional[int] = None  # CFM Euler steps (None: the model's, as generate())

    def check(self) -> None:
        if self.context_tokens < 0 or self.vocoder_context_frames < self.holdback_frames + 1:
            raise StreamError("context_tokens must be >= 0 and vocoder_context_frames > holdback_frames")
        if not 0 <= self.crossfade_samples <= 480 * self.holdback_frames:
            raise StreamError("crossfade_samples must fit in the held-back frames (<= 480 * holdback_frames)")


@dataclass
class AudioChunk:
    """One piece of a stream: float32 samples, its place, and when it was ready (seconds since
    stream() was called): `tokens_ready_s` for its last speech token, `audio_ready_s` for the audio."""

    samples: np.ndarray
    sample_rate: int
    index: int
    is_last: bool
    tokens_ready_s: float
    audio_ready_s: float

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class NoiseBuffer:
    """Standard-normal noise (1, position, channels) indexed by absolute position.

    Block b is drawn from its own key (the key's bits + b), so a slice is the same whatever was
    asked before; blocks before `release_before` are dropped to keep memory bounded.
    """

    def __init__(self, key: mx.array, channels: int, block: int):
        bits = np.array(key).reshape(-1).astype(np.uint64)  # a key is two uint32 words
        self._base = int(bits[0]) << 32 | int(bits[1])
        self.channels, self.block = channels, block
        self._blocks = {}

    def _get(self, b: int) -> mx.array:
        if b not in self._blocks:
            self._blocks[b] = mx.random.normal((1, self.block, self.channels), key=mx.random.key((self._base + b * BLOCK_KEY_STRIDE) % 2**63))
        return self._blocks[b]

    def slice(self, start: int, end: int) -> mx.array:
        """Noise for positions [start, end): (1, end - start, channels)."""
        first, last = start // self.block, max(start, end - 1) // self.block
        parts = mx.concatenate([self._get(b) for b in range(first, last + 1)], axis=1)
        return parts[:, start - first * self.block : end - first * self.block]

    def release_before(self, position: int) -> None:
        for b in [b for b in self._blocks if (b + 1) * self.block <= position]:
            del self._blocks[b]


class S3GenStreamer:
    """Speech tokens in (`push`), 24 kHz samples out (`render`, then `finish`) for one utterance.

    `key` seeds the noise buffers and the source's start phases; `noise` (CFM, per frame),
    `sine_noise` (source, per sample) and `phases` (1, H) inject them instead (the benchmark feeds
    generate() the same). `keep_mel` keeps every committed mel frame in `self.mel` (for checks).
    """

    def __init__(self, s3gen, voice, key: Optional[mx.array] = None, *, config: Optional[StreamConfig] = None,
                 drop_last_token: bool = False, noise: Optional[NoiseBuffer] = None,
                 sine_noise: Optional[NoiseBuffer] = None, phases: Optional[mx.array] = None, keep_mel: bool = False):
        self.s3gen, self.flow, self.hift = s3gen, s3gen.flow, s3gen.mel2wav
        self.cfg = config or StreamConfig()
        self.cfg.check()
        self.voice, self.drop_last_token = voice, drop_last_token
        self.prompt_tokens = voice.gen_prompt_token.astype(mx.int32)
        self.Np, self.Tm = self.prompt_tokens.shape[1], voice.gen_prompt_feat.shape[1]
        self.ratio = self.flow.cfg.token_mel_ratio
        self.lookahead = self.flow.cfg.pre_lookahead_len
        self.hop = self.hift.cfg.upsample_factor  # 480 samples per mel frame
        key = mx.random.key(int(np.random.SeedSequence().generate_state(1)[0])) if key is None else key
        flow_key, hift_key = mx.random.split(key)  # the same split as S3Gen.inference
        phase_key, sine_key = mx.random.split(hift_key)
        H = self.hift.m_source.n_harmonics
        self.noise = noise or NoiseBuffer(flow_key, self.flow.cfg.output_size, NOISE_BLOCK_FRAMES)
        self.sine_noise = sine_noise or NoiseBuffer(sine_key, H, SINE_NOISE_BLOCK)
        self.phases = phases if phases is not None else mx.random.uniform(-np.pi, np.pi, (1, H), key=phase_key)
        self.tokens: List[int] = []
        self.frames = 0  # committed mel frames (generated-frame index; absolute frame = Tm + index)
        self.emitted = 0  # samples handed out
        self._mel_hist = mx.zeros((1, 0, self.flow.cfg.output_size))
        self._mel_start = 0  # generated-frame index of _mel_hist[:, 0]
        self._f0 = np.zeros(0, np.float64)  # committed F0 per frame: the source phase continues from it
        self._tail = np.zeros(0, np.float32)  # the last render's samples [emitted, emitted + crossfade)
        self.mel = [] if keep_mel else None
        self.finished = False

    def push(self, tokens) -> None:
        """Appends speech tokens (ids >= 6561, T3's start/stop tokens, are dropped as generate() does)."""
        if self.finished:
            raise StreamError("this stream has finished; start a new one")
        for t in np.asarray(tokens).reshape(-1).tolist():
            if 0 <= t < SPEECH_VOCAB_SIZE:
                self.tokens.append(int(t))

    def _target_frames(self, final: bool) -> int:
        settled = len(self.tokens) if final else len(self.tokens) - self.lookahead
        return max(0, self.ratio * (self.Np + settled) - self.Tm)

    def _render_mel(self, end: int) -> mx.array:
        """Generated mel frames [self.frames, end), from a window of context + new + lookahead tokens."""
        first_abs = self.Tm + self.frames
        a_tok = max(0, first_abs // self.ratio - self.cfg.context_tokens)
        A = self.ratio * a_tok
        prompt = self.prompt_tokens[:, min(a_tok, self.Np):]
        speech = mx.array(self.tokens[max(0, a_tok - self.Np):], dtype=mx.int32)[None]
        prompt_feat = self.voice.gen_prompt_feat[:, min(A, self.Tm):]
        mu, spks, cond = self.flow.prepare(speech, prompt, prompt_feat, self.voice.gen_embedding)
        x = None
        for x in self.flow.decoder.solve(self.noise.slice(A, A + mu.shape[1]), mu, spks, cond, self.cfg.n_timesteps):
            pass
        self.noise.release_before(A)
        return x[:, first_abs - A : self.Tm + end - A]

    def _vocode(self, start: int, end: int):
        """Samples of generated frames [start, end) from the stored mel, continuing the source phase."""
        mel = self._mel_hist[:, start - self._mel_start : end - self._mel_start]
        f0 = self.hift.predict_f0(mel)[0]
        known = min(len(self._f0), end)
        if known > start:  # committed frames keep the F0 their audio was made with
            f0 = mx.concatenate([mx.array(self._f0[start:known], dtype=mx.float32), f0[known - start:]])
        H, m = self.hift.m_source.n_harmonics, self.hift.m_source
        # Phase before `start` in cycles per harmonic, summed in float64 and wrapped (DESIGN §4).
        cycles = np.sum(self._f0[:start]) * np.arange(1, H + 1) * (self.hop / m.sampling_rate)
        cycles = mx.array((cycles - np.floor(cycles))[None], dtype=mx.float32)
        source = m(f0[None], phases=self.phases, noise=self.sine_noise.slice(start * self.hop, end * self.hop),
                   start_cycles=cycles)
        wav = self.hift.decode(mel.astype(mx.float32), source)[0]
        self.sine_noise.release_before(start * self.hop)
        wav = np.array(wav.astype(mx.float32))
        lo = start * self.hop
        if lo < 2 * TRIM_FADE_SAMPLES:  # generate()'s trim_fade at the utterance start
            fade = np.array(trim_fade_window())[lo:]
            n = min(len(fade), len(wav))
            wav[:n] *= fade[:n]
        return wav, np.array(f0, dtype=np.float64)

    def render(self, final: bool = False) -> np.ndarray:
        """Renders what has settled and returns the new samples (possibly none)."""
        if self.finished:
            return np.zeros(0, np.float32)
        end = self._target_frames(final)
        if end > self.frames:
            new = self._render_mel(end)
            self._mel_hist = mx.concatenate([self._mel_hist, new.astype(mx.float32)], axis=1)
            if self.mel is not None:
                self.mel.append(np.array(new[0]))
            self.frames = end
        stop = self.frames * self.hop if final else (self.frames - self.cfg.holdback_frames) * self.hop
        if final and self.drop_last_token:
            stop = min(stop, max(1, len(self.tokens) - 1) * self.ratio * self.hop)
        if final:
            self.finished = True
        if stop <= self.emitted:  # nothing new settled (or the final trim falls in emitted audio)
            return np.zeros(0, np.float32)
        start = max(0, self.emitted // self.hop - self.cfg.vocoder_context_frames)
        wav, f0 = self._vocode(start, self.frames)
        commit = len(wav) // self.hop if final else stop // self.hop
        if commit > len(self._f0):
            self._f0 = np.concatenate([self._f0, f0[len(self._f0) - start : commit - start]])
        lo = start * self.hop
        out = wav[self.emitted - lo : stop - lo].copy()
        n = min(len(self._tail), len(out))
        if n:
            ramp = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))
            out[:n] = self._tail[:n] * (1 - ramp) + out[:n] * ramp
        self._tail = np.zeros(0, np.float32) if final else wav[stop - lo : stop - lo + self.cfg.crossfade_samples]
        self.emitted = stop
        keep = max(0, self.emitted // self.hop - self.cfg.vocoder_context_frames)
        self._mel_hist, self._mel_start = self._mel_hist[:, keep - self._mel_start :], keep
        return out.astype(np.float32)

    def finish(self) -> np.ndarray:
        """Renders everything left, lookahead tokens included; the stream then ends."""
        return self.render(final=True)


def stream_tokens(s3gen, tokens: Iterable[int], voice, *, key=None, first_chunk_tokens: int = 12,
                  chunk_tokens: int = 25, config: Optional[StreamConfig] = None, drop_last_token: bool = False,
                  clock_start: Optional[float] = None, streamer: Optional[S3GenStreamer] = None) -> Iterator[tuple]:
    """Interleaves a token iterator with an S3GenStreamer: yields (samples, is_final, tokens_ready_s,
    audio_ready_s) every `chunk_tokens` new tokens (the first after `first_chunk_tokens`)."""
    check_chunk_sizes(first_chunk_tokens, chunk_tokens)
    t0 = time.perf_counter() if clock_start is None else clock_start
    streamer = streamer or S3GenStreamer(s3gen, voice, key, config=config, drop_last_token=drop_last_token)
    pending, target, tokens_ready = 0, first_chunk_tokens, 0.0
    for token in tokens:
        streamer.push([token])
        tokens_ready = time.perf_counter() - t0
        pending += 1
        if pending >= target:
            samples = streamer.render()
            pending, target = 0, chunk_tokens
            if len(samples):
                yield samples, False, tokens_ready, time.perf_counter() - t0
    samples = streamer.finish()
    yield samples, True, tokens_ready, time.perf_counter() - t0


def check_chunk_sizes(first_chunk_tokens: int, chunk_tokens: int) -> None:
    if int(first_chunk_tokens) < 1 or int(chunk_tokens) < 1:
        raise StreamError(f"first_chunk_tokens and chunk_tokens must be >= 1 (got {first_chunk_tokens}, "
                          f"{chunk_tokens}); 25 tokens are one second of speech")


def boundary_hf_ratio(samples: np.ndarray, boundaries: Iterable[int], sample_rate: int) -> float:
    """Seam roughness: mean over boundaries of the first-difference energy within +-5 ms of each,
    divided by the median of the same measure over all 10 ms windows (1.0: seams are typical)."""
    d2 = np.square(np.diff(np.asarray(samples, np.float64)))
    half, win = int(BOUNDARY_HALF_WINDOW_S * sample_rate), int(ROUGHNESS_WINDOW_S * sample_rate)
    inner = [b for b in boundaries if half <= b <= len(d2) - half]
    if not inner or len(d2) < win:
        return float("nan")
    at = np.mean([np.mean(d2[b - half : b + half]) for b in inner])
    windows = d2[: len(d2) // win * win].reshape(-1, win).mean(axis=1)
    return float(at / max(np.median(windows), 1e-30))


def stream_speech(tts, sentences, language, voice, exaggeration, params, seed, first_chunk_tokens, chunk_tokens,
                  max_new_tokens=None, config=None, finisher=None) -> Iterator[AudioChunk]:
    """TTS.stream's generator (arguments already checked): sentence by sentence as generate(),
    with generate()'s keys per sentence, so a seed gives generate()'s speech tokens. TTS.stream
    advances it under the model's lock and on its stream (TTS.running). `finisher` (TTS.finisher)
    takes every chunk in turn; a chunk it holds back entirely is not yielded."""
    from .tts import SENTENCE_PAUSE_S, trim_trailing_silence

    t0 = time.perf_counter()
    key = mx.random.key(seed) if seed is not None else None
    pause = np.zeros(int(SENTENCE_PAUSE_S * tts.sample_rate), np.float32)

    def sentence_chunks():
        nonlocal key
        for i, sentence in enumerate(sentences):
            t3_key = s3_key = None
            if key is not None:
                key, t3_key, s3_key = mx.random.split(key, 3)
            tokens = tts.speech_tokens(sentence, language, voice, exaggeration, params, t3_key, max_new_tokens)
            options = tts.s3gen_options()
            # Turbo's silence tokens follow T3's last token, as generate() appends them.
            padded = itertools.chain(tokens, [S3GEN_SILENCE_TOKEN] * options["silence_tokens"])
            pieces = stream_tokens(tts.s3gen, padded, voice, key=s3_key, first_chunk_tokens=first_chunk_tokens,
                                   chunk_tokens=chunk_tokens, config=config,
                                   drop_last_token=options["drop_last_token"], clock_start=t0)
            try:
                for samples, final, tokens_ready, audio_ready in pieces:
                    last = final and i == len(sentences) - 1
                    if final:
                        # The end-of-speech guard can only trim the part not yet handed out.
                        samples = trim_trailing_silence(samples, tts.sample_rate)
                        if not last:
                            samples = np.concatenate([samples, pause])
                    yield samples, last, tokens_ready, audio_ready
            finally:
                pieces.close()  # closes T3's generator too: its KV cache goes with it
                tokens.close()

    yield from finished(sentence_chunks(), tts.sample_rate, finisher, t0)


def finished(chunks: Iterator[tuple], sample_rate: int, finisher, t0: float) -> Iterator[AudioChunk]:
    """(samples, is_last, tokens_ready_s, audio_ready_s) tuples -> numbered AudioChunks, each passed
    through `finisher` (TTS.finisher) when there is one: a chunk it holds back entirely is not
    yielded, and audio_ready_s is taken again (from `t0`) after it. Closes `chunks` when done."""
    index = 0
    try:
        for samples, last, tokens_ready, audio_ready in chunks:
            if finisher is not None:
                samples = finisher.push(samples, last=last)
                if not len(samples) and not last:
                    continue
                audio_ready = time.perf_counter() - t0
            yield AudioChunk(samples, sample_rate, index, last, tokens_ready, audio_ready)
            index += 1
    finally:
        chunks.close()
