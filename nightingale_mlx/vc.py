"""Voice conversion (the reference's `ChatterboxVC`): a recording's S3 tokens rendered by S3Gen in
another voice. No T3: the source at 16 kHz goes through the S3 tokenizer, and S3Gen renders those
tokens with the target's prompt (`embed_ref` on its first 10 s at 24 kHz).

Sources of any length: the reference tokenizes up to 30 s in one window (longer: 30 s windows
overlapping by 4 s, merged) and renders every token in one S3Gen call, whose attention grows with
the square of the length. Here a source is cut at low-energy token boundaries into pieces of at
most `PIECE_MAX_S` (a source up to that length is one piece: exactly the reference's computation),
each tokenized and rendered on its own, so memory is bounded by the piece, not the source.
Cuts fall on multiples of one token (640 samples at 16 kHz), so the pieces' tokens are the
source's token grid and the joined audio keeps the source's length. Each piece after the first
is rendered with `OVERLAP_TOKENS` of the previous piece's tokens before it: the first one's audio
carries S3Gen's start fade, the second's is crossfaded with the previous piece's end.
Streaming (`stream_chunks`) feeds the same pieces' tokens to the streamer TTS.stream uses.
"""

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Union

import mlx.core as mx
import numpy as np

from .audio.io import load_checked
from .config import DEC_COND_SECONDS, S3_SR, S3GEN_SR
from .voice import embed_ref, load_reference

TOKEN_HOP = 640  # 16 kHz samples per S3 token (25 tokens/s)
SAMPLES_PER_TOKEN_24K = 960
PIECE_MAX_S = 30.0  # the tokenizer's one-window limit (3000 mel frames)
PIECE_MIN_S = 15.0  # cuts are searched in [min, max] from the piece start (min <= max / 2)
STREAM_PIECE_MAX_S, STREAM_PIECE_MIN_S = 8.0, 4.0  # streaming: the first audio waits for one piece
ENERGY_SMOOTH_TOKENS = 3  # a cut is scored by the energy of the tokens around it
OVERLAP_TOKENS = 2
MIN_SOURCE_SECONDS = 0.5


@dataclass
class GenPrompt:
    """S3Gen's part of a voice (`embed_ref`): all that voice conversion needs. A `Voice` has the
    same three fields, so either can be the target."""

    gen_prompt_token: mx.array
    gen_prompt_feat: mx.array
    gen_embedding: mx.array


def target_prompt(models, wav_or_path, sample_rate: Optional[int] = None) -> GenPrompt:
    """`ChatterboxVC.set_target_voice`: the clip at 24 kHz (soxr), its first 10 s, `embed_ref`.
    No loudness normalisation (vc.py has none), whatever the model family."""
    ref24 = load_reference(wav_or_path, sample_rate)
    gen = embed_ref(models, ref24[: DEC_COND_SECONDS * S3GEN_SR])
    mx.eval(list(gen.values()))
    return GenPrompt(**gen)


def load_source(source: Union[str, Path, np.ndarray], sample_rate: Optional[int] = None) -> np.ndarray:
    """A path, or samples with their sample_rate -> validated float32 mono at 16 kHz
    (`librosa.load(source, sr=16000)`, soxr_hq, as vc.py)."""
    return load_checked(source, sample_rate, S3_SR, MIN_SOURCE_SECONDS, "source audio", path_prefix="source ")


