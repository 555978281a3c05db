"""The analyzer's decisions on hand-built attention, the rules of chatterbox-tts 0.1.7 (spec §3.7)."""

import mlx.core as mx
import numpy as np

from nightingale_mlx.alignment import FORCED_LOGIT, AlignmentStreamAnalyzer

EOS = 10


def attention_at(pos, text_start=2, text_len=12, keys=20):
    row = np.zeros((1, keys), np.float32)
    row[0, text_start + pos] = 1.0
    return row


def test_suppresses_eos_until_text_is_spoken():
    a = AlignmentStreamAnalyzer(2, 14, EOS)
    logits = mx.zeros((1, 16))
    out = np.array(a.step(logits, attention_at(0), last_token=100))
    assert out[0, EOS] == -FORCED_LOGIT and (np.delete(out[0], EOS) == 0).all()


def test_two_equal_tokens_in_a_row_force_eos():
    a = AlignmentStreamAnalyzer(2, 14, EOS)
    decisions = [a.update(attention_at(min(i, 11)), tok) for i, tok in enumerate([100, 5, 7, 7])]
    assert decisions[:3] != ["force"] * 3 and decisions[3] == "force"
    out = np.array(a.step(mx.zeros((1, 16)), attention_at(11), 7))
    assert out[0, EOS] == FORCED_LOGIT and (np.delete(out[0], EOS) == -FORCED_LOGIT).all()


def test_long_tail_after_completion_forces_eos():
    a = AlignmentStreamAnalyzer(2, 14, EOS)
    toks = iter(range(1000, 2000))
    # Walk monotonically to the end of the text, then keep attending to the last token.
    for i in range(12):
        assert a.update(attention_at(i), next(toks)) != "force"
    assert a.complete
    decisions = [a.update(attention_at(11), next(toks)) for _ in range(6)]
    assert "force" in decisions


def test_monotonic_cap_hides_columns_ahead_of_the_frame():
    a = AlignmentStreamAnalyzer(2, 14, EOS)
    a.update(attention_at(8), 100)  # frame 0 may only see text column 0
    assert a.alignment[0].sum() == 0 and a.text_position == 0
