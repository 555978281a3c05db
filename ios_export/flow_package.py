"""The S3Gen flow as one Core ML function over a fixed chunk: tokens -> encoder -> mu -> 10 Euler steps -> mel.

A chunk is a window of W = frames / 2 speech tokens (bounded left context, new tokens, lookahead;
the prompt's tail while the window overlaps it), exactly what the MLX streamer feeds
`flow.prepare` + `decoder.solve`. Everything is unrolled into a static graph:
- inputs: `tokens` (1, W) int32, `cond` (1, 80, T) fp16 (the prompt mel on the frames the window
  shares with the prompt, zeros after), `embedding` (1, 192) fp32 (the voice's CAMPPlus x-vector),
  `noise` (1, 80, T) fp32 (the CFM's x0; no random ops); output `mel` (1, 80, T) fp32, T = 2 W.
- CFG runs as a batch of 2 (row 1: zero mu, speaker and cond); the cosine t schedule and
  inference_cfg_rate are baked in. The meanflow decoder (Turbo/Nano): batch 1, no CFG, linear
  times, the (t, r) time mixer; its 2 steps come from the config. The time embedding and each
  ResNet block's time projection depend only on the step, so MLX computes them at export and they
  become per-step constants.
- Layout (B, C, 1, T), Linear = 1x1 conv (layers.py). Target `gpu`: fp16 activations with fp32
  layer norms, softmax and Euler state; quantized linears as blockwise constexprs from MLX's codes.
  Target `ane`: fp16 throughout, fp16 weights (MLX's own dequantization).
"""

import math
from typing import Dict, List

import mlx.core as mx
import numpy as np

from nightingale_mlx.models.cfm import cosine_t_span
from nightingale_mlx.models.conformer import LOOKAHEAD_SLOPE, rel_positions
from nightingale_mlx.models.unet import timestep_embedding

from .layers import Layers, save_program

FUNCTION = "main"
NORMALIZE_EPS = 1e-12  # flow.py: F.normalize of the x-vector


class FlowExportError(ValueError):
    """The flow cannot be exported as asked."""


def step_constants(flow, n_timesteps: int) -> List[Dict[str, np.ndarray]]:
    """Per Euler step: dt and each ResNet block's time projection (C,), computed by MLX itself.

    The meanflow decoder (Turbo) steps on linear times and mixes the embeddings of t and the step's
    end time r (cfm.py); both only depend on the step, so they stay export-time constants."""
    est = flow.decoder.estimator
    meanflow = flow.decoder.meanflow
    t_span = mx.linspace(0, 1, n_timesteps + 1, dtype=mx.float32) if meanflow else cosine_t_span(n_timesteps)
    blocks = {f"down_blocks.{i}": s[0] for i, s in enumerate(est.down_blocks)}
    blocks.update({f"mid_blocks.{i}": s[0] for i, s in enumerate(est.mid_blocks)})
    blocks.update({f"up_blocks.{i}": s[0] for i, s in enumerate(est.up_blocks)})
    steps = []
    for k in range(n_timesteps):
        if meanflow:
            t_emb = est.time_embedding(t_span[k : k + 1], t_span[k + 1 : k + 2])
        else:
            t_emb = est.time_mlp(timestep_embedding(mx.broadcast_to(t_span[k], (2,)), est.time_dim))
        consts = {name: np.array(b.mlp[1](b.mlp[0](t_emb))[0].astype(mx.float32)) for name, b in blocks.items()}
        consts["dt"] = float((t_span[k + 1] - t_span[k]).item())
        steps.append(consts)
    return steps


