"""`nightingale export-ios`: a converted model dir -> NAME.nightingale bundle for an iOS app.

Bundle layout:
    manifest.json             shapes, token ids, sampling, quantization, compute units, file hashes
    t3.mlpackage              stateful multifunction T3 (prefill_<T> + decode), blockwise int4/int8
                              (Llama with CFG rows, or Turbo/Nano's GPT-2 at batch 1)
    flow.mlpackage            S3Gen flow over a fixed chunk of tokens: encoder + 10 unrolled CFM steps -> mel
                              (Turbo/Nano: 2 meanflow steps, no CFG)
    hift_source.mlpackage     HiFT F0 + SineGen/NSF excitation + its STFT (fp32)
    hift_body.mlpackage       HiFT conv body (fp16)
    hift_tail.mlpackage       HiFT conv_post + exp/sin + iSTFT (fp32)
    t3_conditioning.safetensors   emotion_weight (D,): cond token 34 = exaggeration * emotion_weight (not Turbo/Nano)
    voices/NAME.safetensors   t3_cond (1, 33, D) fp16 (speaker + perceiver tokens) + S3Gen prompts
    tokenizer files           copied from the model dir, with the text section of config.json
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import mlx.core as mx

from nightingale_mlx import model_io
from nightingale_mlx.config import PROFILES
from nightingale_mlx.outputs import file_sha256
from nightingale_mlx.sampling import SamplingParams
from nightingale_mlx.streaming import StreamConfig

from .flow_package import build_flow_package
from .hift_package import build_hift_packages
from .t3_package import FUNCTION_DECODE, build_t3_package, decode_inputs, default_cond_slot, prefill_name

FORMAT = {"format": "nightingale-ios", "format_version": 1}
MANIFEST = "manifest.json"
T3_PACKAGE = "t3.mlpackage"
T3_CONDITIONING = "t3_conditioning.safetensors"
DEFAULT_CONTEXT = 1024
DEFAULT_TEXT_SLOTS = (64, 256)
TARGETS = ("gpu", "ane")
FLOW_PACKAGE = "flow.mlpackage"
# Chunk shapes from the MLX streamer's defaults: 25 new tokens (1 s) per chunk, 3 lookahead tokens.
STREAM_CHUNK_TOKENS = 25
_STREAM = StreamConfig()
DEFAULT_CHUNK_FRAMES = 2 * (_STREAM.context_tokens + STREAM_CHUNK_TOKENS + 3)  # 156: context + new + lookahead
DEFAULT_VOCODER_FRAMES = _STREAM.vocoder_context_frames + _STREAM.holdback_frames + 2 * STREAM_CHUNK_TOKENS  # 88
VOICE_S3GEN_FIELDS = ("gen_prompt_token", "gen_prompt_feat", "gen_embedding")
# The order and formulas the app must follow; the MLX runtime's sampling.py is the reference.
SAMPLING_STEPS = [
    "cfg: logits = cond + cfg_weight * (cond - uncond), rows 0 and 1 of the (2, V) fp32 logits",
    "repetition_penalty: for every token id seen so far (BOS included, once each): "
    "x < 0 ? x * penalty : x / penalty",
    "temperature: logits / temperature (skip when temperature is 1; temperature 0 = argmax)",
    "min_p: drop ids whose softmax probability < min_p * max probability",
    "top_p: sort ascending, drop the prefix whose cumulative probability <= 1 - top_p, keep >= 1 id",
    "sample: categorical over softmax(logits); stop at stop_speech_token (not emitted)",
]
# Turbo/Nano (inference_turbo): no CFG or min-p, warpers before the penalty.
TURBO_SAMPLING_STEPS = [
    "temperature: logits / temperature (skip when temperature is 1)",
    "top_k: keep ids whose logit >= the k-th largest (ties kept)",
    "top_p: sort ascending, drop the prefix whose cumulative probability <= 1 - top_p, keep >= 1 id",
    "repetition_penalty: for every generated token id (BOS too at the first step only): "
    "x < 0 ? x * penalty : x / penalty",
    "sample: categorical over softmax(logits); stop at stop_speech_token (not emitted) unless sampled "
    "from the prefill; then append silence_tokens x S3GEN silence token before the flow",
]


class ExportError(ValueError):
    """The bundle cannot be written as asked."""


def file_hashes(bundle: Path) -> dict:
    """sha256 of every file in the bundle except the manifest, by relative path."""
    return {str(p.relative_to(bundle)): file_sha256(p) for p in sorted(bundle.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def export_voices(t3, model_dir: Path, out: Path, cond_slot: int, config) -> list:
    """Bakes each voice's speaker + perceiver tokens (exaggeration-free) into the bundle; for GPT-2
    its speaker row + prompt-token embeddings (no emotion row), which must fit the prefill's cond slot."""
    from nightingale_mlx.voice import Voice, VoiceError

    names = []
    for path in sorted((model_dir / "voices").glob("*.safetensors")):
        voice = Voice.load(path)
        try:  # a standard voice's 150-token perceiver prompt is not a Turbo prompt, and the reverse
            voice.check_family(config.voice_family, config.variant)
        except VoiceError as e:
            raise ExportError(f"voice {path.stem}: {e}") from None
        cond = t3.condition(voice.speaker_emb, voice.prompt_tokens, 0.0)
        if t3.cfg.emotion_adv:
            cond = cond[:, : t3.cfg.cond_len - 1]  # the emotion row is added per request
        if cond.shape[1] > cond_slot:
            raise ExportError(f"voice {path.stem}: {cond.shape[1]} conditioning rows exceed the cond slot {cond_slot}")
        arrays = {"t3_cond": cond.astype(mx.float16)}
        arrays.update({k: getattr(voice, k) for k in VOICE_S3GEN_FIELDS})
        (out / "voices").mkdir(exist_ok=True)
        mx.save_safetensors(str(out / "voices" / path.name), arrays, metadata={"kind": "ios-voice"})
        names.append(path.stem)
    return names


