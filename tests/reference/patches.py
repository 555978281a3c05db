"""The only changes the harness makes to the reference (chatterbox-tts 0.1.7). Runs in the ref env.

Each patch changes sizes, file lookup or offline behaviour, never arithmetic:
- tiny sizes: the reference hard-codes the Llama_520M dims, the perceiver width (1024) and the
  analyzer's (layer, head) pairs; `S3Gen()` takes no size arguments at all (its sub-modules are
  built with literal widths, some of them, like the pre-lookahead conv's 512, inside other
  constructors), and the VoiceEncoder and S3TokenizerV2 read module-level default configs.
  Tiny checkpoints need all of them smaller; sizes.py says which numbers change.
- file lookup: `from_local` knows only the v2 T3 file name; `use_t3_file` points it at v3.
- offline resources: the multilingual tokenizer fetches the Cangjie table through the HF cache and
  spacy_pkuseg downloads its model on first use; `offline_resources` serves the first from the
  checkpoint folder and hides the second (the reference then skips segmentation itself).
- randomness capture: `torch.multinomial` is wrapped so the harness can record the processed
  distribution the reference samples from and choose the token (teacher forcing, greedy, or
  inverse-CDF sampling from shared uniforms). The distribution itself is untouched.
- output: `disable_watermark` makes Perth's watermark an identity (ours runs with `watermark=False`: both compare unmarked audio).
- recording: `recording_pipeline` wraps generate()'s T3, S3Gen and HiFT calls to record what
  each received and returned (the calls themselves are unchanged), and restores them afterwards.
- Turbo/Nano: 0.1.7 has no Nano; `add_nano_config` registers GPT-2 small (768 wide, 12 heads,
  12 layers, otherwise GPT2_medium's dict) as `GPT2_small`, and `use_turbo_t3` points
  `ChatterboxTurboTTS.from_local` at it and at `t3_nano_v1.safetensors`. Tiny sizes shrink both dicts.
  The meanflow noise `torch.randn(1, 80, 2N)` is injected like the CFM's (`install_meanflow_noise`).
"""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sizes  # noqa: E402
from sizes import TINY_ALIGNED_HEADS, TINY_T3  # noqa: E402

_applied = set()


def apply_sizes(size: str) -> None:
    if size == "full":
        return
    if size != "tiny":
        raise ValueError(f"unknown size {size!r}")
    if size in _applied:  # the S3Gen patches subclass; applying twice would stack them
        return
    _applied.add(size)
    _tiny_t3()
    _tiny_s3gen()
    _tiny_voice_encoder()
    _tiny_s3tokenizer()


NANO_CONFIG = "GPT2_small"
# GPT-2 small's sizes (general knowledge, not from 0.1.7, which has no Nano); the rest is GPT2_medium's.
GPT2_SMALL = dict(n_embd=768, hidden_size=768, n_head=12, n_layer=12)


def add_nano_config() -> None:
    """Registers Nano's GPT-2 small in the reference's config table (sizes only, no arithmetic)."""
    from chatterbox.models.t3 import llama_configs

    if NANO_CONFIG not in llama_configs.LLAMA_CONFIGS:
        llama_configs.LLAMA_CONFIGS[NANO_CONFIG] = {**llama_configs.GPT2_MEDIUM_CONFIG, **GPT2_SMALL}


def use_turbo_t3(variant: str) -> None:
    """ChatterboxTurboTTS.from_local hard-codes GPT2_medium and t3_turbo_v1; for Nano, use the
    GPT2_small config and t3_nano_v1.safetensors instead (file lookup and sizes only)."""
    if variant != "nano":
        return
    add_nano_config()
    from chatterbox import tts_turbo
    from chatterbox.models.t3 import t3 as t3_module

    load = tts_turbo.load_file

    def load_named(path, *args, **kwargs):
        path = Path(path)
        if path.name == "t3_turbo_v1.safetensors":
            path = path.with_name("t3_nano_v1.safetensors")
        return load(path, *args, **kwargs)

    tts_turbo.load_file = load_named
    T3 = t3_module.T3

    class NanoT3(T3):
        def __init__(self, hp=None):
            if hp is not None and hp.llama_config_name == "GPT2_medium":
                hp.llama_config_name = NANO_CONFIG
            super().__init__(hp)

    NanoT3.__name__ = NanoT3.__qualname__ = "T3"
    tts_turbo.T3 = NanoT3


