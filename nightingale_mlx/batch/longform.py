"""Long text, spoken piece by piece: pieces T3 handles well, one voice and one seed, pauses by punctuation.

Piece length. T3's end-of-speech guard (TTS.speech_tokens) caps a piece's speech tokens at
TOKEN_CAP_RATIO x its estimated duration + TOKEN_CAP_SLACK_S, but never above max_new_tokens (1000
tokens = 40 s). Past GUARD_LIMIT_S of estimated speech ((40 - 3) / 2.5 = 14.8 s, ~190 English
letters) the fixed 1000-token ceiling fires before the guard, so a slow voice is cut off mid-word
and a runaway tail gets less than the 2.5x margin. Pieces stay at MAX_PIECE_SECONDS, 10 % under
(bench/longform_limit.py measures where each cap fires).

Seeds. Piece i of an item with seed S is spoken with seed piece_seed(S, i), a SeedSequence of
(S, i): every piece draws fresh noise (no repeated prosody), the same for the same (S, i) on any
machine, and a rerun of one item reproduces it exactly. The voice is resolved once per item.
"""

import re
import time
from dataclasses import dataclass
from typing import List

import numpy as np

from ..config import SPEECH_TOKENS_PER_SECOND
from ..sampling import SamplingParams
from ..text.split import CJK_CLAUSE, CJK_ENDERS, CLAUSE, CLOSERS, ENDERS, split_text
from ..tts import SENTENCE_PAUSE_S, TOKEN_CAP_RATIO, TOKEN_CAP_SLACK_S

GUARD_LIMIT_S = (SamplingParams.max_new_tokens / SPEECH_TOKENS_PER_SECOND - TOKEN_CAP_SLACK_S) / TOKEN_CAP_RATIO
MAX_PIECE_SECONDS = round(0.9 * GUARD_LIMIT_S, 1)
# Silence after a piece, by how it ends: a paragraph, a sentence, a clause mark, a bare word cut.
PARAGRAPH_PAUSE_S = 0.6
CLAUSE_PAUSE_S = 0.1
WORD_PAUSE_S = 0.05
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")


@dataclass
class Piece:
    text: str
    pause_s: float  # silence after it (0 after the last)


def _pause_after(piece: str) -> float:
    end = piece.rstrip(CLOSERS + " ")[-1:]
    if end and end in ENDERS + CJK_ENDERS:
        return SENTENCE_PAUSE_S
    if end and end in CLAUSE + CJK_CLAUSE:
        return CLAUSE_PAUSE_S
    return WORD_PAUSE_S


def plan_pieces(text: str, language: str = "en", max_seconds: float = MAX_PIECE_SECONDS) -> List[Piece]:
    """Paragraphs (blank lines) -> split_text's chunks of at most max_seconds each, with their pauses."""
    pieces = []
    for paragraph in _PARAGRAPH.split(text):
        chunks = split_text(paragraph, language, max_seconds=max_seconds)
        for j, chunk in enumerate(chunks):
            pieces.append(Piece(chunk, PARAGRAPH_PAUSE_S if j == len(chunks) - 1 else _pause_after(chunk)))
    if pieces:
        pieces[-1].pause_s = 0.0
    return pieces


def piece_seed(item_seed: int, index: int) -> int:
    """The seed of piece INDEX of an item seeded ITEM_SEED (see the module docstring)."""
    words = np.random.SeedSequence([int(item_seed), int(index)]).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) % 2**63


def speak(tts, text: str, language: str, voice, seed: int, max_seconds: float = MAX_PIECE_SECONDS,
          watermark: bool = True, **options):
    """Text -> (float32 samples, info) with tts.generate per piece; `voice` as generate() takes it.
    The joined item passes through TTS.finish once (the watermark, unless `watermark=False`).

    info: pieces, sentences, tokens (speech tokens), t3_s, s3gen_s, wall_s, audio_s, rtf.
    """
    t0 = time.perf_counter()
    pieces = plan_pieces(text, language, max_seconds)
    if not pieces:
        raise ValueError("text is empty; give some words to speak")
    voice = tts.resolve_voice(voice)  # once: every piece in the same voice
    parts, info = [], {"pieces": len(pieces), "sentences": 0, "tokens": 0, "t3_s": 0.0, "s3gen_s": 0.0}
    for i, piece in enumerate(pieces):
        audio = tts.generate(piece.text, language=language, voice=voice, seed=piece_seed(seed, i), watermark=False,
                             **options)
        parts += [audio.samples, np.zeros(int(round(piece.pause_s * audio.sample_rate)), np.float32)]
        info["sentences"] += audio.info["sentences"]
        info["tokens"] += audio.info["speech_tokens"]
        info["t3_s"] += audio.info["t3_s"]
        info["s3gen_s"] += audio.info["s3gen_s"]
    samples = tts.finish(np.concatenate(parts).astype(np.float32), watermark)
    info["audio_s"] = len(samples) / tts.sample_rate
    info["wall_s"] = time.perf_counter() - t0
    info["rtf"] = info["wall_s"] / max(info["audio_s"], 1e-9)
    return samples, info
