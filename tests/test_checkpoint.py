"""convert.checkpoint: real torch.save / safetensors fixtures read without torch, and hostile files.

Fixtures come from tests/reference/make_checkpoint_fixtures.py (reference env); the malicious
pickles are built here by hand, so nothing in this file needs torch.
"""

import json
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convert import checkpoint as ckpt
from convert.checkpoint import (
    CheckpointError,
    flatten_state,
    read_checkpoint,
    read_pt,
    read_safetensors,
    safetensors_metadata,
)

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint"
PT_FIXTURES = ["dtypes", "layouts", "conds", "state_dict"]


def assert_same(got: dict, expected_npz: Path):
    expected = dict(np.load(expected_npz))
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        assert isinstance(have, np.ndarray), key
        assert (have.dtype, have.shape) == (want.dtype, want.shape), key
        assert have.tobytes() == want.tobytes(), key  # bit-exact: -0.0 and NaN included


# ------------------------------------------------------------------ hand-built torch pickles


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(items) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t"


def _tensor(key, storage="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,)) -> bytes:
    """The opcodes torch.save emits for one tensor (see the dtypes fixture's data.pkl)."""
    pid = b"(" + _str("storage") + _global("torch", storage) + _str(key) + _str("cpu") + _int(numel)
    hooks = _global("collections", "OrderedDict") + b")R"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"tQ" + _int(offset)
            + _tuple(size) + _tuple(stride) + b"\x89" + hooks + b"tR")


def _state(**values: bytes) -> bytes:
    body = b"".join(_str(k) + v for k, v in values.items())
    return b"\x80\x02}(" + body + b"u."


def _write_zip(path: Path, pkl: bytes, storages=None, byteorder=b"little") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return path