def t3_manifest(t3, config, package_info: dict) -> dict:
    cfg = t3.cfg
    recipe = model_io.recipe_of(config)
    bits = recipe.bits["t3"]
    C, D, B = package_info["cond_slot"], cfg.hidden_size, package_info["batch"]
    nb = 2 if cfg.repeat_bos else 1
    logits = {"logits": [[B, cfg.speech_vocab_size], "fp32"]}
    functions = {FUNCTION_DECODE: {
        "inputs": {name: [1, "int32"] for name in decode_inputs(cfg)},
        "outputs": logits,
        "notes": "position = index of this token in the sequence (the KV slot it writes"
                 + ("; GPT-2's position embedding row)" if cfg.is_gpt2 else
                    "); speech_position = step + 1 for the token sampled at step (0-based)"),
    }}
    for T in package_info["text_slots"]:
        inputs = {"cond": [[1, C, D], "fp16"], "text_ids": [[1, T], "int32"], "text_len": [1, "int32"]}
        first = f"{C} + text_len + {nb}"
        if cfg.is_gpt2:
            inputs["cond_len"] = [1, "int32"]
            first = f"cond_len + text_len + {nb}"
        functions[prefill_name(T)] = {
            "inputs": inputs, "outputs": logits,
            "notes": f"text_ids = [SOT] + text + [EOT] padded to {T} with any id; text_len counts SOT/EOT; "
                     + ("cond = the voice's t3_cond rows padded to the cond slot, cond_len its rows; "
                        if cfg.is_gpt2 else "") + f"first decode position = {first}",
        }
    if cfg.is_gpt2:
        cond = {"length": C, "hidden_size": D, "layout": "voice t3_cond (speaker row + prompt-token embeddings), "
                f"zero-padded to {C} rows; cond_len = its row count", "emotion_row": None}
    else:
        cond = {"length": C, "hidden_size": D,
                "layout": "voice t3_cond (33 rows: speaker, 32 perceiver) + emotion row",
                "emotion_row": "fp16(fp16(exaggeration) * emotion_weight) from t3_conditioning.safetensors"}
    return {
        "package": T3_PACKAGE,
        "compute_units": "cpuAndGPU",  # blockwise int4/int8 is GPU-only (COREML_NOTES §0)
        "functions": functions,
        "default_function": FUNCTION_DECODE,
        "states": {"names": package_info["states"],
                   "shape": [B, cfg.num_attention_heads, package_info["context"], package_info["head_dim"]],
                   "dtype": "fp16",
                   "rows": "0 = conditioned, 1 = unconditioned (CFG)" if B == 2 else "one row: no CFG (GPT-2 T3)"},
        "context": package_info["context"],
        "text_slots": package_info["text_slots"],
        "cfg": B == 2,
        "bos_tokens": nb,
        "cond": cond,
        "tokens": {"start_text": cfg.start_text_token, "stop_text": cfg.stop_text_token,
                   "start_speech": cfg.start_speech_token, "stop_speech": cfg.stop_speech_token,
                   "speech_vocab_size": cfg.speech_vocab_size, "max_speech_tokens": cfg.max_speech_tokens},
        "quantization": {"bits": bits, "group_size": recipe.group_size,
                         "scheme": "constexpr_blockwise_shift_scale: uint codes and fp16 scales from MLX, "
                                   "fp32 offset = -bias/scale" if bits in (4, 8) else "fp16 weights"},
    }


