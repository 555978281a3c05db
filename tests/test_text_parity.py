"""Text front-end parity against the reference's recorded ids (chatterbox-tts 0.1.7, no torch).

tests/fixtures/text/reference_ids.json holds, per variant, the reference's punc_norm string and
token ids for every corpus sentence (all 23 languages) and edge cases, plus the sha256 of the
synthetic tokenizer files it ran with (committed beside it). Here those files are laid out as an
original checkpoint, converted with our converter, and our tokenizer must give identical ids.
Regenerate with `python -m tests.reference.parity --component text --write-fixtures`.
"""

import importlib.util
import json

import pytest

from convert.text import convert_text
from nightingale_mlx.text import SUPPORTED_LANGUAGES
from tests.reference import text_harness

FIXTURE = json.loads(text_harness.FIXTURE.read_text(encoding="utf-8"))
# Japanese needs the [ja] extra (pykakasi); without it those cases are skipped, not failed.
SKIP = () if importlib.util.find_spec("pykakasi") else ("ja",)


@pytest.fixture(scope="module", params=text_harness.VARIANTS)
def converted(request, tmp_path_factory):
    variant = request.param
    fx = FIXTURE[variant]
    ckpt = text_harness.fixture_checkpoint(variant, tmp_path_factory.mktemp(f"ckpt-{variant}"))
    for name, digest in fx["files"].items():
        assert text_harness.sha256(ckpt / name) == digest, f"{name} differs from the one the reference ran"
    model_dir = tmp_path_factory.mktemp(f"model-{variant}")
    return variant, fx, model_dir, convert_text(ckpt, variant, model_dir)


def test_fixture_covers_every_language():
    for variant in text_harness.VARIANTS:
        langs = {lang for _, lang in FIXTURE[variant]["cases"]}
        assert langs == set(SUPPORTED_LANGUAGES)


def test_ids_match_reference(converted):
    variant, fx, model_dir, text_config = converted
    ours = text_harness.run_ours(model_dir, text_config, fx["cases"], skip_languages=SKIP)
    checks = text_harness.compare(fx, ours, fx["cases"], variant)
    failed = [c for c in checks if not c["ok"]]
    assert not failed, json.dumps(failed, ensure_ascii=False)
    assert len(checks) == len(SUPPORTED_LANGUAGES) - len(SKIP)
    if variant != "en":  # the corpus itself encodes without [UNK] (make_checkpoint builds it so)
        n_corpus = 3 * len(SUPPORTED_LANGUAGES)
        assert all(1 not in ids for ids in fx["ids"][:n_corpus])


def test_compare_catches_a_changed_id(converted):
    variant, fx, model_dir, text_config = converted
    ours = text_harness.run_ours(model_dir, text_config, fx["cases"][:1])
    ours["ids"][0] = ours["ids"][0][:-1] + [ours["ids"][0][-1] + 1]
    assert not text_harness.compare(fx, ours, fx["cases"][:1], variant)[0]["ok"]


def test_v3_defaults_to_the_v2_path(tmp_path):
    ckpt = text_harness.fixture_checkpoint("mtl-v2", tmp_path / "ckpt")
    (tmp_path / "v3").mkdir()
    cfg = convert_text(ckpt, "mtl-v3", tmp_path / "v3")
    assert cfg["text_preproc"] == "v2" and cfg["cangjie"] == "Cangjie5_TC.json"
    fx = FIXTURE["mtl-v2"]
    cases = [c for c in fx["cases"][: 3 * len(SUPPORTED_LANGUAGES)] if c[1] not in SKIP]
    ours = text_harness.run_ours(tmp_path / "v3", cfg, cases)
    ref = {k: [fx[k][fx["cases"].index(c)] for c in cases] for k in ("norm", "ids")}
    assert all(c["ok"] for c in text_harness.compare(ref, ours, cases, "mtl-v3"))


@pytest.mark.reference
def test_live_text_parity():
    """Reruns the reference tokenizers live (its own env) and compares, as parity.py does."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "tests.reference.parity", "--component", "text",
         "--variant", "mtl-v2", "--variant", "en"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
