"""Fetching an original checkpoint from the Hugging Face hub (only the files a variant needs)."""

from pathlib import Path

from nightingale_mlx.config import T3_CHECKPOINT_FILES

from .text import text_files

DEFAULT_REPO = "ResembleAI/chatterbox"


def variant_files(variant: str) -> list:
    # The English files are safetensors, the multilingual ones torch pickles (read without torch).
    ext = "safetensors" if variant == "en" else "pt"
    return [T3_CHECKPOINT_FILES[variant], f"s3gen.{ext}", f"ve.{ext}", "conds.pt", *text_files(variant)]


def fetch_checkpoint(repo_id: str, variant: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=variant_files(variant)))
    except Exception as e:  # network, auth or a missing repo: one clear line for the user
        raise RuntimeError(
            f"could not download {repo_id} ({type(e).__name__}: {e}); "
            "check the repo id and your connection, or pass a local checkpoint dir"
        ) from e