def cut_points(wav16: np.ndarray, max_s: float = PIECE_MAX_S, min_s: float = PIECE_MIN_S) -> List[int]:
    """Piece boundaries in tokens, [0, ..., n_tokens]: each cut at the quietest token boundary
    between min_s and max_s from the previous one, leaving at least min_s for the rest."""
    n = -(-(len(wav16) // 160) // 4)  # the tokenizer's count: ceil(mel frames / 4)
    max_t, min_t = int(max_s * S3_SR) // TOKEN_HOP, int(min_s * S3_SR) // TOKEN_HOP
    if not 1 <= min_t <= max_t // 2:
        raise ValueError(f"piece lengths need 0 < min ({min_s} s) <= max / 2 ({max_s} s)")
    padded = np.pad(wav16.astype(np.float64), (0, n * TOKEN_HOP - len(wav16)))
    energy = np.square(padded).reshape(n, TOKEN_HOP).mean(axis=1)
    # score[b]: mean energy of the tokens around boundary b (b - k .. b + k - 1)
    k = ENERGY_SMOOTH_TOKENS
    csum = np.concatenate([[0.0], np.cumsum(energy)])
    cuts = [0]
    while n - cuts[-1] > max_t:
        lo, hi = cuts[-1] + min_t, min(cuts[-1] + max_t, n - min_t)
        b = np.arange(lo, hi + 1)
        left, right = np.maximum(b - k, 0), np.minimum(b + k, n)
        score = (csum[right] - csum[left]) / (right - left)
        cuts.append(int(b[np.argmin(score)]))  # the first minimum: deterministic
    return cuts + [n]


def piece_tokens(tokenizer, wav16: np.ndarray, cuts: List[int]) -> Iterator[np.ndarray]:
    """Each piece's S3 tokens (int32), tokenized as the source is read, piece by piece."""
    for a, b in zip(cuts, cuts[1:]):
        tokens = np.array(tokenizer(wav16[a * TOKEN_HOP : b * TOKEN_HOP])).reshape(-1).astype(np.int32)
        if len(tokens) != b - a:  # only the last piece can end off the grid, and ceil() covers it
            raise AssertionError(f"piece [{a}, {b}) gave {len(tokens)} tokens")
        yield tokens


def output_samples(wav16: np.ndarray) -> int:
    """The source's length at 24 kHz: the converted audio is cut to it (S3Gen renders whole tokens)."""
    return int(round(len(wav16) * S3GEN_SR / S3_SR))


def render_pieces(s3gen, pieces: Iterator[np.ndarray], prompt, key: Optional[mx.array], total: int,
                  progress=None, n_pieces: int = 1) -> np.ndarray:
    """S3Gen renders each piece (with OVERLAP_TOKENS before it) and the pieces are joined; the
    result is cut to `total` samples. One piece: `S3Gen.inference` as vc.py calls it."""
    out, prev_tail = [], None
    previous = np.zeros(0, np.int32)
    xf = SAMPLES_PER_TOKEN_24K
    for i, tokens in enumerate(pieces):
        if progress is not None:
            progress(i, n_pieces, len(tokens))
        piece_key = None
        if key is not None:
            key, piece_key = mx.random.split(key)
        context = previous[-OVERLAP_TOKENS:] if len(previous) else previous
        wav = np.array(s3gen.inference(np.concatenate([context, tokens]), prompt, key=piece_key))
        previous = tokens
        if len(context):
            skip = len(context) * SAMPLES_PER_TOKEN_24K
            head, wav = wav[skip - xf : skip], wav[skip:]
            ramp = np.arange(1, xf + 1, dtype=np.float32) / (xf + 1)
            out.append(prev_tail * (1 - ramp) + head * ramp)
        prev_tail, wav = wav[-xf:], wav[:-xf]
        out.append(wav)
    out.append(prev_tail)
    return np.concatenate(out)[:total].astype(np.float32)


def stream_chunks(tts, pieces: Iterator[np.ndarray], prompt, key, total: int, first_chunk_tokens: int,
                  chunk_tokens: int, config=None, finisher=None):
    """TTS.stream_convert_voice's generator: the pieces' tokens, as each piece is tokenized, go
    through streaming.stream_tokens (TTS.stream's streamer); the audio is cut to `total` samples
    and passes through `finisher` (TTS.finisher), as TTS.stream's chunks do."""
    from .streaming import finished, stream_tokens

    t0 = time.perf_counter()
    tokens = itertools.chain.from_iterable(p.tolist() for p in pieces)
    chunks = stream_tokens(tts.s3gen, tokens, prompt, key=key, first_chunk_tokens=first_chunk_tokens,
                           chunk_tokens=chunk_tokens, config=config, clock_start=t0)
    yield from finished(cut_chunks(chunks, total), tts.sample_rate, finisher, t0)


def cut_chunks(chunks: Iterator[tuple], total: int) -> Iterator[tuple]:
    """stream_tokens' (samples, ...) tuples with the audio cut to `total` samples in all; closes `chunks`."""
    emitted = 0
    try:
        for samples, *rest in chunks:
            samples = samples[: max(0, total - emitted)]
            emitted += len(samples)
            yield (samples, *rest)
    finally:
        chunks.close()
