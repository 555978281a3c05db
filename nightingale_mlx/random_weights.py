"""Seeded random weights in the original checkpoints' names, in pure numpy (no mlx import).

Used by the synthetic demo model and by the test harness: the reference env writes
original-format checkpoints with it, and CI rebuilds the same tensors without torch, so tiny
fixtures never need committed weights. Each tensor is drawn from its own stream keyed by
(seed, name): order never matters.
"""

import hashlib
import zlib

import numpy as np


def _scale(name: str, shape: tuple) -> float:
    if name.endswith("emb.weight") or name.endswith("pre_attention_query"):
        return 0.5
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return fan_in**-0.5


# HiFT's F0 predictor ends in abs(Linear(C, 1)) and reads as Hz. Centre it on a speaking pitch
# with a wide spread, so that both the voiced (harmonic sine) and the unvoiced (< 10 Hz, noise)
# source paths run; plain init would give |f0| ~ 1 Hz, all unvoiced.
F0_CLASSIFIER = "f0_predictor.classifier."
F0_CENTRE_HZ = 120.0
F0_SPREAD = 60.0


def _rng(seed: int, name: str):
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_tensor(name: str, shape, seed: int, dtype=np.float32) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    rng = _rng(seed, name)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return np.zeros(shape, dtype=dtype)  # e.g. num_batches_tracked
    x = rng.standard_normal(shape, dtype=np.float32)
    leaf = name.rsplit(".", 1)[-1]
    if F0_CLASSIFIER in name:
        if leaf == "bias":
            return np.full(shape, F0_CENTRE_HZ, dtype=dtype)
        return (F0_SPREAD * _scale(name, shape) * x).astype(dtype)
    if leaf == "running_var":
        return (1.0 + 0.1 * np.abs(x)).astype(dtype)
    if leaf == "bias" or leaf == "running_mean":
        return (0.02 * x).astype(dtype)
    if len(shape) == 1:  # norm gains
        return (1.0 + 0.1 * x).astype(dtype)
    return (_scale(name, shape) * x).astype(dtype)


def random_state_dict(spec, seed: int) -> dict:
    """spec: iterable of (name, shape[, numpy dtype name])."""
    out = {}
    for entry in spec:
        name, shape = entry[0], entry[1]
        dtype = np.dtype(entry[2]) if len(entry) > 2 else np.float32
        out[name] = random_tensor(name, shape, seed, dtype)
    return out


def digest(state: dict) -> str:
    """A content hash, to prove CI rebuilt exactly the weights the reference ran."""
    h = hashlib.sha256()
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


N_PROMPT_TOKENS = 157  # the real built-in voice: 6.28 s of reference
T3_PROMPT_TOKENS = 150  # T3Config.speech_cond_prompt_len
SPEECH_CODES = 6561


def random_conds(seed: int) -> dict:
    """The built-in voice (`conds.pt`) as numpy arrays, shaped like the real file (None stays None).

    speaker_emb is post-ReLU and L2-normalised like a VoiceEncoder output; prompt_feat is a
    log-mel-like level; T3's prompt tokens are the first 150 of S3Gen's, as in the real file.
    """
    tokens = _rng(seed, "conds.prompt_token").integers(0, SPEECH_CODES, (1, N_PROMPT_TOKENS))
    spk = np.maximum(_rng(seed, "conds.speaker_emb").standard_normal((1, 256)), 0.0)
    spk /= np.linalg.norm(spk, axis=1, keepdims=True)
    feat_shape = (1, 2 * N_PROMPT_TOKENS, 80)
    feat = -6.0 + 2.0 * _rng(seed, "conds.prompt_feat").standard_normal(feat_shape)
    t3 = {
        "speaker_emb": spk.astype(np.float32),
        "clap_emb": None,
        "cond_prompt_speech_tokens": tokens[:, :T3_PROMPT_TOKENS].astype(np.int64),
        "cond_prompt_speech_emb": None,
        "emotion_adv": np.full((1, 1, 1), 0.5, dtype=np.float32),
    }
    gen = {
        "prompt_token": tokens.astype(np.int64),
        "prompt_token_len": np.array([N_PROMPT_TOKENS], dtype=np.int64),
        "prompt_feat": np.clip(feat, np.log(1e-5), 3.0).astype(np.float32),  # ln(clamp(mel, 1e-5))
        "prompt_feat_len": None,
        "embedding": _rng(seed, "conds.embedding").standard_normal((1, 192)).astype(np.float32),
    }
    return {"t3": t3, "gen": gen}


def conds_digest(conds: dict) -> str:
    """digest() over the non-None arrays, keyed 't3.x' / 'gen.x'."""
    flat = {f"{part}.{k}": v for part, d in conds.items() for k, v in d.items() if v is not None}
    return digest(flat)
