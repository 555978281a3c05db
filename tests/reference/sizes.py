"""Model sizes for test checkpoints, shared by the reference env and ours (plain Python, no imports).

`full` is the real architecture. `tiny` keeps every structural feature (the real vocabularies,
llama3 RoPE at head_dim 64, the perceiver's 32 queries and 4 heads, three analyzer heads) at a
width and depth that keep CI parity fast.
"""

TINY_T3 = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=64,
)
# Turbo's GPT2_medium at tiny size, and Nano's GPT-2 small (its reference config is added by
# patches.add_nano_config) smaller still: the converter must read every size off the tensors.
TINY_GPT2 = {"turbo": dict(n_embd=128, hidden_size=128, n_head=2, n_layer=4),
             "nano": dict(n_embd=64, hidden_size=64, n_head=1, n_layer=2)}
# (layer, head) pairs standing in for the real (12, 15), (13, 11), (9, 2) at tiny depth.
TINY_ALIGNED_HEADS = [(3, 1), (2, 0), (1, 1)]

# S3Gen at tiny size. Kept as in the real model (tied to the audio format or to the interfaces
# between components): 80 mels, 6561 codes, 24 kHz, HiFT rates 8/5/3 with kernels 16/11/7,
# iSTFT 16/4, 8 harmonics, the 192-d x-vector, the CFM input of 4 x 80 channels, the four
# up-encoders and the CAMPPlus dense-block depths (both hard-coded in loops no patch touches).
TINY_FLOW = dict(
    width=64,  # token embedding, conformer width, pre-lookahead and upsample convs (real 512)
    attention_heads=2,  # head dim 32 (real 8 x 64)
    linear_units=128,  # conformer FFN (real 2048)
    num_blocks=2,  # conformer blocks before the x2 upsample (real 6; the 4 after it stay)
)
TINY_DECODER = dict(  # CFM estimator U-Net
    channels=[64],  # real [256]
    attention_head_dim=64,  # kept: inner width 2 x 64 = 128 != 64 keeps to_q/to_out non-square
    num_heads=2,  # real 8
    n_blocks=2,  # transformer blocks per U-Net stage (real 4)
    num_mid_blocks=2,  # real 12
)
TINY_HIFT = dict(base_channels=64)  # 64 -> 32 -> 16 -> 8 (real 512)
TINY_F0 = dict(cond_channels=64)  # F0 predictor conv width (real 512)
TINY_CAMPPLUS = dict(init_channels=32, growth_rate=8)  # real 128 and 32
TINY_FCM_CHANNELS = 8  # CAMPPlus front-end Conv2d width (real 32) -> 80 channels into the TDNN
# S3TokenizerV2: head dim must stay 64 (its RoPE table is hard-coded at 64); 128 mels kept.
TINY_S3TOKENIZER = dict(n_audio_state=128, n_audio_head=2, n_audio_layer=2)  # real 1280, 20, 6
TINY_VE = dict(ve_hidden_size=64)  # LSTM width (real 256); 40 mels, 3 layers, 256-d output kept

SIZES = ("tiny", "full")


def t3_overrides(size: str) -> dict:
    """What our converter must be told beyond the tensor shapes (only the analyzer heads)."""
    if size == "tiny":
        return {"alignment_heads": [list(p) for p in TINY_ALIGNED_HEADS]}
    return {}