class _Evil:
    """pickle.dumps of this REDUCEs `func(*args)`, as a malicious checkpoint would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict:
    """refused global -> a pickle that would create `marker` if anything in it ran."""
    cmd = f"touch {marker}"
    return {
        "posix.system": pickle.dumps(_Evil(os.system, cmd), protocol=2),
        "__builtin__.eval": pickle.dumps(_Evil(eval, f"__import__('os').system({cmd!r})"), protocol=2),
        "builtins.exec": pickle.dumps(_Evil(exec, f"open({str(marker)!r}, 'w')"), protocol=4),
        "subprocess.Popen": pickle.dumps(_Evil(subprocess.Popen, ["touch", str(marker)]), protocol=4),
        # after a valid tensor, inside an otherwise valid state dict
        "os.system": _state(ok=_tensor("0"), bad=_global("os", "system") + _str(cmd) + b"\x85R"),
    }


# ------------------------------------------------------------------------------- real fixtures


@pytest.mark.parametrize("name", PT_FIXTURES)
def test_read_pt_matches_torch(name):
    got = flatten_state(read_pt(FIXTURES / f"{name}.pt"))
    assert_same(got, FIXTURES / f"{name}.npz")


def test_every_dtype_kept_and_bf16_upcast():
    got = read_pt(FIXTURES / "dtypes.pt")
    dtypes = {k: v.dtype.name for k, v in got.items()}
    assert dtypes == {
        "f32": "float32", "f16": "float16", "bf16": "float32", "f64": "float64", "i64": "int64",
        "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool",
    }
    assert got["bf16"][0, :2].tolist() == [0.0, -0.0] and np.signbit(got["bf16"][0, 1])
    assert got["i64"][-1] == 2**62


def test_layouts_strides_offsets_shared_storage():
    with zipfile.ZipFile(FIXTURES / "layouts.pt") as z:
        storages = [n for n in z.namelist() if "/data/" in n]
    got = read_pt(FIXTURES / "layouts.pt")
    tensors = [v for v in got.values() if isinstance(v, np.ndarray)]
    assert len(storages) < len(tensors)  # the fixture really shares storages (base, `shared`)
    assert got["transposed"].shape == (6, 4) and got["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(got["transposed"].T[1:3, 2:5], got["slice"])
    np.testing.assert_array_equal(got["shared_a"], np.arange(5))
    np.testing.assert_array_equal(got["shared_b"], np.arange(3, 10).reshape(7, 1))
    assert got["scalar"].shape == () and got["scalar"] == 3.25
    assert got["empty"].shape == (0, 3)
    assert got["list"][1] is None and got["list"][2] == 0.5


def test_state_dict_is_ordered_dict():
    got = read_pt(FIXTURES / "state_dict.pt")
    assert type(got).__name__ == "OrderedDict"
    assert list(got)[:2] == ["emb.weight", "norm.weight"]
    count = got["norm.num_batches_tracked"]  # a 0-dim int64 tensor
    assert count.shape == () and count.dtype == np.int64


def test_conds_flatten_drops_none():
    flat = flatten_state(read_pt(FIXTURES / "conds.pt"))
    assert "t3.clap_emb" not in flat and "gen.prompt_feat_len" not in flat
    assert flat["t3.speaker_emb"].shape == (1, 8) and flat["gen.prompt_token"].dtype == np.int32


def test_read_safetensors_matches_torch():
    path = FIXTURES / "weights.safetensors"
    got = read_safetensors(path)
    assert_same(got, FIXTURES / "weights.npz")
    assert got["bf16"].dtype == np.float32
    assert not got["f32"].flags.writeable  # a view of the memory map
    assert safetensors_metadata(path) == {"format": "pt", "note": "fixture"}


def test_read_checkpoint_dispatch(tmp_path):
    pth = shutil.copy(FIXTURES / "dtypes.pt", tmp_path / "model.pth")
    assert read_checkpoint(pth)["u8"].tolist() == [0, 1, 255]
    assert "f32_2d" in read_checkpoint(FIXTURES / "weights.safetensors")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        read_checkpoint(tmp_path / "model.ckpt")
    for reader in (read_checkpoint, read_pt, read_safetensors):
        with pytest.raises(CheckpointError, match="no such checkpoint file"):
            reader(tmp_path / "missing.pt")


def test_flatten_state():
    arr = np.ones(2)
    flat = flatten_state({"a": {"b": arr, "c": None}, "l": [None, 0.5], "n": 3})
    assert list(flat) == ["a.b", "l.1", "n"] and flat["a.b"] is arr and flat["n"] == 3
    with pytest.raises(CheckpointError, match="'a.s'"):
        flatten_state({"a": {"s": "text"}})


# ------------------------------------------------------------------------------ hostile .pt


@pytest.mark.parametrize("refused", list(_payloads(Path("x"))))
def test_malicious_pickle_in_zip_is_refused(tmp_path, refused):
    marker = tmp_path / "pwned"
    path = _write_zip(tmp_path / "s3gen.pt", _payloads(marker)[refused], {"0": bytes(16)})
    with pytest.raises(CheckpointError) as err:
        read_pt(path)
    assert f"s3gen.pt: refused to load '{refused}'" in str(err.value)
    assert not marker.exists()


def test_legacy_raw_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.pt"
    path.write_bytes(_payloads(marker)["posix.system"])
    with pytest.raises(CheckpointError, match="not a torch zip checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("torch.nn.modules.linear", "Linear"),
                                         ("numpy.core.multiarray", "_reconstruct"),
                                         ("torch._utils", "_rebuild_tensor_v2.__globals__"),
                                         ("torch", "load")])
def test_other_globals_refused(tmp_path, module, name):
    path = _write_zip(tmp_path / "m.pt", b"\x80\x02" + _global(module, name) + b")R.")
    with pytest.raises(CheckpointError, match=f"refused to load '{module}.{name}'"):
        read_pt(path)


def test_build_on_allowed_function_refused(tmp_path):
    # BUILD could otherwise set attributes on our own rebuild function for every later load.
    pkl = b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2") + b"}" + _str("x") + _int(1) + b"sb."
    with pytest.raises(CheckpointError, match="refused BUILD on function"):
        read_pt(_write_zip(tmp_path / "b.pt", pkl))
    assert not hasattr(ckpt._rebuild_tensor_v2, "x")


def test_bare_global_or_storage_type_as_value_refused(tmp_path):
    for value in (_global("torch._utils", "_rebuild_tensor_v2"), _global("torch", "FloatStorage")):
        with pytest.raises(CheckpointError, match="unexpected .* object"):
            read_pt(_write_zip(tmp_path / "v.pt", _state(a=value)))


def test_hand_built_tensor_reads(tmp_path):
    data = np.arange(6, dtype="<f4")
    pkl = _state(w=_tensor("0", numel=6, offset=1, size=(2, 2), stride=(1, 2)))
    got = read_pt(_write_zip(tmp_path / "ok.pt", pkl, {"0": data.tobytes()}))
    np.testing.assert_array_equal(got["w"], data[1:5].reshape(2, 2).T)


def test_big_endian_storage_is_byteswapped(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=">f4")
    bf16 = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(">u2")
    pkl = _state(f=_tensor("0", numel=3, size=(3,)), b=_tensor("1", "BFloat16Storage", numel=2, size=(2,)))
    got = read_pt(_write_zip(tmp_path / "be.pt", pkl, {"0": values.tobytes(), "1": bf16.tobytes()}, b"big"))
    assert got["f"].dtype == np.float32 and got["f"].tolist() == [1.5, -2.0, 3.25]
    assert got["b"].tolist() == [1.5, -2.0]


def test_missing_storage_refused(tmp_path):
    path = _write_zip(tmp_path / "t3.pt", _state(w=_tensor("7")), {"0": bytes(16)})
    with pytest.raises(CheckpointError, match="t3.pt: storage 'archive/data/7' is missing"):
        read_pt(path)


@pytest.mark.parametrize("layout", [dict(size=(5,)), dict(offset=3, size=(2,)),
                                    dict(size=(2, 2), stride=(3, 1)), dict(size=(2,), stride=(4,))])
def test_tensor_larger_than_storage_refused(tmp_path, layout):
    layout.setdefault("stride", (1,) * len(layout["size"]))
    path = _write_zip(tmp_path / "big.pt", _state(w=_tensor("0", **layout)), {"0": bytes(16)})
    with pytest.raises(CheckpointError, match="reads past the end of storage '0'"):
        read_pt(path)


def test_storage_size_mismatch_refused(tmp_path):
    path = _write_zip(tmp_path / "s.pt", _state(w=_tensor("0", numel=4)), {"0": bytes(12)})
    with pytest.raises(CheckpointError, match="holds 12 bytes"):
        read_pt(path)


def test_malformed_pickle_is_checkpoint_error(tmp_path):
    for pkl in (b"\x80\x02}(", b"\x80\x02" + _global("torch", "FloatStorage") + b")R.", b"garbage"):
        with pytest.raises(CheckpointError, match="corrupt data.pkl"):
            read_pt(_write_zip(tmp_path / "p.pt", pkl))


@pytest.mark.parametrize("keep", [100, 1800, -22, -1])
def test_truncated_pt(tmp_path, keep):
    data = (FIXTURES / "dtypes.pt").read_bytes()
    n = keep if keep > 0 else len(data) + keep
    path = tmp_path / "ve.pt"
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="ve.pt is truncated or corrupt .*re-download it"):
        read_pt(path)


def test_corrupt_storage_bytes_fail_crc(tmp_path):
    data = bytearray((FIXTURES / "dtypes.pt").read_bytes())
    with zipfile.ZipFile(FIXTURES / "dtypes.pt") as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    # Entries are stored uncompressed after a 30-byte local header, the name and an extra field.
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 1] ^= 0xFF
    path = tmp_path / "c.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_pt(path)


# ---------------------------------------------------------------------- hostile safetensors


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("cut", [4, 20, 1])
def test_truncated_safetensors(tmp_path, cut):
    data = (FIXTURES / "weights.safetensors").read_bytes()
    path = tmp_path / "t3_cfg.safetensors"
    path.write_bytes(data[: cut if cut > 1 else len(data) - cut])
    expected = r"t3_cfg.safetensors is truncated \(expected \d+ bytes, found \d+\); re-download it"
    with pytest.raises(CheckpointError, match=expected):
        read_safetensors(path)


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "truncated"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "needs 8"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "bad header entry"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8), "bad header entry"),
    ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), "bad header entry"),
    ({"a": "F32"}, b"", "bad header entry"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlap"),
])
def test_corrupt_safetensors_header(tmp_path, header, data, match):
    with pytest.raises(CheckpointError, match=match):
        read_safetensors(_safetensors(tmp_path / "w.safetensors", header, data))


def test_safetensors_bad_json_and_lengths(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="implausible"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_safetensors(path)
    _safetensors(path, {"__metadata__": {"n": 1}}, b"")
    with pytest.raises(CheckpointError, match="map of strings"):
        safetensors_metadata(path)


def test_zip_with_unsupported_version_field_is_a_checkpoint_error(tmp_path, fixtures_dir):
    """Found by the bit-flip fuzzer: a corrupted 'version needed to extract' reads as an unsupported
    zip feature (NotImplementedError inside zipfile); it must be the usual one-line error."""
    data = bytearray((fixtures_dir / "checkpoint" / "state_dict.pt").read_bytes())
    end = data.rfind(b"PK\x05\x06")
    central = struct.unpack_from("<I", data, end + 16)[0]  # offset of the first central directory entry
    struct.pack_into("<H", data, central + 6, 64)  # version needed to extract: 6.4
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_pt(bad)
