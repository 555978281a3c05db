"""Cloning models: `ve.*` and the `tokenizer.*` / `speaker_encoder.*` parts of `s3gen.*`.

Names stay the reference's except where MLX forces a change, each listed here:
- VoiceEncoder: torch's stacked LSTM `lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}` becomes
  `lstm.{k}.{Wx,Wh,bias}` (one MLX LSTM per layer, one bias = bias_ih + bias_hh).
- S3 tokenizer: `quantizer._codebook` becomes `quantizer.codebook` (MLX skips `_` attributes).
- CAMPPlus: every BatchNorm that directly follows a conv is folded into that conv, which gains
  a bias (FOLDS lists the pairs); 1x1 convs become Linear weights (ONE_BY_ONE).
Layouts are known by name: Conv1d (O, I, K) -> (O, K, I), Conv2d (O, I, h, w) -> (O, h, w, I).
"""

import re
from typing import Dict

import numpy as np

from .common import ConversionError, conv1d, conv2d, take_prefix

BN_EPS = 1e-5  # torch BatchNorm default, used by every CAMPPlus BatchNorm

# Stored by the reference but unused at inference, or recomputed by us; dropped on purpose.
UNUSED_VE = ("similarity_weight", "similarity_bias")  # GE2E training-loss scalars
RECOMPUTED_TOKENIZER = ("_mel_filters", "window")  # librosa mel filters and hann window (audio/mel.py)

# (conv pattern, its BatchNorm) pairs folded at conversion, over `speaker_encoder.` names.
FOLDS = (
    (r"(head(?:\.layer\d+\.\d+)?)\.conv(\d)", r"\1.bn\2"),
    (r"(head\.layer\d+\.\d+\.shortcut)\.0", r"\1.1"),
    (r"(xvector\.tdnn)\.linear", r"\1.nonlinear.batchnorm"),
    (r"(xvector\.block\d+\.tdnnd\d+)\.linear1", r"\1.nonlinear2.batchnorm"),
    (r"(xvector\.dense)\.linear", r"\1.nonlinear.batchnorm"),
)
CONV2D = re.compile(r"head\..*(conv\d|shortcut\.0)\.weight$")
CONV1D = re.compile(r"(xvector\.tdnn\.linear|cam_layer\.linear_local)\.weight$")
ONE_BY_ONE = re.compile(r"(tdnnd\d+\.linear1|cam_layer\.linear[12]|transit\d+\.linear|dense\.linear)\.weight$")


