"""`convert --upload-repo`: the model card and the hub calls (the hub itself is faked: no network)."""

import json
import shutil

import huggingface_hub
import pytest

from convert.upload import model_card, upload


@pytest.fixture
def model_dir(tmp_path, tts):
    shutil.copy(tts.model_dir / "config.json", tmp_path / "config.json")
    return tmp_path


def test_card_states_variant_recipe_and_quality(model_dir):
    card = model_card(model_dir, "ResembleAI/chatterbox")
    assert "variant: `en`" in card and "quantization: `fp32`" in card and "not measured" in card
    (model_dir / "quality.json").write_text(json.dumps({"t3": {"logits_rel_err": 0.004}}))
    assert '"logits_rel_err": 0.004' in model_card(model_dir, "ResembleAI/chatterbox")


def test_upload_creates_the_repo_and_sends_the_dir(model_dir, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = upload(model_dir, "me/chatterbox-q4", source="ResembleAI/chatterbox")
    assert url == "https://huggingface.co/me/chatterbox-q4"
    assert calls == [("create", "me/chatterbox-q4"), ("upload", "me/chatterbox-q4", ["README.md", "config.json"])]


def test_upload_failure_is_one_clear_error(model_dir, monkeypatch):
    class Offline:
        def __init__(self, token=None):
            pass

        def create_repo(self, *a, **k):
            raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(RuntimeError, match="could not upload to me/x .*huggingface-cli login"):
        upload(model_dir, "me/x", source="dir")
