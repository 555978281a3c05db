"""Where T3's end-of-speech guard stops being the limit: text length vs the speech-token caps.

TTS.speech_tokens caps a piece at min(max_new_tokens, 25 x (2.5 x estimated seconds + 3)) speech
tokens. For each text length this prints the characters, text tokens, estimated seconds, the
guard's cap, which cap binds, and (with --run) how many tokens T3 actually produced and whether it
stopped on its own (EOS) or at the cap. batch's pieces stay under the length where the fixed
ceiling takes over (nightingale_mlx/batch/longform.py: GUARD_LIMIT_S, MAX_PIECE_SECONDS).

    python -m bench.longform_limit --run        # synthetic model: T3 with random weights

With the synthetic model EOS practically never fires, so "produced" shows the caps at work, not
speech quality; the real model's EOS needs the real weights.
"""

import argparse
import json
import os

from nightingale_mlx.batch.longform import GUARD_LIMIT_S, MAX_PIECE_SECONDS
from nightingale_mlx.config import SPEECH_TOKENS_PER_SECOND, SPEECH_VOCAB_SIZE
from nightingale_mlx.text import estimate_seconds
from nightingale_mlx.tts import TOKEN_CAP_RATIO, TOKEN_CAP_SLACK_S

PASSAGE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
           "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
           "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
           "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
           "direct the other way.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="store_true", help="also run the synthetic T3 at each length")
    p.add_argument("--lengths", default="40,80,120,160,200,240,300,350,400")
    args = p.parse_args(argv)
    tts = None
    if args.run:
        import nightingale_mlx as ng

        tts = ng.load("synthetic")
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        text = PASSAGE[:n].rsplit(" ", 1)[0] + "."
        est = estimate_seconds(text, "en")
        guard = int(SPEECH_TOKENS_PER_SECOND * (TOKEN_CAP_RATIO * est + TOKEN_CAP_SLACK_S))
        ceiling = 1000
        row = {"chars": len(text), "est_s": round(est, 1), "guard_cap": guard, "cap": min(guard, ceiling),
               "binding": "guard (2.5x estimate)" if guard < ceiling else "ceiling (1000 tokens = 40 s)",
               "headroom_x": round(min(guard, ceiling) / SPEECH_TOKENS_PER_SECOND / est, 2)}
        if tts is not None:
            import mlx.core as mx

            row["text_tokens"] = len(tts.tokenizer.text_tokens(text, "en"))
            voice = tts.resolve_voice(None)
            with tts.running():
                tokens = list(tts.speech_tokens(text, "en", voice, 0.5, tts.sampling_params(), mx.random.key(0)))
            # T3 yields tokens until EOS (not yielded) or the cap; ids >= 6561 are dropped before S3Gen.
            row["steps"] = len(tokens)
            row["speech_tokens"] = sum(1 for t in tokens if t < SPEECH_VOCAB_SIZE)
            row["stopped_by"] = "cap" if len(tokens) >= row["cap"] else "EOS"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"guard_limit_s": round(GUARD_LIMIT_S, 2), "max_piece_s": MAX_PIECE_SECONDS,
                      "max_piece_letters_en": round(MAX_PIECE_SECONDS * 13.0), "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
