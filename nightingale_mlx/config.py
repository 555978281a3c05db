"""Configuration: one dataclass per component, and the named constants of the reference.

A converted model dir stores these in `config.json`; `from_dict` ignores unknown keys so that
older runtimes can read newer configs.
"""

import inspect
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

# Speech-token arithmetic shared by every stage (spec §0).
SPEECH_VOCAB_SIZE = 6561  # real S3 codes are 0..6560 (3^8)
SPEECH_TOKENS_PER_SECOND = 25  # S3 tokens per second of speech
START_SPEECH_TOKEN = 6561
STOP_SPEECH_TOKEN = 6562
START_TEXT_TOKEN = 255
STOP_TEXT_TOKEN = 0
MULTILINGUAL_TEXT_VOCAB = 2454
ENGLISH_TEXT_VOCAB = 704

VARIANTS = ("en", "mtl-v2", "mtl-v3", "turbo", "nano")
T3_CHECKPOINT_FILES = {
    "en": "t3_cfg.safetensors",
    "mtl-v2": "t3_mtl23ls_v2.safetensors",
    "mtl-v3": "t3_mtl23ls_v3.safetensors",
    "turbo": "t3_turbo_v1.safetensors",
    "nano": "t3_nano_v1.safetensors",
}
# Turbo and Nano: a GPT-2 T3 without CFG, the meanflow S3Gen, the GPT-2 BPE tokenizer (tts_turbo.py).
TURBO_VARIANTS = ("turbo", "nano")
TURBO_TEXT_VOCAB = 50276  # GPT-2's 50257 + Chatterbox's added tokens ([laugh], [sigh], ...)
TURBO_SPEECH_VOCAB = 6563  # 6561 codes + start + stop
TURBO_PROMPT_TOKENS = 375  # T3's voice prompt: 15 s at 25 tokens/s (tts_turbo)
S3GEN_SILENCE_TOKEN = 4299  # S3GEN_SIL: tts_turbo.generate appends three after T3's tokens
TURBO_SILENCE_TOKENS = 3

# The reference's (layer, head) pairs whose attention tracks text position (0.1.7 analyzer).
LLAMA_ALIGNED_HEADS = ((12, 15), (13, 11), (9, 2))