def s3gen_manifest(s3gen, config, target: str, flow_info: dict, hift_info: dict) -> dict:
    recipe = model_io.recipe_of(config)
    bits = recipe.bits["flow"]
    blockwise = target == "gpu" and bits in (4, 8)
    flow = {
        "package": FLOW_PACKAGE,
        # Blockwise weights are GPU-only; the ANE build is fp16 throughout (COREML_NOTES §0).
        "compute_units": "cpuAndGPU" if target == "gpu" else "cpuAndNeuralEngine",
        "precision": "fp16 activations, fp32 layer norms / softmax / Euler state" if target == "gpu"
                     else "fp16 throughout",
        "quantization": {"bits": bits if blockwise else 16, "group_size": recipe.group_size if blockwise else None,
                         "scheme": "constexpr_blockwise_shift_scale from the MLX codes (as T3)" if blockwise
                         else "fp16 weights (MLX's dequantization where the source is quantized)"},
        **flow_info,
        "notes": "tokens: the last chunk_tokens of prompt|speech tokens (prompt tail while the window "
                 "overlaps it); cond: the prompt mel on the window's prompt frames, zeros after; "
                 "embedding: the voice's gen_embedding; noise: standard normal per absolute frame. "
                 "The newest 2 * lookahead_tokens frames are not settled until the stream ends.",
    }
    return {"flow": flow, "hift": hift_info, "sample_rate": hift_info["sample_rate"],
            "samples_per_frame": s3gen.mel2wav.cfg.upsample_factor, "frames_per_token": s3gen.flow.cfg.token_mel_ratio,
            "mel_channels": s3gen.flow.cfg.output_size,
            "streaming": {"chunk_tokens": STREAM_CHUNK_TOKENS, "context_tokens": _STREAM.context_tokens,
                          "vocoder_context_frames": _STREAM.vocoder_context_frames,
                          "holdback_frames": _STREAM.holdback_frames, "crossfade_samples": _STREAM.crossfade_samples},
            "voice_fields": list(VOICE_S3GEN_FIELDS)}


def check_chunk_args(chunk_frames, vocoder_frames) -> None:
    """Refuses bad chunk shapes before anything heavy is loaded."""
    if not isinstance(chunk_frames, int) or chunk_frames <= 0 or chunk_frames % 2:
        raise ExportError(f"--chunk-frames {chunk_frames}: must be a positive even number of mel frames "
                          f"(2 per token; default {DEFAULT_CHUNK_FRAMES})")
    if not isinstance(vocoder_frames, int) or vocoder_frames <= 0:
        raise ExportError(f"--vocoder-frames {vocoder_frames}: must be a positive number of mel frames "
                          f"(default {DEFAULT_VOCODER_FRAMES})")


