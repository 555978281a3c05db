"""Configuration: one dataclass per component, and the named constants of the reference.

A converted model dir stores these in `config.json`; `from_dict` ignores unknown keys so that
older runtimes can read newer configs.
"""

import inspect
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Tuple

# Speech-token arithmetic shared by every stage (spec §0).
SPEECH_VOCAB_SIZE = 6561  # real S3 codes are 0..6560 (3^8)
START_SPEECH_TOKEN = 6561
STOP_SPEECH_TOKEN = 6562
START_TEXT_TOKEN = 255
STOP_TEXT_TOKEN = 0
MULTILINGUAL_TEXT_VOCAB = 2454
ENGLISH_TEXT_VOCAB = 704

VARIANTS = ("en", "mtl-v2", "mtl-v3")
T3_CHECKPOINT_FILES = {
    "en": "t3_cfg.safetensors",
    "mtl-v2": "t3_mtl23ls_v2.safetensors",
    "mtl-v3": "t3_mtl23ls_v3.safetensors",
}

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
    """T3: the Llama-520M backbone plus Chatterbox's embeddings, heads and conditioning encoder."""

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

    @property
    def is_multilingual(self) -> bool:
        # The reference keys multilingual behaviour (analyzer, language tags) on the vocab size.
        return self.text_vocab_size == MULTILINGUAL_TEXT_VOCAB

    @property
    def cond_len(self) -> int:
        return 1 + self.perceiver_queries + 1  # speaker | perceiver | emotion

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

    def __post_init__(self):
        if isinstance(self.t3, dict):
            self.t3 = T3Config.from_dict(self.t3)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; expected one of {', '.join(PROFILES)}")
