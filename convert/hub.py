"""Fetching an original checkpoint from the Hugging Face hub (only the files a variant needs)."""

from pathlib import Path

from nightingale_mlx.config import T3_CHECKPOINT_FILES, TURBO_VARIANTS

from .text import text_files

DEFAULT_REPO = "ResembleAI/chatterbox"
# Turbo and Nano live in repos of their own (tts_turbo.REPO_ID; Nano per the issue, unverified).
VARIANT_REPOS = {"ResembleAI/chatterbox-turbo": "turbo", "ResembleAI/chatterbox-nano": "nano"}


def default_variant(repo_id: str) -> str:
    """The variant `auto` means for a repo: its own for the Turbo/Nano repos, else mtl-v3."""
    return VARIANT_REPOS.get(repo_id, "mtl-v3")


def variant_files(variant: str) -> list:
    if variant in TURBO_VARIANTS:
        return [T3_CHECKPOINT_FILES[variant], "s3gen_meanflow.safetensors", "ve.safetensors", "conds.pt",
                *text_files(variant)]
    # The English files are safetensors, the multilingual ones torch pickles (read without torch).
    ext = "safetensors" if variant == "en" else "pt"
    return [T3_CHECKPOINT_FILES[variant], f"s3gen.{ext}", f"ve.{ext}", "conds.pt", *text_files(variant)]


def fetch_checkpoint(repo_id: str, variant: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=variant_files(variant)))
    except (GatedRepoError, RepositoryNotFoundError) as e:  # gated is a subclass: test it first
        what = "is gated: accept its terms on huggingface.co and log in" if isinstance(e, GatedRepoError) \
            else "is not a repo on the Hugging Face hub (or is private); check the repo id"
        raise RuntimeError(f"{repo_id} {what}") from e
    except (LocalEntryNotFoundError, OSError) as e:  # offline: the hub's own messages span many lines
        raise RuntimeError(
            f"cannot reach the Hugging Face hub to download {repo_id} and it is not in the local cache "
            "(offline?); pass a local checkpoint dir with -m DIR, or try the pipeline offline with "
            "--model synthetic (random weights, not speech)") from e
    except Exception as e:
        detail = " ".join(str(e).split())  # one line, nothing cut
        raise RuntimeError(f"could not download {repo_id} ({type(e).__name__}: {detail})") from e