def install_meanflow_noise(noise):
    """Randomness injection for the meanflow S3Gen: `flow_inference` draws the generated region's
    noise with `torch.randn(1, 80, 2N)`; this returns the last 2N frames of `noise` (the full
    (1, 80, T) start point, whose prompt part install_cfm_noise hands to randn_like)."""
    import chatterbox.models.s3gen.s3gen as s3gen_module
    import torch

    def randn(*shape, **kwargs):
        frames = shape[-1]
        return noise[..., noise.shape[-1] - frames:].clone().to(dtype=kwargs.get("dtype") or noise.dtype)

    class _TorchProxy:
        def __getattr__(self, name):
            return randn if name == "randn" else getattr(torch, name)

    s3gen_module.torch = _TorchProxy()


def _tiny_t3() -> None:
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.inference import alignment_stream_analyzer
    from chatterbox.models.t3.modules import perceiver

    llama_configs.LLAMA_520M_CONFIG_DICT.update(TINY_T3)
    add_nano_config()
    llama_configs.GPT2_MEDIUM_CONFIG.update(sizes.TINY_GPT2["turbo"])
    llama_configs.LLAMA_CONFIGS[NANO_CONFIG].update(sizes.TINY_GPT2["nano"])
    width = TINY_T3["hidden_size"]
    # Perceiver(pre_attention_query_token, pre_attention_query_size, embedding_dim, num_attn_heads)
    perceiver.Perceiver.__init__.__defaults__ = (32, width, width, 4)
    alignment_stream_analyzer.LLAMA_ALIGNED_HEADS[:] = TINY_ALIGNED_HEADS


def _with_sizes(cls, **forced):
    """A same-named subclass whose constructor overrides `forced` keyword arguments, whatever the
    caller passes; layers, attribute names (so state-dict keys) and forward code are inherited."""

    class Sized(cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, **forced})

    Sized.__name__ = Sized.__qualname__ = cls.__name__
    return Sized


def _set_defaults(func, **values):
    """Replaces keyword defaults of `func` in place, for constructors called without them."""
    code = func.__code__
    names = code.co_varnames[: code.co_argcount]
    defaults = list(func.__defaults__)
    first = len(names) - len(defaults)
    for name, value in values.items():
        defaults[names.index(name) - first] = value
    func.__defaults__ = tuple(defaults)


def _tiny_s3gen() -> None:
    from chatterbox.models.s3gen import s3gen, xvector
    from chatterbox.models.s3gen.transformer import upsample_encoder as ue

    w = sizes.TINY_FLOW["width"]
    enc = {k: v for k, v in sizes.TINY_FLOW.items() if k != "width"}
    # S3Token2Mel/S3Token2Wav.__init__ look these names up in the s3gen module at call time.
    s3gen.CausalMaskedDiffWithXvec = _with_sizes(s3gen.CausalMaskedDiffWithXvec, input_size=w)
    s3gen.UpsampleConformerEncoder = _with_sizes(
        s3gen.UpsampleConformerEncoder, input_size=w, output_size=w, **enc
    )
    s3gen.ConditionalDecoder = _with_sizes(s3gen.ConditionalDecoder, **sizes.TINY_DECODER)
    s3gen.HiFTGenerator = _with_sizes(s3gen.HiFTGenerator, **sizes.TINY_HIFT)
    s3gen.ConvRNNF0Predictor = _with_sizes(s3gen.ConvRNNF0Predictor, **sizes.TINY_F0)
    s3gen.CAMPPlus = _with_sizes(s3gen.CAMPPlus, **sizes.TINY_CAMPPLUS)
    # UpsampleConformerEncoder builds these two with a literal 512 instead of its output_size.
    ue.PreLookaheadLayer = _with_sizes(ue.PreLookaheadLayer, channels=w)
    ue.Upsample1D = _with_sizes(ue.Upsample1D, channels=w, out_channels=w)
    # CAMPPlus builds its FCM front end with the default m_channels (and FCM calls
    # super(FCM, self), so it cannot be swapped for a subclass in its own module).
    _set_defaults(xvector.FCM.__init__, m_channels=sizes.TINY_FCM_CHANNELS)


def _tiny_voice_encoder() -> None:
    from chatterbox.models.voice_encoder.config import VoiceEncConfig

    # VoiceEncoder() reads a default VoiceEncConfig instance, which sees class attributes.
    for name, value in sizes.TINY_VE.items():
        setattr(VoiceEncConfig, name, value)


