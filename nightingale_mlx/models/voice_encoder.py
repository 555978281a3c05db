"""VoiceEncoder: the 3-layer LSTM speaker encoder whose 256-d embedding conditions T3 (spec §4).

`lstm` is a list of single-layer MLX LSTMs (MLX has no stacked LSTM); the converter maps
`lstm.weight_ih_l{k}` / `weight_hh_l{k}` to `lstm.{k}.Wx` / `Wh` and folds the two torch biases
into MLX's single one. Gate order (i, f, g, o) is the same in both.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..audio.mel import VE_MEL, mel_spectrogram
from ..audio.trim import trim_silence
from ..config import VoiceEncoderConfig


def num_partials(n_frames: int, cfg: VoiceEncoderConfig):
    """The reference's window count rule (`get_num_wins`): (windows, frames covered)."""
    win, step = cfg.partial_frames, cfg.frame_step
    n_wins, remainder = divmod(max(n_frames - win + step, 0), step)
    if n_wins == 0 or (remainder + (win - step)) / win >= cfg.min_coverage:
        n_wins += 1
    return n_wins, win + step * (n_wins - 1)


class VoiceEncoder(nn.Module):
    def __init__(self, cfg: VoiceEncoderConfig):
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.num_mels] + [cfg.hidden_size] * cfg.num_layers
        self.lstm = [nn.LSTM(sizes[i], cfg.hidden_size) for i in range(cfg.num_layers)]
        self.proj = nn.Linear(cfg.hidden_size, cfg.embed_size)

    def __call__(self, mels: mx.array) -> mx.array:
        """(B, partial_frames, num_mels) -> (B, embed_size) L2-normalised partial embeddings."""
        x = mels
        for layer in self.lstm:
            x, _ = layer(x)
        raw = nn.relu(self.proj(x[:, -1]))  # final hidden state of the last layer
        return raw / mx.linalg.norm(raw, axis=1, keepdims=True)

    def partials(self, mel: mx.array) -> mx.array:
        """(T, num_mels) -> (n, partial_frames, num_mels): windows of `frame_step`, zero-padded."""
        cfg = self.cfg
        n, target = num_partials(mel.shape[0], cfg)
        mel = mx.array(mel)
        if target > mel.shape[0]:
            mel = mx.pad(mel, [(0, target - mel.shape[0]), (0, 0)])
        idx = mx.arange(n)[:, None] * cfg.frame_step + mx.arange(cfg.partial_frames)[None]
        return mel[idx]

    def embed_wav(self, wav16: np.ndarray) -> mx.array:
        """`embeds_from_wavs([wav], 16000)`: trim, mel, partials, mean, L2 norm -> (1, embed_size)."""
        wav = trim_silence(wav16, top_db=self.cfg.trim_top_db)
        if wav.size == 0:
            raise ValueError("the voice encoder found no audio above the silence threshold")
        mel = mel_spectrogram(wav, VE_MEL)
        dtype = self.proj.weight.dtype
        embeds = self(self.partials(mel).astype(dtype)).astype(mx.float32)
        mean = embeds.mean(axis=0, keepdims=True)
        return mean / mx.linalg.norm(mean, axis=1, keepdims=True)

