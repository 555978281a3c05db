"""Opt-in tiers: live parity against the reference env (-m reference) and full-size conversion (-m slow)."""

import subprocess
import sys

import pytest


@pytest.mark.reference
@pytest.mark.parametrize("size", ["tiny", "full"])
def test_live_t3_parity(size):
    variants = ["--variant", "mtl-v2", "--variant", "en"] if size == "tiny" else ["--variant", "mtl-v2"]
    run = subprocess.run(
        [sys.executable, "-m", "tests.reference.parity", "--component", "t3", "--size", size, *variants],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


@pytest.mark.slow
def test_full_size_t3_converts_and_loads_strictly(tmp_path):
    import mlx.core as mx
    from safetensors.numpy import save_file

    from convert.convert import convert
    from nightingale_mlx.config import T3Config
    from nightingale_mlx.model_io import load_t3
    from tests.reference.weights import random_state_dict

    cfg = T3Config()
    D, V = cfg.hidden_size, cfg.speech_vocab_size
    spec = [("tfmr.embed_tokens.weight", (8, D)), ("tfmr.norm.weight", (D,)),
            ("text_emb.weight", (2454, D)), ("speech_emb.weight", (V, D)),
            ("text_pos_emb.emb.weight", (2050, D)), ("speech_pos_emb.emb.weight", (4100, D)),
            ("text_head.weight", (2454, D)), ("speech_head.weight", (V, D)),
            ("cond_enc.spkr_enc.weight", (D, 256)), ("cond_enc.spkr_enc.bias", (D,)),
            ("cond_enc.emotion_adv_fc.weight", (D, 1)),
            ("cond_enc.perceiver.pre_attention_query", (1, 32, D)),
            ("cond_enc.perceiver.attn.norm.weight", (D,)), ("cond_enc.perceiver.attn.norm.bias", (D,))]
    spec += [(f"cond_enc.perceiver.attn.{m}.{p}", (D, D) if p == "weight" else (D,))
             for m in ("to_q", "to_k", "to_v", "proj_out") for p in ("weight", "bias")]
    for i in range(cfg.num_hidden_layers):
        pre = f"tfmr.layers.{i}"
        spec += [(f"{pre}.self_attn.{m}_proj.weight", (D, D)) for m in "qkvo"]
        spec += [(f"{pre}.mlp.gate_proj.weight", (4096, D)), (f"{pre}.mlp.up_proj.weight", (4096, D)),
                 (f"{pre}.mlp.down_proj.weight", (D, 4096)), (f"{pre}.input_layernorm.weight", (D,)),
                 (f"{pre}.post_attention_layernorm.weight", (D,))]
    assert len(spec) == 292  # spec §3.8
    state = random_state_dict(spec, seed=0)
    assert sum(v.size for v in state.values()) == 535_989_248
    save_file(state, str(tmp_path / "t3_mtl23ls_v2.safetensors"))
    del state
    out = convert(tmp_path, tmp_path / "model", components=["t3"])
    model, config = load_t3(out)
    assert config.variant == "mtl-v2" and config.t3.num_hidden_layers == 30
    cond = model.condition(mx.ones((1, 256)) / 16, None, 0.5)
    assert cond.shape == (1, 2, 1024)