def sanitize_voice_encoder(ve: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """ve.pt / ve.safetensors -> `VoiceEncoder` names."""
    out, k = {}, 0
    if "lstm.weight_ih_l0" not in ve:
        raise ConversionError("not a Chatterbox voice encoder checkpoint: no lstm.weight_ih_l0")
    while f"lstm.weight_ih_l{k}" in ve:
        out[f"lstm.{k}.Wx"] = ve[f"lstm.weight_ih_l{k}"]
        out[f"lstm.{k}.Wh"] = ve[f"lstm.weight_hh_l{k}"]
        # torch adds both biases to the gates; MLX has one.
        out[f"lstm.{k}.bias"] = (ve[f"lstm.bias_ih_l{k}"].astype(np.float64) + ve[f"lstm.bias_hh_l{k}"]).astype(
            ve[f"lstm.bias_ih_l{k}"].dtype)
        k += 1
    lstm = {f"lstm.{n}_l{i}" for i in range(k) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    for name, value in ve.items():
        if name not in lstm and name not in UNUSED_VE:
            out[name] = value  # proj.*; anything else fails the strict load
    return out


def sanitize_tokenizer(tok: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """`tokenizer.*` of s3gen (prefix removed) -> `S3TokenizerV2` names."""
    out = {}
    for name, value in tok.items():
        if name in RECOMPUTED_TOKENIZER:
            continue
        if name in ("encoder.conv1.weight", "encoder.conv2.weight") or name.endswith("attn.fsmn_block.weight"):
            value = conv1d(value)  # fsmn_block is depthwise: (C, 1, K) -> (C, K, 1)
        out[name.replace("quantizer._codebook.", "quantizer.codebook.")] = value
    return out


def _fold(w: np.ndarray, b, bn: Dict[str, np.ndarray]):
    """conv (O, ...) then eval BatchNorm -> one conv: w * s, (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    s = 1.0 / np.sqrt(bn["running_var"].astype(np.float64) + BN_EPS)
    if "weight" in bn:  # affine=False BatchNorms (CAMPPlus's last) have no weight or bias
        s = s * bn["weight"]
    shift = bn.get("bias", 0.0) - bn["running_mean"] * s
    if b is not None:
        shift = shift + b * s
    w = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return w.astype(np.float32), shift.astype(np.float32)


def sanitize_campplus(spk: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """`speaker_encoder.*` of s3gen (prefix removed) -> `CAMPPlus` names, BatchNorms folded."""
    weights = {k: v for k, v in spk.items() if not k.endswith(".num_batches_tracked")}
    for conv_pat, bn_pat in FOLDS:
        for name in [k for k in weights if re.fullmatch(conv_pat + r"\.weight", k)]:
            conv = name[: -len(".weight")]
            bn = re.sub(conv_pat, bn_pat, conv)
            stats = take_prefix(weights, bn)
            if "running_var" not in stats:
                raise ConversionError(f"speaker_encoder.{conv}: no BatchNorm {bn} to fold")
            weights[f"{conv}.weight"], weights[f"{conv}.bias"] = _fold(weights[name], weights.get(f"{conv}.bias"), stats)
            for k in stats:
                del weights[f"{bn}.{k}"]
    out = {}
    for name, value in weights.items():
        if CONV2D.search(name):
            value = conv2d(value)
        elif CONV1D.search(name):
            value = conv1d(value)
        elif ONE_BY_ONE.search(name):
            value = value[..., 0]  # Conv1d (O, I, 1) -> Linear (O, I)
        out[name] = value
    return out


def sanitize_cloning(ve: Dict[str, np.ndarray], s3gen: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The whole `CloningModels` state: `ve.*`, `tokenizer.*`, `speaker_encoder.*`."""
    tok, spk = take_prefix(s3gen, "tokenizer"), take_prefix(s3gen, "speaker_encoder")
    if not tok or not spk:
        raise ConversionError("not a Chatterbox S3Gen checkpoint: no tokenizer.* or speaker_encoder.* tensors")
    out = {f"ve.{k}": v for k, v in sanitize_voice_encoder(ve).items()}
    out.update({f"tokenizer.{k}": v for k, v in sanitize_tokenizer(tok).items()})
    out.update({f"speaker_encoder.{k}": v for k, v in sanitize_campplus(spk).items()})
    return out


def cloning_dims(ve: Dict[str, np.ndarray], s3gen: Dict[str, np.ndarray]) -> dict:
    """CloningConfig fields read from named tensors (original names, before sanitizing)."""

    def shape(weights, name):
        if name not in weights:
            raise ConversionError(f"not a Chatterbox cloning checkpoint: no tensor {name!r}")
        return weights[name].shape

    def count(weights, fmt, start=0):
        n = start
        while any(k.startswith(fmt.format(n)) for k in weights):
            n += 1
        return n - start

    n_state = shape(s3gen, "tokenizer.encoder.conv1.weight")[0]
    blocks = [count(s3gen, f"speaker_encoder.xvector.block{b}.tdnnd{{}}.", start=1) for b in (1, 2, 3)]
    return dict(
        voice_encoder=dict(
            num_mels=shape(ve, "lstm.weight_ih_l0")[1],
            hidden_size=shape(ve, "lstm.weight_hh_l0")[1],
            num_layers=count(ve, "lstm.weight_ih_l{}"),
            embed_size=shape(ve, "proj.weight")[0],
        ),
        s3_tokenizer=dict(
            n_mels=shape(s3gen, "tokenizer.encoder.conv1.weight")[1],
            n_state=n_state,
            n_head=n_state // 64,
            n_layer=count(s3gen, "tokenizer.encoder.blocks.{}."),
            fsmn_kernel=shape(s3gen, "tokenizer.encoder.blocks.0.attn.fsmn_block.weight")[2],
        ),
        campplus=dict(
            embedding_size=shape(s3gen, "speaker_encoder.xvector.dense.linear.weight")[0],
            m_channels=shape(s3gen, "speaker_encoder.head.conv1.weight")[0],
            init_channels=shape(s3gen, "speaker_encoder.xvector.tdnn.linear.weight")[0],
            growth_rate=shape(s3gen, "speaker_encoder.xvector.block1.tdnnd1.cam_layer.linear_local.weight")[0],
            bn_channels=shape(s3gen, "speaker_encoder.xvector.block1.tdnnd1.linear1.weight")[0],
            block_layers=blocks,
        ),
    )
