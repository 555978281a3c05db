"""Progress on stderr for long commands (tqdm), shown only when stderr is a terminal and not --quiet."""

import os
import sys
import time

from tqdm import tqdm

from .config import SPEECH_TOKENS_PER_SECOND


def enabled(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _shape() -> dict:
    """stderr's size for tqdm: a terminal reporting 0x0 (a bare pty) would make tqdm draw nothing."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return {"ncols": size.columns or 100, "nrows": size.lines or 24}
    except (OSError, ValueError):
        return {"ncols": 100, "nrows": 24}


class SpeechProgress:
    """`[i/n] sentences, tokens, elapsed, RTF` for speak; RTF = elapsed / seconds of speech so far."""

    def __init__(self, show: bool):
        self.bar = None if not show else tqdm(
            total=0, file=sys.stderr, leave=False, **_shape(),
            bar_format="nightingale: [{n_fmt}/{total_fmt}] sentences {elapsed}{postfix}")
        self.start, self.tokens, self.audio_s = time.perf_counter(), 0, None

    def sentence(self, i: int, n: int, text: str) -> None:
        """tts.generate's callback, before sentence i of n."""
        if self.bar is not None:
            self.bar.total = n
            self.bar.update(i + 1 - self.bar.n)  # counts the sentence being spoken, as "[1/6]" at the start
            self._postfix()
            self.bar.refresh()  # every sentence is drawn, whatever tqdm's rate limit

    def token(self) -> None:
        self.tokens += 1
        if self.bar is not None and self.tokens % 5 == 0:
            self._postfix()

    def audio(self, seconds: float) -> None:
        """Seconds of audio produced so far (streaming knows them exactly)."""
        self.audio_s = seconds
        if self.bar is not None:
            self._postfix()

    def _postfix(self) -> None:
        speech = self.audio_s if self.audio_s is not None else self.tokens / SPEECH_TOKENS_PER_SECOND
        rtf = f", RTF {(time.perf_counter() - self.start) / speech:.1f}" if speech > 0 else ""
        self.bar.set_postfix_str(f"{self.tokens} tokens ({speech:.1f} s of speech{rtf})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def count_tokens(tts, progress: SpeechProgress) -> None:
    """Wraps this TTS instance's token generator so every speech token ticks the progress."""
    inner = tts.speech_tokens

    def speech_tokens(*args, **kwargs):
        for token in inner(*args, **kwargs):
            progress.token()
            yield token

    tts.speech_tokens = speech_tokens


def steps(show: bool, total: int, what: str):
    """A bar over TOTAL named steps (convert, export-ios): `update(name)` after each step."""
    return tqdm(total=total, file=sys.stderr, disable=not show, leave=False, unit="step", **_shape(),
                bar_format="nightingale: " + what + " [{n_fmt}/{total_fmt}] {elapsed}{postfix}")


class BatchProgress:
    """`batch [i/n] items, hours of audio done, RTF, ETA` for nightingale batch.

    RTF = wall time / audio made in this run; the ETA scales the time so far by the characters
    still to speak (chapters differ in length far more than in speaking rate).
    """

    def __init__(self, show: bool, total: int, skipped: int, chars: int):
        self.bar = None if not show else tqdm(
            total=total, initial=skipped, file=sys.stderr, leave=False, **_shape(),
            bar_format="nightingale: batch [{n_fmt}/{total_fmt}] items {bar} {elapsed}{postfix}")
        self.start, self.chars_total, self.chars_done, self.audio_s = time.perf_counter(), chars, 0, 0.0
        self._postfix()

    def item(self, chars: int, audio_s: float) -> None:
        self.chars_done += chars
        self.audio_s += audio_s
        if self.bar is not None:
            self.bar.update()
            self._postfix()

    def note(self, message: str) -> None:
        """A line above the bar (a failed item)."""
        if self.bar is not None:
            self.bar.write(f"nightingale: {message}", file=sys.stderr)

    def _postfix(self) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - self.start
        text = f"{self.audio_s / 3600:.3f} h audio ({tqdm.format_interval(self.audio_s)})"
        if self.audio_s > 0:
            text += f", RTF {elapsed / self.audio_s:.2f}"
        if self.chars_done:
            left = elapsed * (self.chars_total - self.chars_done) / self.chars_done
            text += f", ETA {tqdm.format_interval(left)}"
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