class FlowGraph:
    def __init__(self, mb, flow, layers: Layers):
        self.mb, self.flow, self.L = mb, flow, layers

    def heads(self, x, n_heads: int, length: int):
        """(B, H*dk, 1, L) -> (B, H, dk, L): a free reshape in this layout."""
        return self.mb.reshape(x=x, shape=[x.shape[0], n_heads, x.shape[1] // n_heads, length])

    def merge(self, x, length: int):
        return self.mb.reshape(x=x, shape=[x.shape[0], x.shape[1] * x.shape[2], 1, length])

    # --- encoder ---------------------------------------------------------------------------
    def embed(self, x, module, path: str, length: int):
        """LinearNoSubsampling: linear -> norm -> x sqrt(d); returns x and the (1, d, 1, 2L-1) positions."""
        mb, L = self.mb, self.L
        x = L.layer_norm(L.linear(x, module.out[0], f"{path}.out.0"), module.out[1])
        x = mb.mul(x=x, y=L.const(np.float32(module.xscale)))
        pos = np.array(rel_positions(length, module.dim))[0].T[None, :, None, :]  # (1, d, 1, 2L-1)
        return x, mb.const(val=L.const(pos))  # one const, shared by every layer's linear_pos

    def rel_attention(self, x, pos, attn, path: str, length: int):
        """ESPnet relative-position attention (conformer.py) with the pad/reshape rel_shift."""
        mb, L, T = self.mb, self.L, length
        H, dk = attn.h, attn.d_k
        scale = np.float32(1.0 / math.sqrt(dk))
        q = L.linear(x, attn.linear_q, f"{path}.linear_q")
        k = self.heads(L.linear(x, attn.linear_k, f"{path}.linear_k"), H, T)
        v = self.heads(L.linear(x, attn.linear_v, f"{path}.linear_v"), H, T)
        p = self.heads(L.linear(pos, attn.linear_pos, f"{path}.linear_pos"), H, 2 * T - 1)
        # Scaling q first keeps fp16 scores small; (q + u) k s + (q + v) p s as in the fused kernel.
        biased = lambda bias: mb.mul(x=mb.add(x=q, y=L.channel_const(np.array(bias).reshape(-1))),  # noqa: E731
                                     y=L.const(scale))
        q_u, q_v = self.heads(biased(attn.pos_bias_u), H, T), self.heads(biased(attn.pos_bias_v), H, T)
        ac = mb.matmul(x=q_u, y=k, transpose_x=True)  # (B, H, T, T)
        bd = mb.matmul(x=q_v, y=p, transpose_x=True)  # (B, H, T, 2T-1)
        bd = L.pad_time(bd, 1, 0)  # rel_shift: out[i, j] = bd[i, T-1-i+j]
        B = bd.shape[0]
        bd = mb.slice_by_index(x=mb.reshape(x=bd, shape=[B, H, 2 * T, T]), begin=[0, 0, 1, 0], end=[B, H, 2 * T, T])
        bd = mb.slice_by_index(x=mb.reshape(x=bd, shape=[B, H, T, 2 * T - 1]), begin=[0, 0, 0, 0], end=[B, H, T, T])
        w = L.softmax(mb.add(x=ac, y=bd))
        out = self.merge(mb.matmul(x=v, y=w, transpose_y=True), T)  # (B, H, dk, T) -> (B, C, 1, T)
        return L.linear(out, attn.linear_out, f"{path}.linear_out")

    def conformer_layer(self, x, pos, layer, path: str, length: int):
        mb, L = self.mb, self.L
        x = mb.add(x=x, y=self.rel_attention(L.layer_norm(x, layer.norm_mha), pos, layer.self_attn,
                                             f"{path}.self_attn", length))
        ff = layer.feed_forward
        h = mb.silu(x=L.linear(L.layer_norm(x, layer.norm_ff), ff.w_1, f"{path}.feed_forward.w_1"))
        return mb.add(x=x, y=L.linear(h, ff.w_2, f"{path}.feed_forward.w_2"))

    def encoder(self, tokens, W: int):
        """tokens (1, W) -> mu (1, 80, 1, 2W)."""
        mb, L, flow = self.mb, self.L, self.flow
        enc, p = flow.encoder, "flow.encoder"
        table = L.matrix(flow.input_embedding, "flow.input_embedding", rank4=False)
        x = mb.gather(x=table, indices=mb.squeeze(x=tokens, axes=[0]), axis=0)  # (W, C)
        x = mb.expand_dims(x=mb.transpose(x=x, perm=[1, 0]), axes=[0, 2])  # (1, C, 1, W)
        x, pos = self.embed(x, enc.embed, f"{p}.embed", W)
        look = enc.pre_lookahead_layer
        y = mb.leaky_relu(x=L.conv(x, look.conv1, pad=(0, look.lookahead)), alpha=LOOKAHEAD_SLOPE)
        x = mb.add(x=L.conv(y, look.conv2, pad=(2, 0)), y=x)
        for i, layer in enumerate(enc.encoders):
            x = self.conformer_layer(x, pos, layer, f"{p}.encoders.{i}", W)
        s = enc.up_layer.stride
        C = x.shape[1]
        x = mb.reshape(x=mb.tile(x=mb.reshape(x=x, shape=[1, C, W, 1]), reps=[1, 1, 1, s]), shape=[1, C, 1, s * W])
        x = L.conv(x, enc.up_layer.conv, pad=(2 * s, 0))  # nearest x2, then a causal conv
        T = s * W
        x, pos = self.embed(x, enc.up_embed, f"{p}.up_embed", T)
        for i, layer in enumerate(enc.up_encoders):
            x = self.conformer_layer(x, pos, layer, f"{p}.up_encoders.{i}", T)
        x = L.layer_norm(x, enc.after_norm)
        return L.linear(x, flow.encoder_proj, "flow.encoder_proj")

    # --- CFM estimator ---------------------------------------------------------------------
    def mish(self, x):
        mb = self.mb
        return mb.mul(x=x, y=mb.tanh(x=mb.softplus(x=x)))

    def causal_block(self, x, block):
        conv, norm = block.block[0], block.block[2]
        return self.mish(self.L.layer_norm(self.L.conv(x, conv, pad=(conv.causal_padding, 0)), norm))

    def resnet(self, x, block, t_proj):
        mb, L = self.mb, self.L
        h = mb.add(x=self.causal_block(x, block.block1), y=L.channel_const(t_proj))
        return mb.add(x=self.causal_block(h, block.block2), y=L.conv(x, block.res_conv))

    def transformer(self, x, block, path: str, T: int):
        mb, L = self.mb, self.L
        attn = block.attn1
        h = L.layer_norm(x, block.norm1)
        q = self.heads(mb.mul(x=L.linear(h, attn.to_q, f"{path}.attn1.to_q"), y=L.const(np.float32(attn.scale))),
                       attn.heads, T)
        k = self.heads(L.linear(h, attn.to_k, f"{path}.attn1.to_k"), attn.heads, T)
        v = self.heads(L.linear(h, attn.to_v, f"{path}.attn1.to_v"), attn.heads, T)
        w = L.softmax(mb.matmul(x=q, y=k, transpose_x=True))
        out = self.merge(mb.matmul(x=v, y=w, transpose_y=True), T)
        x = mb.add(x=x, y=L.linear(out, attn.to_out[0], f"{path}.attn1.to_out.0"))
        h = L.layer_norm(x, block.norm3)
        ff = block.ff.net
        h = mb.gelu(x=L.linear(h, ff[0].proj, f"{path}.ff.net.0.proj"), mode="EXACT")
        return mb.add(x=x, y=L.linear(h, ff[2], f"{path}.ff.net.2"))

    def estimator(self, x, consts: Dict[str, np.ndarray], T: int):
        """v(x, t) for the CFG rows (or meanflow's one row): x (B, 320, 1, T) holds [x | mu | spks | cond]."""
        mb, L = self.mb, self.L
        est, p = self.flow.decoder.estimator, "flow.decoder.estimator"

        def run(stage, name, x):
            x = self.resnet(x, stage[0], consts[name])
            for j, block in enumerate(stage[1]):
                x = self.transformer(x, block, f"{p}.{name}.1.{j}", T)
            return x

        skips = []
        for i, down in enumerate(est.down_blocks):
            x = run(down, f"down_blocks.{i}", x)
            skips.append(x)
            x = L.conv(x, down[2], pad=(down[2].causal_padding, 0))
        for i, mid in enumerate(est.mid_blocks):
            x = run(mid, f"mid_blocks.{i}", x)
        for i, up in enumerate(est.up_blocks):
            x = run(up, f"up_blocks.{i}", mb.concat(values=[x, skips.pop()], axis=1))  # equal lengths here
            x = L.conv(x, up[2], pad=(up[2].causal_padding, 0))
        return L.conv(self.causal_block(x, est.final_block), est.final_proj)


def _program(flow, frames: int, n_timesteps: int, target: str):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    cfg = flow.cfg
    W, n_mels = frames // cfg.token_mel_ratio, cfg.output_size
    gpu = target == "gpu"
    specs = {"tokens": mb.TensorSpec((1, W), dtype=types.int32),
             "cond": mb.TensorSpec((1, n_mels, frames), dtype=types.fp16),
             "embedding": mb.TensorSpec((1, cfg.spk_embed_dim), dtype=types.fp32),
             "noise": mb.TensorSpec((1, n_mels, frames), dtype=types.fp32)}
    steps = step_constants(flow, n_timesteps)
    w = float(flow.decoder.inference_cfg_rate)
    cfg_batch = not flow.decoder.meanflow  # meanflow was distilled with CFG folded in: batch 1
    with Function(specs, opset_version=ct.target.iOS18) as func:
        a = func.inputs
        L = Layers(mb, "fp16", fp32_islands=gpu, blockwise=gpu)
        g = FlowGraph(mb, flow, L)
        mu = g.encoder(a["tokens"], W)  # (1, 80, 1, T)
        island = "fp32" if gpu else "fp16"
        e = L.cast(a["embedding"], island)
        norm = mb.sqrt(x=mb.reduce_sum(x=mb.mul(x=e, y=e), axes=[1], keep_dims=True))
        e = mb.real_div(x=e, y=mb.maximum(x=norm, y=L.const(np.float32(NORMALIZE_EPS), island)))
        spk = flow.spk_embed_affine_layer
        spks = mb.linear(x=L.cast(e, "fp16"), weight=L.matrix(spk, "flow.spk_embed_affine_layer", rank4=False),
                         bias=L.bias(spk))  # (1, 80)
        spks = mb.tile(x=mb.reshape(x=spks, shape=[1, n_mels, 1, 1]), reps=[1, 1, 1, frames])
        cond = mb.expand_dims(x=a["cond"], axes=[2])
        static = mb.concat(values=[mu, spks, cond], axis=1)  # (1, 240, 1, T)
        if cfg_batch:
            static = mb.concat(values=[static, np.zeros((1, 3 * n_mels, 1, frames), np.float16)], axis=0)  # CFG row
        x = mb.expand_dims(x=L.cast(a["noise"], island), axes=[2])  # the Euler state
        for consts in steps:
            x16 = L.cast(x, "fp16")
            xs = mb.concat(values=[x16, x16], axis=0) if cfg_batch else x16
            h = mb.concat(values=[xs, static], axis=1)  # (B, 320, 1, T)
            v = L.cast(g.estimator(h, consts, frames), island)
            if not cfg_batch:
                x = mb.add(x=x, y=mb.mul(x=v, y=L.const(np.float32(consts["dt"]), island)))
                continue
            v_c = mb.slice_by_index(x=v, begin=[0, 0, 0, 0], end=[1, n_mels, 1, frames])
            v_u = mb.slice_by_index(x=v, begin=[1, 0, 0, 0], end=[2, n_mels, 1, frames])
            guided = mb.sub(x=mb.mul(x=v_c, y=L.const(np.float32(1.0 + w), island)),
                            y=mb.mul(x=v_u, y=L.const(np.float32(w), island)))
            x = mb.add(x=x, y=mb.mul(x=guided, y=L.const(np.float32(consts["dt"]), island)))
        mel = mb.cast(x=mb.squeeze(x=x, axes=[2]), dtype="fp32", name="mel")
        func.set_outputs([mel])
    prog = Program()
    prog.add_function(FUNCTION, func)
    return prog


def check_frames(flow, frames: int) -> None:
    ratio = flow.cfg.token_mel_ratio
    if frames <= 0 or frames % ratio:
        raise FlowExportError(f"chunk frames must be a positive multiple of {ratio} (2 mel frames per token), "
                              f"got {frames}")
    if frames // ratio <= flow.cfg.pre_lookahead_len:
        raise FlowExportError(f"a chunk of {frames} frames holds only {frames // ratio} tokens; it needs more than "
                              f"the {flow.cfg.pre_lookahead_len} lookahead tokens")


def build_flow_package(flow, out_path, frames: int, target: str = "gpu", n_timesteps=None) -> dict:
    """Writes flow.mlpackage for chunks of `frames` mel frames; returns its manifest entry."""
    import coremltools as ct

    check_frames(flow, frames)
    n = flow.cfg.n_timesteps if n_timesteps is None else int(n_timesteps)
    if n < 1:
        raise FlowExportError(f"n_timesteps must be >= 1, got {n}")
    prog = _program(flow, frames, n, target)
    save_program(prog, out_path)
    W, M = frames // flow.cfg.token_mel_ratio, flow.cfg.output_size
    return {
        "inputs": {"tokens": [[1, W], "int32"], "cond": [[1, M, frames], "fp16"],
                   "embedding": [[1, flow.cfg.spk_embed_dim], "fp32"], "noise": [[1, M, frames], "fp32"]},
        "outputs": {"mel": [[1, M, frames], "fp32"]},
        "chunk_tokens": W, "chunk_frames": frames, "n_timesteps": n,
        "cfg_rate": 0.0 if flow.decoder.meanflow else float(flow.decoder.inference_cfg_rate),
        "meanflow": bool(flow.decoder.meanflow), "lookahead_tokens": flow.cfg.pre_lookahead_len,
    }
