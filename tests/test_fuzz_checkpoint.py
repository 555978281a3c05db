"""Fuzzing the torch-free checkpoint readers with mutated files (issue 11).

Every mutated `.pt` / `.safetensors` either reads or raises CheckpointError, within a deadline:
no other exception, no hang, no code run. Pickle mutations are re-zipped with a valid CRC, so they
reach the unpickler instead of stopping at the zip layer. Zip bombs are refused from the declared
sizes before anything is decompressed.
"""

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convert.checkpoint import MAX_COMPRESSION_RATIO, CheckpointError, read_pt, read_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint"
PT = (FIXTURES / "dtypes.pt").read_bytes()
ST = (FIXTURES / "weights.safetensors").read_bytes()
DEADLINE_MS = 2000  # per example; the readers take ~1 ms on these fixtures


def _entries(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


PT_ENTRIES = _entries(PT)
PKL = next(k for k in PT_ENTRIES if k.endswith("/data.pkl"))


def _rezip(entries: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _read(reader, path: Path, data: bytes):
    """Reads mutated bytes: success or CheckpointError, nothing else (pytest reports anything else)."""
    path.write_bytes(data)
    try:
        reader(path)
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e)


def _flip(data: bytes, positions, bits) -> bytes:
    out = bytearray(data)
    for p, b in zip(positions, bits):
        out[p % len(out)] ^= 1 << b
    return bytes(out)


def test_zip_bomb_by_ratio_is_refused(tmp_path):
    # 64 MiB of zeros deflates to ~64 KiB: ratio ~1000, refused before a byte is inflated.
    bomb = _rezip({**PT_ENTRIES, "archive/data/0": bytes(64 << 20)}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < (64 << 20) // MAX_COMPRESSION_RATIO
    path = tmp_path / "t3.pt"
    path.write_bytes(bomb)
    with pytest.raises(CheckpointError, match=r"^t3.pt: .*refused as a zip bomb$"):
        read_pt(path)


def test_zip_bomb_by_lying_sizes_is_refused(tmp_path):
    # A stored entry whose central-directory record claims 4 GiB: never read, refused from the claim.
    data = bytearray(PT)
    cd = data.rindex(b"PK\x01\x02")  # the last entry's central-directory record
    struct.pack_into("<I", data, cd + 24, 0xFFFFFFF0)  # its uncompressed-size field
    path = tmp_path / "s3gen.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"claim \d+ bytes .*refused as a zip bomb"):
        read_pt(path)


def test_overlapping_stride_tensor_is_refused(tmp_path):
    # A 1-element storage viewed as 10^9 elements with stride 0 would be copied into 4 GB.
    from tests.test_checkpoint import _state, _tensor, _write_zip

    pkl = _state(w=_tensor("0", numel=1, size=(10**9,), stride=(0,)))
    with pytest.raises(CheckpointError, match="more elements than storage"):
        read_pt(_write_zip(tmp_path / "o.pt", pkl, {"0": bytes(4)}))


def test_deeply_nested_safetensors_header_is_refused(tmp_path):
    raw = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors(path)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is None:
    def test_fuzz_checkpoint():
        pytest.skip("hypothesis is not installed (pip install 'nightingale-mlx[dev]')")
else:
    FUZZ = settings(max_examples=120, deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.function_scoped_fixture])
    positions = st.lists(st.integers(0, 2**31), min_size=1, max_size=8)
    bits = st.lists(st.integers(0, 7), min_size=8, max_size=8)

    @FUZZ
    @given(pos=positions, bit=bits)
    def test_fuzz_pt_bit_flips(tmp_path, pos, bit):
        _read(read_pt, tmp_path / "m.pt", _flip(PT, pos, bit))

    @FUZZ
    @given(cut=st.integers(0, len(PT)))
    def test_fuzz_pt_truncations(tmp_path, cut):
        _read(read_pt, tmp_path / "m.pt", PT[:cut])

    @FUZZ
    @given(pos=positions, bit=bits, start=st.integers(0, 2**31), junk=st.binary(max_size=16),
           cut=st.integers(0, 2**31))
    def test_fuzz_pickle_mutations(tmp_path, pos, bit, start, junk, cut):
        """The pickle itself mutated (bit flips, random bytes spliced in, truncated), zipped validly."""
        pkl = _flip(PT_ENTRIES[PKL], pos, bit)
        i = start % (len(pkl) + 1)
        pkl = (pkl[:i] + junk + pkl[i + len(junk):])[: len(pkl) - cut % 4]
        _read(read_pt, tmp_path / "m.pt", _rezip({**PT_ENTRIES, PKL: pkl}))

    @FUZZ
    @given(pos=positions, bit=bits)
    def test_fuzz_safetensors_bit_flips(tmp_path, pos, bit):
        header_end = 8 + int.from_bytes(ST[:8], "little")
        # Most flips land in the header: that is where the parser's decisions are.
        _read(read_safetensors, tmp_path / "m.safetensors", _flip(ST, [p % header_end for p in pos], bit))

    @FUZZ
    @given(cut=st.integers(0, len(ST)), junk=st.binary(max_size=64))
    def test_fuzz_safetensors_truncated_or_random(tmp_path, cut, junk):
        _read(read_safetensors, tmp_path / "m.safetensors", ST[:cut])
        _read(read_safetensors, tmp_path / "r.safetensors", junk)
        _read(read_pt, tmp_path / "r.pt", b"PK\x03\x04" + junk)


def test_fixtures_still_read():
    """The mutations start from files that read cleanly."""
    assert isinstance(read_pt(FIXTURES / "dtypes.pt")["f32"], np.ndarray)
    assert read_safetensors(FIXTURES / "weights.safetensors")
