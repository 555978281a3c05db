"""TTS: the components of a converted model, and text -> speech."""

import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Tuple, Union

import mlx.core as mx
import numpy as np

from . import model_io, watermark as wm
from .audio.clip import Audio
from .config import PROFILES, SPEECH_TOKENS_PER_SECOND, SPEECH_VOCAB_SIZE, TURBO_SILENCE_TOKENS
from .models.s3gen import S3GEN_SR
from .sampling import SamplingParams
from .text import TextError, Tokenizer, estimate_seconds, split_text, validate_language
from .voice import Voice, VoiceError, load_cloning, prepare_voice

logger = logging.getLogger(__name__)
DEFAULT_VOICE = Path("voices") / "default.safetensors"
# End-of-speech guard: tokens capped at this many seconds per estimated second of text, plus slack.
TOKEN_CAP_RATIO, TOKEN_CAP_SLACK_S = 2.5, 3.0
SENTENCE_PAUSE_S = 0.15
ENGLISH_REPETITION_PENALTY = 1.2  # ChatterboxTTS.generate's default, 0.1.7 and HEAD alike
# ChatterboxTurboTTS.generate's defaults: no CFG, no min-p; top-k then top-p, the penalty last.
TURBO_SAMPLING = dict(temperature=0.8, top_k=1000, top_p=0.95, repetition_penalty=1.2, cfg_weight=0.0, min_p=0.0,
                      order="warpers_first")
TURBO_UNSUPPORTED = ("cfg_weight", "min_p")  # the reference warns and ignores them
# Trailing silence below this level (relative to the peak) is trimmed, keeping a short tail.
SILENCE_TOP_DB, SILENCE_TAIL_S = 40.0, 0.1
VOICES_KEPT = 4  # loaded voices, and T3 conditionings (a Turbo voice's stored prefix: ~30-75 MB fp32)