def sampling_manifest(config) -> dict:
    if config.is_turbo:
        from nightingale_mlx.config import S3GEN_SILENCE_TOKEN, TURBO_SILENCE_TOKENS
        from nightingale_mlx.tts import TURBO_SAMPLING

        defaults = {k: v for k, v in TURBO_SAMPLING.items() if k not in ("cfg_weight", "min_p", "order")}
        return {"defaults": {**defaults, "max_new_tokens": SamplingParams().max_new_tokens},
                "steps": TURBO_SAMPLING_STEPS, "drop_last_token": False,
                "silence_tokens": TURBO_SILENCE_TOKENS, "silence_token": S3GEN_SILENCE_TOKEN}
    profile = PROFILES[config.profile]
    defaults = SamplingParams(repetition_penalty=profile.repetition_penalty)
    return {"defaults": {**{k: getattr(defaults, k) for k in
                            ("temperature", "cfg_weight", "repetition_penalty", "min_p", "top_p", "max_new_tokens")},
                         "exaggeration": 0.5},
            "steps": SAMPLING_STEPS,
            "drop_last_token": profile.drop_last_token}


def export_ios(model_dir, out, target: str = "gpu", context: int = DEFAULT_CONTEXT,
               text_slots: Sequence[int] = DEFAULT_TEXT_SLOTS, force: bool = False,
               chunk_frames: int = DEFAULT_CHUNK_FRAMES, vocoder_frames: int = DEFAULT_VOCODER_FRAMES,
               cond_slot: Optional[int] = None) -> Path:
    """Writes the bundle at `out` (staged in a temp dir, then moved into place). Returns its path.

    `chunk_frames` is the flow package's static window (2 mel frames per token), `vocoder_frames`
    the HiFT packages'. A model converted without S3Gen gets a T3-only bundle (`s3gen: null`).
    `cond_slot`: a GPT-2 (Turbo/Nano) prefill's conditioning rows (default 1 + 375 prompt tokens).
    """
    model_dir, out = Path(model_dir), Path(out)
    if target not in TARGETS:
        raise ExportError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    check_chunk_args(chunk_frames, vocoder_frames)
    if out.suffix != ".nightingale":
        raise ExportError(f"{out}: the bundle name must end in .nightingale")
    if out.exists() and not force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    try:
        import coremltools  # noqa: F401
    except ImportError:
        raise ExportError("coremltools is not installed: pip install 'nightingale-mlx[coreml]'") from None
    config = model_io.load_config(model_dir)
    t3, _ = model_io.load_t3(model_dir, config)
    s3gen = model_io.load_s3gen(model_dir, config) if config.s3gen else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        # Voices first: one too long for the cond slot fails before the packages are built.
        slot = default_cond_slot(t3.cfg) if cond_slot is None or not t3.cfg.is_gpt2 else cond_slot  # Llama's is fixed
        voices = export_voices(t3, model_dir, stage, slot, config)
        info = build_t3_package(t3, stage / T3_PACKAGE, context, text_slots, tmp, slot)
        if t3.cfg.emotion_adv:  # GPT-2 T3s have no exaggeration token
            emotion = t3.cond_enc.emotion_adv_fc.weight.reshape(-1).astype(mx.float16)
            mx.save_safetensors(str(stage / T3_CONDITIONING), {"emotion_weight": emotion})
        tokenizer = _copy_tokenizer(model_dir, config, stage)
        s3gen_info = None
        if s3gen is not None:
            flow_info = build_flow_package(s3gen.flow, stage / FLOW_PACKAGE, chunk_frames, target)
            hift_info = build_hift_packages(s3gen.mel2wav, stage, vocoder_frames)
            s3gen_info = s3gen_manifest(s3gen, config, target, flow_info, hift_info)
        manifest = {
            **FORMAT,
            "variant": config.variant,
            "profile": config.profile,
            "target": target,
            "minimum_deployment": "iOS18 / macOS15",
            "sample_rate": 24000,
            "speech_tokens_per_second": 25,
            "t3": t3_manifest(t3, config, info),
            "sampling": sampling_manifest(config),
            "voices": voices,
            "tokenizer": tokenizer,
            "s3gen": s3gen_info,  # None: the model was converted without S3Gen
            "source_quantization": config.quantization,
        }
        manifest["files"] = file_hashes(stage)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        stage.replace(out)
    return out


def _copy_tokenizer(model_dir: Path, config, stage: Path) -> Optional[dict]:
    if not config.text:
        return None
    name = config.text.get("tokenizer")
    if not name or not (model_dir / name).is_file():
        raise ExportError(f"{model_dir}: tokenizer file {name!r} missing; convert the model again")
    shutil.copy(model_dir / name, stage / name)
    return {"file": name, "config": config.text}
