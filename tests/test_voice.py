"""Voice objects: exact save/load round trip, clear errors, conds.pt conversion."""

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.voices import convert_conds, voice_from_conds
from nightingale_mlx.voice import Voice, VoiceError


def random_voice(seed=0, n_tok=150, n_gen=157) -> Voice:
    rng = np.random.default_rng(seed)
    return Voice(
        speaker_emb=rng.standard_normal((1, 256)).astype(np.float32),
        prompt_tokens=rng.integers(0, 6561, (1, n_tok)).astype(np.int32),
        gen_prompt_token=rng.integers(0, 6561, (1, n_gen)).astype(np.int32),
        gen_prompt_feat=rng.standard_normal((1, 2 * n_gen + 1, 80)).astype(np.float32),
        gen_embedding=rng.standard_normal((1, 192)).astype(np.float32),
    )


def assert_same(a: Voice, b: Voice):
    for name in ("speaker_emb", "prompt_tokens", "gen_prompt_token", "gen_prompt_feat", "gen_embedding"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(np.array(x), np.array(y)), name


def test_round_trip_is_exact(tmp_path):
    voice = random_voice()
    path = voice.save(tmp_path / "v.safetensors")
    loaded = Voice.load(path)
    assert_same(voice, loaded)
    assert loaded.prompt_tokens.dtype == mx.int32
    assert not list(tmp_path.glob(".*tmp*")), "the temp file must be renamed into place"


def test_load_errors(tmp_path):
    with pytest.raises(VoiceError, match="no such voice"):
        Voice.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(VoiceError, match="not a readable"):
        Voice.load(junk)
    other = tmp_path / "weights.safetensors"
    save_file({"speaker_emb": np.zeros((1, 256), np.float32)}, str(other), metadata={"format": "nightingale-mlx"})
    with pytest.raises(VoiceError, match="not a nightingale-mlx voice"):
        Voice.load(other)
    partial = tmp_path / "partial.safetensors"
    save_file({"speaker_emb": np.zeros((1, 256), np.float32)}, str(partial),
              metadata={"format": "nightingale-mlx", "format_version": "1", "kind": "voice"})
    with pytest.raises(VoiceError, match="malformed"):
        Voice.load(partial)


def test_bad_shapes_are_refused():
    with pytest.raises(VoiceError, match="speaker_emb"):
        Voice(np.zeros(256, np.float32), *[getattr(random_voice(), k) for k in
              ("prompt_tokens", "gen_prompt_token", "gen_prompt_feat", "gen_embedding")])


def test_conds_pt_converts(tmp_path, fixtures_dir):
    expected = dict(np.load(fixtures_dir / "checkpoint" / "conds.npz"))
    path = convert_conds(fixtures_dir / "checkpoint" / "conds.pt", tmp_path / "voices" / "default.safetensors")
    voice = Voice.load(path)
    assert np.array_equal(np.array(voice.speaker_emb), expected["t3.speaker_emb"])
    assert np.array_equal(np.array(voice.prompt_tokens), expected["t3.cond_prompt_speech_tokens"])
    assert np.array_equal(np.array(voice.gen_prompt_token), expected["gen.prompt_token"])
    assert np.array_equal(np.array(voice.gen_prompt_feat), expected["gen.prompt_feat"])
    assert np.array_equal(np.array(voice.gen_embedding), expected["gen.embedding"])
    assert_same(voice, voice_from_conds(fixtures_dir / "checkpoint" / "conds.pt"))
