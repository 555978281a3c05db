"""The alignment stream analyzer of chatterbox-tts 0.1.7: EOS control from text-speech attention.

It watches where three "aligned" heads attend in the text and, per step, either suppresses EOS
(text not yet spoken) or forces it (a long tail, a repeat of earlier text, or a repeated token).
The decisions are cheap bookkeeping on a (frames, text) matrix, done on the CPU in numpy.
"""

import mlx.core as mx
import numpy as np

# The reference writes these finite values, not infinities, before the other processors.
FORCED_LOGIT = 2.0**15


class AlignmentStreamAnalyzer:
    def __init__(self, text_start: int, text_end: int, eos_id: int):
        self.i, self.j = text_start, text_end
        self.eos_id = eos_id
        self.alignment = np.zeros((0, text_end - text_start), dtype=np.float32)
        self.curr_frame_pos = 0
        self.text_position = 0
        self.started = False
        self.complete = False
        self.completed_at = None
        self.recent_tokens = []

    def update(self, attention: np.ndarray, last_token: int) -> str:
        """Takes the attention rows of this step (rows, keys); returns "force", "suppress" or "none"."""
        chunk = np.array(attention[:, self.i : self.j], dtype=np.float32)
        chunk[:, self.curr_frame_pos + 1 :] = 0  # monotonic cap, as in the reference
        self.alignment = np.concatenate([self.alignment, chunk], axis=0)
        A = self.alignment
        T, S = A.shape

        cur = int(np.argmax(chunk[-1]))
        if -4 < cur - self.text_position < 7:  # discontinuities are ignored
            self.text_position = cur
        false_start = (not self.started) and (A[-2:, -2:].max() > 0.1 or A[:, :4].max() < 0.5)
        self.started = not false_start

        self.complete = self.complete or self.text_position >= S - 3
        if self.complete and self.completed_at is None:
            self.completed_at = T
        long_tail = self.complete and A[self.completed_at :, -3:].sum(axis=0).max() >= 5
        repetition = self.complete and A[self.completed_at :, :-5].max(axis=1).sum() > 5

        self.recent_tokens = (self.recent_tokens + [last_token])[-8:]
        # Two equal tokens in a row already force EOS (the reference's comment says three).
        token_repetition = len(self.recent_tokens) >= 3 and self.recent_tokens[-1] == self.recent_tokens[-2]

        self.curr_frame_pos += 1
        if long_tail or repetition or token_repetition:
            return "force"
        if cur < S - 3 and S > 5:
            return "suppress"
        return "none"

    def step(self, logits: mx.array, attention: np.ndarray, last_token: int) -> mx.array:
        decision = self.update(attention, last_token)
        is_eos = mx.arange(logits.shape[-1]) == self.eos_id
        if decision == "force":
            return mx.where(is_eos, FORCED_LOGIT, -FORCED_LOGIT).astype(logits.dtype)[None]
        if decision == "suppress":
            return mx.where(is_eos, -FORCED_LOGIT, logits)
        return logits
