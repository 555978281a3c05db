"""Publishing a converted model to the Hugging Face hub, as mlx-lm's `--upload-repo` does."""

import json
from pathlib import Path
from typing import Optional

from nightingale_mlx import __version__
from nightingale_mlx.model_io import load_config

CARD = "README.md"
QUALITY_FILE = "quality.json"  # written by `nightingale quality --json > MODEL/quality.json`, if run


def model_card(model_dir: Path, source: str) -> str:
    """A model card stating the variant, the recipe and, when measured, the quality report."""
    config = load_config(model_dir)
    recipe = config.quantization or {}
    lines = [
        "---",
        "library_name: mlx",
        "license: mit",
        "pipeline_tag: text-to-speech",
        "tags: [mlx, tts, chatterbox, nightingale-mlx]",
        f"base_model: {source}" if "/" in source else "",
        "---",
        "",
        f"# Chatterbox ({config.variant}) for MLX",
        "",
        f"Converted from `{source}` with nightingale-mlx {__version__}.",
        "",
        f"- variant: `{config.variant}`, behaviour profile: `{config.profile}`",
        f"- quantization: `{recipe.get('recipe', 'fp32')}` (bits per component: {recipe.get('bits')}, "
        f"group size {recipe.get('group_size')})",
        "",
        "```bash",
        "pip install nightingale-mlx",
        'nightingale speak "Hello." -m <this repo>',
        "```",
        "",
    ]
    quality = Path(model_dir) / QUALITY_FILE
    if quality.is_file():
        lines += ["## Measured quality (against the fp32 conversion)", "", "```json",
                  json.dumps(json.loads(quality.read_text()), indent=2), "```", ""]
    else:
        lines += ["Quality against fp32 was not measured for this upload (`nightingale quality`).", ""]
    lines += ["The output is not watermarked.", ""]
    return "\n".join(line for line in lines if line is not None)


def upload(model_dir, repo_id: str, source: str, token: Optional[str] = None) -> str:
    """Writes the model card into MODEL_DIR and uploads the dir to REPO_ID; returns the repo URL."""
    from huggingface_hub import HfApi

    model_dir = Path(model_dir)
    (model_dir / CARD).write_text(model_card(model_dir, source))
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, repo_type="model")
    except Exception as e:  # network or auth: one clear line
        raise RuntimeError(f"could not upload to {repo_id} ({type(e).__name__}: {e}); "
                           "check `huggingface-cli login` and your connection") from e
    return f"https://huggingface.co/{repo_id}"