LLAMA3_ROPE_SCALING = {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


class BaseConfig:
    @classmethod
    def from_dict(cls, params: dict):
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class T3Config(BaseConfig):
    """T3: the Llama-520M backbone (or Turbo/Nano's GPT-2) plus Chatterbox's embeddings, heads and
    conditioning encoder. The defaults are the Llama T3's; the converter reads sizes off the tensors."""

    hidden_size: int = 1024
    num_hidden_layers: int = 30
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict = field(default_factory=lambda: dict(LLAMA3_ROPE_SCALING))
    max_position_embeddings: int = 131072
    text_vocab_size: int = MULTILINGUAL_TEXT_VOCAB
    speech_vocab_size: int = 8194
    start_text_token: int = START_TEXT_TOKEN
    stop_text_token: int = STOP_TEXT_TOKEN
    start_speech_token: int = START_SPEECH_TOKEN
    stop_speech_token: int = STOP_SPEECH_TOKEN
    max_text_tokens: int = 2048
    max_speech_tokens: int = 4096
    speaker_embed_size: int = 256
    speech_cond_prompt_len: int = 150
    perceiver_queries: int = 32
    perceiver_heads: int = 4
    alignment_heads: List[Tuple[int, int]] = field(
        default_factory=lambda: [list(p) for p in LLAMA_ALIGNED_HEADS]
    )
    # Turbo/Nano (GPT-2) differences, each named after what it does; the defaults are the Llama T3's.
    backbone: str = "llama"  # "llama" (mlx-lm Llama, RoPE) or "gpt2" (mlx-lm GPT-2, learned wpe)
    max_positions: int = 8196  # GPT-2 wpe rows (n_positions)
    layer_norm_eps: float = 1e-5  # GPT-2 LayerNorms
    learned_input_pos: bool = True  # T3's own text/speech position embeddings (input_pos_emb="learned")
    use_perceiver: bool = True  # the prompt goes through the perceiver (else its raw embeddings)
    emotion_adv: bool = True  # the exaggeration token ends the conditioning
    speech_head_bias: bool = False
    repeat_bos: bool = True  # `inference` feeds BOS twice; `inference_turbo` once
    bos_always_penalised: bool = True  # turbo: BOS is in the penalty history of the first step only
    prefill_token_stops: bool = True  # turbo: an EOS sampled from the prefill does not end generation

    @property
    def is_multilingual(self) -> bool:
        # The reference keys multilingual behaviour (analyzer, language tags) on the vocab size.
        return self.text_vocab_size == MULTILINGUAL_TEXT_VOCAB

    @property
    def is_gpt2(self) -> bool:
        return self.backbone == "gpt2"

    @property
    def cond_len(self) -> int:
        """speaker | perceiver | emotion (the Llama T3's fixed length; a GPT-2 T3's grows with the prompt)."""
        return 1 + self.perceiver_queries + 1

    def gpt2_args(self) -> dict:
        return dict(
            model_type="gpt2",
            n_ctx=self.max_positions,
            n_embd=self.hidden_size,
            n_head=self.num_attention_heads,
            n_layer=self.num_hidden_layers,
            n_positions=self.max_positions,
            layer_norm_epsilon=self.layer_norm_eps,
            vocab_size=8,  # unused: T3 feeds its own input embeddings (the reference deletes wte)
        )

    def llama_args(self) -> dict:
        return dict(
            model_type="llama",
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            vocab_size=8,  # unused: T3 feeds its own input embeddings
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
        )


@dataclass
class Profile(BaseConfig):
    """Behaviour profile (DESIGN §3): which reference release the defaults follow."""

    name: str
    alignment_analyzer: bool  # for multilingual variants only
    repetition_penalty: float
    drop_last_token: bool


PROFILES = {
    "upstream": Profile("upstream", alignment_analyzer=False, repetition_penalty=1.2, drop_last_token=True),
    "compat-0.1.7": Profile(
        "compat-0.1.7", alignment_analyzer=True, repetition_penalty=2.0, drop_last_token=False
    ),
}
DEFAULT_PROFILE = "upstream"


@dataclass
class ModelConfig(BaseConfig):
    """The whole converted model: `config.json` in a converted model dir."""

    variant: str
    profile: str = DEFAULT_PROFILE
    t3: T3Config = field(default_factory=T3Config)
    quantization: Optional[dict] = None
    # Sections owned by other components, parsed by them; None when not converted.
    s3gen: Optional[dict] = None
    cloning: Optional[dict] = None
    text: Optional[dict] = None
    format_version: str = "1"

    @property
    def is_turbo(self) -> bool:
        """Turbo and Nano: GPT-2 T3 sampling, meanflow S3Gen, 15 s loudness-normalised voices."""
        return self.variant in TURBO_VARIANTS

    @property
    def voice_family(self) -> str:
        """Which voices this model takes (voice.VOICE_FAMILIES)."""
        return "turbo" if self.is_turbo else "standard"

    def __post_init__(self):
        if isinstance(self.t3, dict):
            self.t3 = T3Config.from_dict(self.t3)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")


@dataclass
class FlowConfig(BaseConfig):
    """S3Gen's token-to-mel half: token embedding, conformer encoder, CFM with a U-Net estimator."""

    vocab_size: int = SPEECH_VOCAB_SIZE
    input_size: int = 512  # token embedding width
    output_size: int = 80  # mel channels; also the projected speaker embedding
    spk_embed_dim: int = 192  # CAMPPlus x-vector
    token_mel_ratio: int = 2  # 25 tokens/s -> 50 mel frames/s
    pre_lookahead_len: int = 3
    encoder_size: int = 512
    encoder_heads: int = 8
    encoder_linear_units: int = 2048
    encoder_blocks: int = 6  # before the x2 upsample
    encoder_up_blocks: int = 4  # after it
    decoder_channels: List[int] = field(default_factory=lambda: [256])
    decoder_heads: int = 8
    decoder_head_dim: int = 64
    decoder_blocks: int = 4  # transformer blocks per U-Net stage
    decoder_mid_blocks: int = 12
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    meanflow: bool = False  # Turbo's distilled decoder: time mixer over (t, r), 2 plain Euler steps, no CFG

    @property
    def decoder_in_channels(self) -> int:
        return 4 * self.output_size  # x | mu | speaker | cond

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.decoder_channels[0]


@dataclass
class HiFTConfig(BaseConfig):
    """HiFT vocoder (S3Gen `mel2wav`): F0 predictor, NSF source, HiFi-GAN upsampler, iSTFT head."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8  # harmonics above the fundamental: 9 sines in all
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1  # sine amplitude
    nsf_sigma: float = 0.003  # noise std in voiced regions
    nsf_voiced_threshold: float = 10.0  # Hz
    upsample_rates: List[int] = field(default_factory=lambda: [8, 5, 3])
    upsample_kernel_sizes: List[int] = field(default_factory=lambda: [16, 11, 7])
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: List[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: List[List[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    source_resblock_kernel_sizes: List[int] = field(default_factory=lambda: [7, 7, 11])
    source_resblock_dilation_sizes: List[List[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    lrelu_slope: float = 0.1  # the final leaky_relu uses torch's default 0.01 instead
    audio_limit: float = 0.99
    f0_cond_channels: int = 512  # ConvRNNF0Predictor conv width
    f0_num_convs: int = 5

    @property
    def upsample_factor(self) -> int:
        """Output samples per mel frame (480 for the real model)."""
        factor = self.istft_hop
        for r in self.upsample_rates:
            factor *= r
        return factor


# Voice cloning front end (spec §1.1, §4, §5.1-§5.4): rates and crops of prepare_conditionals.
S3_SR = 16000  # VoiceEncoder, S3 tokenizer and CAMPPlus input rate
S3GEN_SR = 24000  # S3Gen reference mel rate (and output rate)
ENC_COND_SECONDS = 6  # T3 prompt-token audio (ENC_COND_LEN = 96 000 @16k)
DEC_COND_SECONDS = 10  # S3Gen reference audio (DEC_COND_LEN = 240 000 @24k)
VE_MAX_SECONDS = 60  # our bound on the voice encoder's input (the reference takes the full clip)
MIN_VOICE_SECONDS = 1.0


@dataclass
class VoiceEncoderConfig(BaseConfig):
    """The 3-layer LSTM speaker encoder that conditions T3 (spec §4)."""

    num_mels: int = 40
    hidden_size: int = 256
    num_layers: int = 3
    embed_size: int = 256
    partial_frames: int = 160
    frame_step: int = 77  # round((16000 / rate 1.3) / 160)
    min_coverage: float = 0.8
    trim_top_db: float = 20.0


@dataclass
class S3TokenizerConfig(BaseConfig):
    """S3TokenizerV2 (spec §5.1); the head dim is fixed at 64 by its RoPE table."""

    n_mels: int = 128
    n_state: int = 1280
    n_head: int = 20
    n_layer: int = 6
    fsmn_kernel: int = 31
    rope_theta: float = 10000.0


@dataclass
class CAMPPlusConfig(BaseConfig):
    """CAMPPlus x-vector (spec §5.2). Dense-block depths are the reference's literals."""

    feat_dim: int = 80
    embedding_size: int = 192
    m_channels: int = 32
    init_channels: int = 128
    growth_rate: int = 32
    bn_channels: int = 128
    block_layers: List[int] = field(default_factory=lambda: [12, 24, 16])
    block_dilations: List[int] = field(default_factory=lambda: [1, 2, 2])


@dataclass
class CloningConfig(BaseConfig):
    """The cloning models (`cloning.safetensors`): voice encoder, S3 tokenizer, CAMPPlus."""

    voice_encoder: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig)
    s3_tokenizer: S3TokenizerConfig = field(default_factory=S3TokenizerConfig)
    campplus: CAMPPlusConfig = field(default_factory=CAMPPlusConfig)

    def __post_init__(self):
        for name, cls in (("voice_encoder", VoiceEncoderConfig), ("s3_tokenizer", S3TokenizerConfig),
                          ("campplus", CAMPPlusConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls.from_dict(getattr(self, name)))


# Text front end (spec §2): the tokenizer kinds and the multilingual preprocessing paths.
TEXT_KINDS = ("mtl", "en", "gpt2")
TEXT_PREPROC = ("v2", "nfkd_fullcase")  # "v2" = reference HEAD (also for v3); see text/tokenizer.py


@dataclass
class TextConfig(BaseConfig):
    """The `text` section of config.json: tokenizer file, kind and preprocessing path."""

    tokenizer: str
    kind: str = "mtl"  # "mtl", "en" or "gpt2" (Turbo/Nano)
    text_preproc: Optional[str] = "v2"  # None for the English tokenizer
    cangjie: Optional[str] = None  # the zh table's file name in the model dir, when converted