def _serialized(method):
    """Runs `method` under the model's lock and on its stream (TTS.running)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.running():
            return method(self, *args, **kwargs)

    return locked


class _SerializedIterator:
    """Advances a generator one step at a time under the model's lock and on its stream; the lock
    is released while the caller holds an item, and any thread may ask for the next one."""

    def __init__(self, tts: "TTS", gen):
        self._tts, self._gen = tts, gen

    def __iter__(self):
        return self

    def __next__(self):
        with self._tts.running():
            return next(self._gen)

    def close(self) -> None:
        with self._tts.running():
            self._gen.close()


def check_generate_args(text, exaggeration, seed, max_new_tokens) -> None:
    """One-line ValueErrors for arguments SamplingParams does not cover."""
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    if not (isinstance(exaggeration, (int, float)) and math.isfinite(exaggeration) and exaggeration >= 0):
        raise ValueError(f"exaggeration must be a finite number >= 0 (0.5 is neutral), got {exaggeration!r}")
    check_seed(seed)
    if max_new_tokens is not None and not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")


def check_seed(seed) -> None:
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")


class TTS:
    """A loaded model. Build it with `nightingale_mlx.load()`.

    One TTS may be shared by threads, and used from any thread: generate(), prepare_voice() and
    each step of stream() take turns under a lock, on one stream of the model's own.
    """

    sample_rate = S3GEN_SR

    def __init__(self, model_dir: Path, profile: Optional[str] = None):
        self.model_dir = Path(model_dir)
        self.config = model_io.load_config(self.model_dir)
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        self.profile = PROFILES[profile or self.config.profile]
        self.t3, _ = model_io.load_t3(self.model_dir, self.config)
        self.s3gen = model_io.load_s3gen(self.model_dir, self.config)
        self.tokenizer = Tokenizer.from_model_dir(self.model_dir, self.config.text)
        self._cloning = None
        # Voices by file (path, size, mtime) and T3's conditioning per (voice, exaggeration), a few
        # of each: repeated requests with one voice skip loading, cloning and most of the prefill.
        self._voices = OrderedDict()
        self._conds = OrderedDict()
        self._watermarker = None  # loaded on first use; False: none found (warned once)
        self._lock = threading.RLock()  # see running()
        # MLX streams are per thread (0.31.2+): an array made on one thread's stream cannot be
        # evaluated on another. The model computes on a stream usable from any thread instead.
        self._stream = mx.new_thread_unsafe_stream(mx.default_device())

    @contextmanager
    def running(self):
        """The model's lock, and its stream as the default: MLX evaluation from several threads
        at once is not safe on every backend, and the caches below are shared (docs/reliability.md)."""
        with self._lock, mx.stream(self._stream):
            yield

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def voice_family(self) -> str:
        return self.config.voice_family

    # --- voices -----------------------------------------------------------------------------

    @_serialized
    def prepare_voice(self, wav: Union[str, Path, np.ndarray], sample_rate: Optional[int] = None) -> Voice:
        """Clones a voice from reference audio (a path, or samples with their sample_rate)."""
        return prepare_voice(self._cloning_models(), wav, sample_rate, self.voice_family)

    def resolve_voice(self, voice: Union[None, str, Path, Voice]) -> Voice:
        """None -> the built-in voice; NAME -> voices/NAME.safetensors; a .safetensors -> a baked
        voice; any other path -> reference audio, cloned now."""
        voice = self._find_voice(voice)
        voice.check_family(self.voice_family, self.variant)
        return voice

    def _find_voice(self, voice) -> Voice:
        if isinstance(voice, Voice):
            return voice
        if voice is None:
            return self.voice_file(self.model_dir / DEFAULT_VOICE)
        named = self.model_dir / "voices" / f"{voice}.safetensors"
        if named.is_file():
            return self.voice_file(named)
        path = Path(voice)
        if not path.exists():
            raise VoiceError(f"{voice}: no such voice file, and no voice of that name in {self.model_dir / 'voices'}")
        return self.voice_file(path)

    @_serialized
    def voice_file(self, path: Union[str, Path]) -> Voice:
        """A baked voice (.safetensors) loaded, or reference audio cloned; again only if the file changed
        (the last VOICES_KEPT files are kept, and with them T3's stored prefix for each)."""
        path = Path(path)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._voices:
            load = Voice.load if path.suffix == ".safetensors" else self.prepare_voice
            _remember(self._voices, key, load(path), VOICES_KEPT)
        self._voices.move_to_end(key)
        return self._voices[key]

    def _condition(self, voice: Voice, exaggeration: float) -> Tuple[mx.array, dict]:
        """T3's conditioning tokens for the voice, and the dict where T3 keeps its backbone's keys
        and values over them (T3.inference's `prefix`): a voice's later sentences and requests
        skip that part of the prefill (375 of ~440 rows for a Turbo voice)."""
        key = (id(voice), float(exaggeration))
        cached = self._conds.get(key)
        if cached is None or cached[0] is not voice:  # an id can be reused once its voice is gone
            cond = self.t3.condition(voice.speaker_emb, voice.prompt_tokens, exaggeration)
            cached = _remember(self._conds, key, (voice, cond, {}), VOICES_KEPT)
        self._conds.move_to_end(key)
        return cached[1], cached[2]

    # --- finishing: the last step of every output path ---------------------------------------

    @property
    def watermarker(self) -> Optional["wm.Watermarker"]:
        """Perth's watermarker: the model dir's weights, else the installed resemble-perth's; None
        (with a one-time warning) when neither exists."""
        if self._watermarker is None:
            self._watermarker = wm.load(self.model_dir) or False
            if not self._watermarker:
                _warn_once(wm.MISSING_WARNING)
        return self._watermarker or None

    def finisher(self, watermark: bool = True) -> "wm.WatermarkStream":
        """The finishing step of every output (generate, stream, and any other path that makes
        audio): `push(samples, last)` marks audio as the reference's generate() does, piece by
        piece without seams. `watermark=False` passes the audio through unchanged."""
        return wm.WatermarkStream(self.watermarker if watermark else None, self.sample_rate)

    def finish(self, samples: np.ndarray, watermark: bool = True) -> np.ndarray:
        """`finisher` for a whole utterance at once."""
        return self.finisher(watermark).push(samples, last=True)

    # --- generation -------------------------------------------------------------------------

    def sampling_params(self, **overrides) -> SamplingParams:
        """The reference's generate() defaults; the repetition penalty follows the profile."""
        if self.config.is_turbo:
            ignored = [k for k in TURBO_UNSUPPORTED if overrides.get(k)]
            if ignored:
                logger.warning("Turbo and Nano have no CFG or min-p; ignoring %s", ", ".join(ignored))
            given = {k: v for k, v in overrides.items() if v is not None and k not in TURBO_UNSUPPORTED}
            return SamplingParams(**{**TURBO_SAMPLING, **given})
        # The profile's penalty is the multilingual generate()'s; English uses 1.2 in every release.
        penalty = self.profile.repetition_penalty if self.t3.cfg.is_multilingual else ENGLISH_REPETITION_PENALTY
        params = dict(repetition_penalty=penalty, top_p=1.0)
        params.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**params)

    def speech_tokens(self, text: str, language: Optional[str], voice: Voice, exaggeration: float,
                      params: SamplingParams, key: Optional[mx.array] = None, max_new_tokens: Optional[int] = None,
                      sampler=None):
        """Yields T3's speech tokens for one sentence (the end-of-speech guard caps their count).

        `sampler(logits) -> (1,) token` replaces the seeded sampler (see T3.inference).
        """
        ids = self.tokenizer.text_tokens(text, language)
        cap = int(SPEECH_TOKENS_PER_SECOND * (TOKEN_CAP_RATIO * estimate_seconds(text, language or "en")
                                              + TOKEN_CAP_SLACK_S))
        limit = min(max_new_tokens or params.max_new_tokens, cap)
        step_params = SamplingParams(**{**params.__dict__, "max_new_tokens": limit})
        analyzer = self.profile.alignment_analyzer and self.t3.cfg.is_multilingual
        cond, prefix = self._condition(voice, exaggeration)
        yield from self.t3.inference(cond, mx.array(ids), step_params, key=key, sampler=sampler,
                                     alignment_analyzer=analyzer, prefix=prefix)

    def s3gen_options(self) -> dict:
        """Turbo appends 3 silence tokens and keeps all the audio; the others may drop the last token's."""
        if self.config.is_turbo:
            return dict(drop_last_token=False, silence_tokens=TURBO_SILENCE_TOKENS)
        return dict(drop_last_token=self.profile.drop_last_token, silence_tokens=0)

    def _check_language(self, language: Optional[str]) -> Optional[str]:
        if language is None:
            return "en"
        return validate_language(language)

    @_serialized
    def generate(
        self,
        text: str,
        language: Optional[str] = None,
        voice: Union[None, str, Path, Voice] = None,
        exaggeration: float = 0.5,
        seed: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
        progress=None,
        sampler=None,
        watermark: bool = True,
        **sampling,
    ) -> Audio:
        """Text -> Audio at 24 kHz. Long text is spoken sentence by sentence with short pauses.

        `sampling`: temperature, cfg_weight, repetition_penalty, min_p, top_p (reference defaults;
        the penalty follows the profile). `seed` makes the whole pipeline deterministic.
        `progress(i, n, sentence)` is called before each sentence. `sampler(logits) -> (1,) token`
        injects T3's token choice (DESIGN §4: every source of randomness is injectable).
        The output carries Perth's watermark, as the reference's does; `watermark=False` leaves it out.
        """
        language = self._check_language(language)
        check_generate_args(text, exaggeration, seed, max_new_tokens)
        params = self.sampling_params(**sampling)
        voice = self.resolve_voice(voice)
        chunks = split_text(text, language)
        if not chunks:
            raise ValueError("text is empty; give some words to speak")
        key = mx.random.key(seed) if seed is not None else None
        pieces, info = [], {"sentences": len(chunks), "speech_tokens": 0, "t3_s": 0.0, "s3gen_s": 0.0}
        pause = np.zeros(int(SENTENCE_PAUSE_S * self.sample_rate), np.float32)
        for i, chunk in enumerate(chunks):
            if progress is not None:
                progress(i, len(chunks), chunk)
            t3_key = s3_key = None
            if key is not None:
                key, t3_key, s3_key = mx.random.split(key, 3)
            t0 = time.perf_counter()
            tokens = list(self.speech_tokens(chunk, language, voice, exaggeration, params, t3_key, max_new_tokens,
                                              sampler))
            t1 = time.perf_counter()
            wav = self.s3gen.inference(tokens, voice, key=s3_key, **self.s3gen_options())
            wav = trim_trailing_silence(np.array(wav), self.sample_rate)
            info["t3_s"] += t1 - t0
            info["s3gen_s"] += time.perf_counter() - t1
            info["speech_tokens"] += sum(1 for t in tokens if t < SPEECH_VOCAB_SIZE)
            pieces += [wav, pause]
        samples = np.concatenate(pieces[:-1]) if pieces else np.zeros(0, np.float32)
        t0 = time.perf_counter()
        samples = self.finish(samples, watermark)
        info["watermark_s"] = time.perf_counter() - t0
        info["audio_s"] = len(samples) / self.sample_rate
        info["rtf"] = (info["t3_s"] + info["s3gen_s"]) / max(info["audio_s"], 1e-9)
        return Audio(samples.astype(np.float32), self.sample_rate, info)

    def stream(
        self,
        text: str,
        language: Optional[str] = None,
        voice: Union[None, str, Path, Voice] = None,
        exaggeration: float = 0.5,
        seed: Optional[int] = None,
        first_chunk_tokens: int = 12,
        chunk_tokens: int = 25,
        max_new_tokens: Optional[int] = None,
        stream_config=None,
        watermark: bool = True,
        **sampling,
    ):
        """Text -> an iterator of `AudioChunk`s (24 kHz), each as soon as its tokens are rendered.

        T3 and the S3Gen streamer are interleaved: the first chunk after `first_chunk_tokens`
        speech tokens, then every `chunk_tokens` (25 tokens = 1 s). Arguments as generate();
        `stream_config` is a `streaming.StreamConfig`. Closing the iterator early frees everything.
        Every chunk passes through the same finishing step as generate() (the watermark).
        """
        from .streaming import check_chunk_sizes, stream_speech

        language = self._check_language(language)
        check_generate_args(text, exaggeration, seed, max_new_tokens)
        check_chunk_sizes(first_chunk_tokens, chunk_tokens)
        params = self.sampling_params(**sampling)
        voice = self.resolve_voice(voice)
        sentences = split_text(text, language)
        if not sentences:
            raise ValueError("text is empty; give some words to speak")
        with self.running():  # loads the watermark weights on first use, on the model's stream
            finisher = self.finisher(watermark)
        return _SerializedIterator(self, stream_speech(self, sentences, language, voice, exaggeration, params, seed,
                                                       first_chunk_tokens, chunk_tokens, max_new_tokens, stream_config,
                                                       finisher))

    # --- voice conversion ---------------------------------------------------------------------

    def _vc_target(self, voice):
        """A Voice (any family: VC uses only its S3Gen prompt), a baked voice file or name, None
        (the built-in voice), or reference audio, embedded as ChatterboxVC.set_target_voice does."""
        from .vc import target_prompt

        if voice is None or isinstance(voice, Voice):
            return self._find_voice(voice)
        if isinstance(voice, np.ndarray):
            raise VoiceError("pass target audio as a file path, or clone it first with prepare_voice()")
        path = Path(voice)
        named = self.model_dir / "voices" / f"{voice}.safetensors"
        if named.is_file() or path.suffix == ".safetensors" or not path.exists():
            return self._find_voice(voice)
        return target_prompt(self._cloning_models(), path)

    def _cloning_models(self):
        if self._cloning is None:
            self._cloning = load_cloning(self.model_dir, self.config.cloning)
        return self._cloning

    def _vc_source(self, source, sample_rate, max_s: float, min_s: float):
        from .vc import cut_points, load_source, output_samples, piece_tokens

        wav16 = load_source(source, sample_rate)
        cuts = cut_points(wav16, max_s, min_s)
        return piece_tokens(self._cloning_models().tokenizer, wav16, cuts), len(cuts) - 1, output_samples(wav16)

    @_serialized
    def convert_voice(self, source: Union[str, Path, np.ndarray], voice: Union[None, str, Path, Voice] = None,
                      seed: Optional[int] = None, sample_rate: Optional[int] = None, progress=None,
                      watermark: bool = True) -> Audio:
        """Voice conversion (ChatterboxVC.generate): the source recording (a path, or samples with
        their `sample_rate`) spoken in `voice` (a reference clip, a baked voice file or name;
        None: the built-in voice). 24 kHz, the source's length. Any length: cut at quiet points
        into pieces of <= 30 s (vc.py). The decoder is the model's (10 CFM steps with CFG, or
        Turbo/Nano's 2 meanflow steps). `progress(i, n, tokens)` is called before each piece.
        The output carries the watermark, as generate()'s does; `watermark=False` leaves it out."""
        from .vc import PIECE_MAX_S, PIECE_MIN_S, render_pieces

        check_seed(seed)
        target = self._vc_target(voice)
        t0 = time.perf_counter()
        pieces, n, total = self._vc_source(source, sample_rate, PIECE_MAX_S, PIECE_MIN_S)
        key = mx.random.key(seed) if seed is not None else None
        samples = render_pieces(self.s3gen, pieces, target, key, total, progress, n)
        t1 = time.perf_counter()
        samples = self.finish(samples, watermark)
        info = {"pieces": n, "seconds": time.perf_counter() - t0, "watermark_s": time.perf_counter() - t1,
                "audio_s": len(samples) / self.sample_rate}
        info["rtf"] = info["seconds"] / max(info["audio_s"], 1e-9)
        return Audio(samples.astype(np.float32), self.sample_rate, info)

    def stream_convert_voice(self, source: Union[str, Path, np.ndarray], voice: Union[None, str, Path, Voice] = None,
                             seed: Optional[int] = None, sample_rate: Optional[int] = None,
                             first_chunk_tokens: int = 12, chunk_tokens: int = 25, stream_config=None,
                             watermark: bool = True):
        """convert_voice as an iterator of `AudioChunk`s: the source is tokenized piece by piece
        (<= 8 s) and its tokens go through TTS.stream's streamer and finishing step, chunk by chunk."""
        from .streaming import check_chunk_sizes
        from .vc import STREAM_PIECE_MAX_S, STREAM_PIECE_MIN_S, stream_chunks

        check_seed(seed)
        check_chunk_sizes(first_chunk_tokens, chunk_tokens)
        with self.running():
            target = self._vc_target(voice)
            pieces, _, total = self._vc_source(source, sample_rate, STREAM_PIECE_MAX_S, STREAM_PIECE_MIN_S)
            finisher = self.finisher(watermark)
        key = mx.random.key(seed) if seed is not None else None
        return _SerializedIterator(self, stream_chunks(self, pieces, target, key, total, first_chunk_tokens,
                                                       chunk_tokens, stream_config, finisher))


_WARNED = set()


def _remember(cache: OrderedDict, key, value, size: int):
    """Stores `value` in an LRU dict of `size` entries; returns it."""
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def trim_trailing_silence(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cuts trailing audio quieter than SILENCE_TOP_DB below the peak, keeping a short tail.

    Chatterbox without the analyzer can run on with seconds of near-silence after the text.
    """
    if wav.size == 0:
        return wav
    frame = sample_rate // 100  # 10 ms
    n = len(wav) // frame
    if n == 0:
        return wav
    rms = np.sqrt(np.mean(wav[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)
    loud = np.nonzero(20 * np.log10(rms / (rms.max() + 1e-20)) > -SILENCE_TOP_DB)[0]
    if len(loud) == 0:
        return wav
    end = min(len(wav), (loud[-1] + 1) * frame + int(SILENCE_TAIL_S * sample_rate))
    return wav[:end]