def _tiny_s3tokenizer() -> None:
    from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

    # chatterbox's S3Tokenizer calls S3TokenizerV2.__init__(name) and so gets its default config.
    _set_defaults(S3TokenizerV2.__init__, config=ModelConfig(**sizes.TINY_S3TOKENIZER))


def use_t3_file(name: str) -> None:
    """ChatterboxMultilingualTTS.from_local hard-codes the v2 T3 file; load `name` instead (v3)."""
    from chatterbox import mtl_tts

    load = mtl_tts.load_safetensors

    def load_named(path, *args, **kwargs):
        path = Path(path)
        if path.name == "t3_mtl23ls_v2.safetensors":
            path = path.with_name(name)
        return load(path, *args, **kwargs)

    mtl_tts.load_safetensors = load_named


CANGJIE_FILE = "Cangjie5_TC.json"
HF_REPO_FOLDER = "models--ResembleAI--chatterbox"  # the HF cache folder of REPO_ID
HF_FAKE_COMMIT = "0" * 40  # any 40-hex revision; refs/main points at it


def offline_resources(ckpt_dir) -> None:
    """Lets MTLTokenizer / from_local run offline against a checkpoint folder.

    - The Cangjie table is read via hf_hub_download(REPO_ID, ..., cache_dir=<ckpt dir>), never from
      the folder itself: mirror <ckpt>/Cangjie5_TC.json into that cache layout and go offline.
    - spacy_pkuseg.pkuseg() downloads a model and raises a non-ImportError offline; hiding the
      module makes the reference take its own "segmentation skipped" path.
    """
    import os
    import shutil

    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # the flag is read at import time
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    sys.modules["spacy_pkuseg"] = None
    ckpt_dir = Path(ckpt_dir)
    table = ckpt_dir / CANGJIE_FILE
    if not table.exists():
        return  # English checkpoints have no table; the reference only warns when it is missing
    repo = ckpt_dir / HF_REPO_FOLDER
    snapshot = repo / "snapshots" / HF_FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HF_FAKE_COMMIT)
    shutil.copyfile(table, snapshot / CANGJIE_FILE)


class MultinomialSpy:
    """Stands in for torch.multinomial inside T3.inference: records probs, picks the token."""

    def __init__(self, choose, dtype="float32"):
        self.choose = choose  # (step, probs (V,) numpy) -> int
        self.dtype = dtype  # what is recorded: float32, or float64 for the float64 reference run
        self.probs = []

    def __call__(self, probs, num_samples=1):
        import torch

        p = probs[0].double().numpy()
        self.probs.append(probs[0].double().numpy().astype(self.dtype))
        token = int(self.choose(len(self.probs) - 1, p))
        return torch.tensor([[token]], dtype=torch.long)


def install_multinomial_spy(spy: MultinomialSpy):
    import chatterbox.models.t3.t3 as t3_module
    import torch

    class _TorchProxy:
        def __getattr__(self, name):
            return spy if name == "multinomial" else getattr(torch, name)

    t3_module.torch = _TorchProxy()


def install_logits_spy(record: list, dtype: str = "float32"):
    """Records each backbone call's last-row logits (both CFG rows) before any processing."""
    from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend

    original = T3HuggingfaceBackend.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        record.append(out.logits[:, -1, :].double().numpy().astype(dtype))
        return out

    T3HuggingfaceBackend.forward = forward


def install_cfm_noise(noise):
    """Randomness injection: CausalConditionalCFM.forward draws its start point with
    `torch.randn_like(mu)`; this hands it `noise` (a (B, 80, T) tensor) instead. Every other torch
    call in flow_matching.py goes through untouched."""
    import chatterbox.models.s3gen.flow_matching as fm
    import torch

    def randn_like(x, *args, **kwargs):
        if tuple(x.shape) != tuple(noise.shape):
            raise ValueError(f"injected CFM noise {tuple(noise.shape)} != mu {tuple(x.shape)}")
        return noise.clone().to(dtype=x.dtype, device=x.device)

    class _TorchProxy:
        def __getattr__(self, name):
            return randn_like if name == "randn_like" else getattr(torch, name)

    fm.torch = _TorchProxy()


