"""Audio DSP against direct numpy formulas, and the clear errors of audio loading."""

import numpy as np
import pytest
import soundfile

from nightingale_mlx.audio.fbank import kaldi_fbank, kaldi_mel_banks
from nightingale_mlx.audio.io import AudioError, check_voice_audio, load_audio, save_audio
from nightingale_mlx.audio.mel import S3GEN_MEL, VE_MEL, _hz_to_mel, _mel_to_hz, mel_filters, mel_spectrogram
from nightingale_mlx.audio.resample import resample_sinc, resample_soxr, sinc_kernel
from nightingale_mlx.audio.trim import trim_silence

RNG = np.random.default_rng(0)


def tone(seconds, sr=16000, f=220.0, amp=0.3):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_slaney_scale_and_filters():
    assert _hz_to_mel(1000.0) == pytest.approx(15.0)  # linear part ends at 1 kHz = 15 mel
    f = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(_mel_to_hz(_hz_to_mel(f)), f, rtol=1e-12)
    fb = mel_filters(16000, 400, 40, 0.0, 8000.0)
    assert fb.shape == (40, 201) and fb.dtype == np.float32 and (fb >= 0).all()
    # Slaney norm: each triangle has area 1 in Hz, up to the FFT grid's sampling of it.
    area = fb.sum(axis=1) * (16000 / 400)
    np.testing.assert_allclose(area[5:], 1.0, rtol=0.1)


def numpy_mel(wav, n_fft, hop, fb, pad=None, eps=None):
    x = np.pad(wav, (n_fft // 2, n_fft // 2), mode="reflect") if pad is None else np.pad(wav, (pad, pad), mode="reflect")
    n = 1 + (x.size - n_fft) // hop
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    return (np.sqrt(spec + eps) if eps is not None else spec) @ fb.T


def test_mels_match_numpy_formulas():
    wav = (tone(1.0) + 0.05 * RNG.standard_normal(16000)).astype(np.float32)
    ve = numpy_mel(wav.astype(np.float64), 400, 160, mel_filters(16000, 400, 40, 0.0, 8000.0))
    np.testing.assert_allclose(np.array(mel_spectrogram(wav, VE_MEL)), ve, rtol=1e-3, atol=1e-3 * ve.max())
    wav24 = (tone(1.0, 24000) + 0.05 * RNG.standard_normal(24000)).astype(np.float32)
    fb = mel_filters(24000, 1920, 80, 0.0, 8000.0)
    ref = np.log(np.maximum(numpy_mel(wav24.astype(np.float64), 1920, 480, fb, pad=720, eps=1e-9), 1e-5))
    ours = np.array(mel_spectrogram(wav24, S3GEN_MEL))
    assert ours.shape == (50, 80)  # floor(len / 480) frames
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def numpy_fbank(wav, sr=16000, bins=80):
    frames = np.stack([wav[i * 160:i * 160 + 400] for i in range(1 + (wav.size - 400) // 160)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames *= (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames, n=512, axis=-1)) ** 2
    feats = np.log(np.maximum(power @ kaldi_mel_banks(bins, 512, sr).T, np.finfo(np.float32).eps))
    return feats - feats.mean(axis=0)


def test_kaldi_fbank_matches_numpy_formula():
    wav = (tone(1.0) + 0.05 * RNG.standard_normal(16000)).astype(np.float32)
    ours = np.array(kaldi_fbank(wav))
    assert ours.shape == (98, 80)  # 1 + (16000 - 400) // 160
    np.testing.assert_allclose(ours, numpy_fbank(wav), atol=2e-3)
    banks = kaldi_mel_banks(80, 512, 16000)
    assert banks.shape == (80, 257) and banks[:, -1].max() == 0  # zero Nyquist column


def test_resamplers_preserve_a_tone_and_lengths():
    wav = tone(1.0, 24000, f=1000.0)
    for out in (resample_sinc(wav, 24000, 16000), resample_soxr(wav, 24000, 16000)):
        assert out.size == 16000
        expected = tone(1.0, 16000, f=1000.0)
        assert np.abs(out[200:-200] - expected[200:-200]).max() < 2e-3
    assert resample_sinc(wav[:1001], 24000, 16000).size == int(np.ceil(1001 * 2 / 3))
    assert resample_soxr(wav[:1001], 24000, 16000).size == int(np.ceil(1001 * 2 / 3))
    kernel, width = sinc_kernel(24000, 16000)
    assert kernel.shape == (2, 2 * width + 3) and width == 10  # ceil(6 * 3 / (2 * 0.99))
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0, atol=2e-2)  # unity DC gain


def test_trim_keeps_the_loud_part_on_hop_boundaries():
    wav = np.concatenate([np.zeros(8000, np.float32), tone(1.0), np.zeros(8000, np.float32)])
    trimmed = trim_silence(wav, top_db=20)
    # Frames are 2048 long and centred every 512 samples: at most a frame's reach of silence stays.
    assert 16000 <= trimmed.size <= 16000 + 2 * 2048 and trimmed.size % 512 == 0
    assert trim_silence(np.zeros(4000, np.float32)).size == 4000  # all equal: nothing is quieter than max


def test_load_downmixes_any_channel_count(tmp_path):
    stereo = np.stack([tone(1.2), 0.5 * tone(1.2)], axis=1)
    soundfile.write(str(tmp_path / "s.wav"), stereo, 44100, subtype="FLOAT")
    wav, sr = load_audio(tmp_path / "s.wav")
    assert sr == 44100 and wav.dtype == np.float32
    np.testing.assert_allclose(wav, stereo.mean(axis=1), atol=1e-7)
    six = np.tile(tone(1.2)[:, None], (1, 6))
    soundfile.write(str(tmp_path / "six.flac"), six, 8000)
    wav, sr = load_audio(tmp_path / "six.flac")
    assert wav.ndim == 1 and sr == 8000


def test_save_round_trip(tmp_path):
    wav = tone(1.0)
    loaded, sr = load_audio(save_audio(tmp_path / "a.wav", wav, 16000, float32=True))
    assert sr == 16000 and np.array_equal(loaded, wav)
    loaded, _ = load_audio(save_audio(tmp_path / "a.flac", wav, 16000))
    assert np.abs(loaded - wav).max() < 1e-4
    with pytest.raises(AudioError, match="unsupported output format"):
        save_audio(tmp_path / "a.mp3", wav, 16000)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    (tmp_path / "text.wav").write_text("hello, I am not audio")
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(tmp_path / "text.wav")
    soundfile.write(str(tmp_path / "full.wav"), tone(2.0), 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "cut.wav")
    soundfile.write(str(tmp_path / "low.wav"), tone(2.0, 4000), 4000)
    with pytest.raises(AudioError, match="below 8000"):
        load_audio(tmp_path / "low.wav")


@pytest.mark.parametrize("wav,match", [
    (np.zeros(0, np.float32), "empty"),
    (np.full(16000, np.nan, np.float32), "NaN"),
    (np.r_[tone(1.0), np.float32(np.inf)], "NaN or infinite"),
    (np.zeros(32000, np.float32), "silent"),
    (tone(0.5), "too short"),
    (np.zeros(16000, np.int16), "floats"),
])
def test_bad_reference_audio(wav, match):
    with pytest.raises(AudioError, match=match):
        check_voice_audio(wav, 16000)