@contextlib.contextmanager
def recording_pipeline(tts, t3_method: str = "inference"):
    """Yields a dict that fills in as generate() runs: T3's text ids and tokens (`t3_method`:
    `inference`, or `inference_turbo`), S3Gen's tokens (and `n_cfm_timesteps` where generate()
    passes it), the mel HiFT receives (1, T, 80)."""
    import numpy as np

    rec = {}
    t3_inference, s3gen_inference, hift_inference = (getattr(tts.t3, t3_method), tts.s3gen.inference,
                                                     tts.s3gen.hift_inference)

    def t3_spy(*a, **kw):
        rec["text_tokens"] = kw["text_tokens"][0].numpy().copy()
        out = t3_inference(*a, **kw)
        rec["tokens"] = out[0].numpy().copy()
        return out

    def s3gen_spy(*a, **kw):
        rec["s3gen_tokens"] = kw["speech_tokens"].reshape(-1).numpy().copy()
        if "n_cfm_timesteps" in kw:
            rec["n_cfm_timesteps"] = np.array(kw["n_cfm_timesteps"])
        return s3gen_inference(*a, **kw)

    def hift_spy(speech_feat, *a, **kw):
        rec["mel"] = speech_feat.float().numpy().transpose(0, 2, 1).copy()
        return hift_inference(speech_feat, *a, **kw)

    setattr(tts.t3, t3_method, t3_spy)
    tts.s3gen.inference, tts.s3gen.hift_inference = s3gen_spy, hift_spy
    try:
        yield rec
    finally:
        setattr(tts.t3, t3_method, t3_inference)
        tts.s3gen.inference, tts.s3gen.hift_inference = s3gen_inference, hift_inference


def install_hift_randomness(phases, noise):
    """Randomness injection for HiFT's source (hifigan.py): SineGen draws its start phases with
    `Uniform(-pi, pi).sample((B, 9, 1))` and its noise with `torch.randn_like(sine_waves)`; these
    return `phases` (B, 9, 1) and `noise` (B, 9, N) instead. SineGen still zeroes the fundamental's
    phase itself. SourceModuleHnNSF's own `randn_like(uv)` (a discarded output) keeps torch's RNG."""
    import chatterbox.models.s3gen.hifigan as hg
    import torch

    class _Uniform:
        def __init__(self, low, high):
            pass

        def sample(self, sample_shape):
            if tuple(sample_shape) != tuple(phases.shape):
                raise ValueError(f"injected phases {tuple(phases.shape)} != {tuple(sample_shape)}")
            return phases.clone()

    def randn_like(x, *args, **kwargs):
        if tuple(x.shape) == tuple(noise.shape):
            return noise.clone().to(dtype=x.dtype, device=x.device)
        if x.shape[1] == noise.shape[1]:  # a SineGen draw of another length: a harness bug
            raise ValueError(f"injected SineGen noise {tuple(noise.shape)} != {tuple(x.shape)}")
        return torch.randn_like(x, *args, **kwargs)

    class _TorchProxy:
        def __getattr__(self, name):
            return randn_like if name == "randn_like" else getattr(torch, name)

    hg.Uniform = _Uniform
    hg.torch = _TorchProxy()


def install_hift_f0(hift, f0):
    """F0 injection: HiFTGenerator.inference reads `self.f0_predictor(mel)`; this predictor returns
    `f0` (B, T) in Hz, so a voiced track drives the sine source while the rest runs unchanged."""
    import torch

    class _FixedF0(torch.nn.Module):
        def forward(self, mel):
            if mel.shape[-1] != f0.shape[-1]:
                raise ValueError(f"injected f0 has {f0.shape[-1]} frames, mel {mel.shape[-1]}")
            return f0.clone()

    hift.f0_predictor = _FixedF0()


class _NoWatermark:
    def apply_watermark(self, wav, sample_rate):
        return wav


def disable_watermark(tts) -> None:
    """Output patch: `generate()` ends with Perth's `apply_watermark`; an identity watermarker leaves
    the waveform the models computed, which ours gives with `generate(watermark=False)` (the mark
    has its own parity on its real weights: watermark_harness.py)."""
    tts.watermarker = _NoWatermark()


def allow_float64_masks() -> None:
    """Float64 runs only: the CFM decoder's `mask_to_bias` asserts a 16/32-bit dtype. This is the
    same expression, `(1 - mask) * -1e10` in the requested dtype, without that whitelist."""
    import chatterbox.models.s3gen.decoder as decoder
    import torch

    def mask_to_bias(mask, dtype):
        assert mask.dtype == torch.bool
        return (1.0 - mask.to(dtype)) * -1.0e10

    decoder.mask_to_bias = mask_to_bias
