"""Safe, torch-free readers for PyTorch zip checkpoints (`.pt`) and `.safetensors` files.

Unpickling a `.pt` file with `pickle` or `torch.load` runs whatever the file names. `read_pt`
resolves only the few globals `torch.save` emits for tensors, rebuilds every tensor itself in
numpy and never calls anything a checkpoint names. `read_safetensors` parses the format itself
and memory-maps the file. Every failure is a `CheckpointError` naming the file and what to do.
"""

import io
import json
import math
import mmap
import pickle
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or not safe to load."""


def _brief(value, limit: int) -> str:
    """A one-line, bounded repr of untrusted pickle content for an error message (a numpy repr spans lines)."""
    return " ".join(repr(value).split())[:limit]


_REFUSAL = "a checkpoint may only contain tensors, dicts, lists and None"
_REDOWNLOAD = "re-download it"


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def _bf16_to_f32(x: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32, so the upcast is exact (NaN payloads included).
    out = x.astype(np.uint32, order="C")
    out <<= 16
    return out.view(np.float32)


# ------------------------------------------------------------------------- torch zip (.pt)

# torch.save (2.6 included) still names storages by these legacy typed classes.
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "b1",
}


class _StorageType(str):
    """A storage class named by the pickle: a marker string, never instantiated or called."""

    __slots__ = ()


class _Storage:
    """One storage as a flat numpy array of its element type (bfloat16 kept as uint16)."""

    __slots__ = ("key", "flat", "bf16")

    def __init__(self, key: str, flat: np.ndarray, bf16: bool):
        self.key, self.flat, self.bf16 = key, flat, bf16


def _is_layout(offset, size, stride) -> bool:
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        return False
    return all(type(d) is int and d >= 0 for d in (offset, *size, *stride))


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored):
    """numpy stand-in for torch._utils._rebuild_tensor_v2 (requires_grad and hooks ignored)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor does not reference a storage")
    if not _is_layout(offset, size, stride):
        raise CheckpointError(
            f"a tensor has an invalid layout {_brief(size, 40)}/{_brief(stride, 40)}/{_brief(offset, 20)}")
    flat = storage.flat
    if 0 in size:
        view = flat[:0].reshape(size)
    else:
        # Bounds-check the last element the strides reach, so as_strided never reads past the end.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise CheckpointError(f"a tensor of size {size}, stride {stride}, offset {offset} reads past "
                                  f"the end of storage '{storage.key}' ({flat.size} elements)")
        if math.prod(size) > flat.size:  # only overlapping (e.g. 0) strides could: copying them amplifies memory
            raise CheckpointError(f"a tensor of size {size} has more elements than storage '{storage.key}' "
                                  f"({flat.size}); the file is corrupt, {_REDOWNLOAD}")
        steps = [s * flat.itemsize for s in stride]
        view = np.lib.stride_tricks.as_strided(flat[offset:], size, steps, writeable=False)
    if storage.bf16:
        return _bf16_to_f32(view)
    if not view.dtype.isnative:
        return view.astype(view.dtype.newbyteorder("="), order="C")
    # A contiguous tensor stays a read-only view of the storage bytes: no second copy in memory.
    return view if view.flags.c_contiguous else view.copy()


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """numpy stand-in for torch._utils._rebuild_parameter[_with_state]: a Parameter is its data."""
    if not isinstance(data, np.ndarray):
        raise CheckpointError("a parameter does not wrap a tensor")
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be narrowed), resolving only `_GLOBALS`."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, read_storage):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._read_storage = read_storage

    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(f"refused to load '{module}.{name}': {_REFUSAL}") from None

    def persistent_load(self, pid):
        # torch.save writes ('storage', storage_type, key, location, numel) for every storage.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str):
            raise CheckpointError(f"unsupported persistent id {_brief(pid, 80)}")
        return self._read_storage(pid[1], pid[2], pid[4])

    def _load_build(self):
        # BUILD sets attributes or calls __setstate__; torch only emits it for a state_dict's
        # `_metadata`, which we drop. On anything else it could tamper with live objects.
        self.stack.pop()
        if type(self.stack[-1]) is not OrderedDict:
            raise CheckpointError(f"refused BUILD on {type(self.stack[-1]).__name__}: {_REFUSAL}")

    dispatch[pickle.BUILD[0]] = _load_build


def _storage_reader(zf: zipfile.ZipFile, prefix: str, big_endian: bool):
    """persistent_load's back end: reads each storage entry once, then serves views of it."""
    cache = {}

    def read(storage_type: _StorageType, key: str, numel) -> _Storage:
        name = f"{prefix}/data/{key}"
        if key not in cache:
            try:
                cache[key] = zf.read(name)
            except KeyError:
                raise CheckpointError(f"storage '{name}' is missing; {_REDOWNLOAD}") from None
        code = _STORAGE_DTYPES[storage_type]
        dtype = np.dtype("u2" if code == "bf16" else code).newbyteorder(">" if big_endian else "<")
        data = cache[key]
        if type(numel) is not int or len(data) != numel * dtype.itemsize:
            raise CheckpointError(f"storage '{name}' holds {len(data)} bytes, not {_brief(numel, 20)} x "
                                  f"{dtype.itemsize}; the file is corrupt, {_REDOWNLOAD}")
        return _Storage(key, np.frombuffer(data, dtype), code == "bf16")

    return read


def _open_zip(path: Path) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    # Legacy (pre-1.6) torch files are bare pickle streams; we never unpickle outside a zip.
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise CheckpointError(f"{path.name} is not a torch zip checkpoint (torch.save >= 1.6): a legacy "
                              f"torch file or not a checkpoint at all; re-save it with a recent torch")
    try:
        return zipfile.ZipFile(path)
    # NotImplementedError: a corrupted "version needed" field reads as an unsupported zip feature.
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path.name} is truncated or corrupt ({e}); {_REDOWNLOAD}") from None


# torch.save stores entries uncompressed; a re-zipped checkpoint compresses random floats ~1.1x.
# Past these, an archive is a decompression bomb: refused from the declared sizes, before reading.
MAX_COMPRESSION_RATIO = 100
SMALL_ENTRY = 1 << 20  # entries this small may compress better (zeros, tiny pickles)


def _check_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuses archives whose entries claim more bytes than the file can honestly hold.

    zipfile stops each entry at its declared size (and checks the CRC), so bounding the declared
    sizes bounds the memory any read can take: at most MAX_COMPRESSION_RATIO x the file size.
    """
    infos, size = zf.infolist(), path.stat().st_size
    packed, total = sum(i.compress_size for i in infos), sum(i.file_size for i in infos)
    if packed > size:  # entries overlapping each other's bytes (a "quine" bomb)
        raise CheckpointError(f"zip entries claim {packed} compressed bytes in a {size}-byte file; "
                              f"refused as a zip bomb")
    if total > MAX_COMPRESSION_RATIO * size:
        raise CheckpointError(f"zip entries claim {total} bytes from a {size}-byte file (ratio over "
                              f"{MAX_COMPRESSION_RATIO}); refused as a zip bomb")
    for i in infos:
        ratio = i.file_size / max(i.compress_size, 1)
        if (i.compress_type == zipfile.ZIP_STORED and i.file_size != i.compress_size) or (
                i.file_size > SMALL_ENTRY and ratio > MAX_COMPRESSION_RATIO):
            raise CheckpointError(f"entry '{i.filename:.80}' claims {i.file_size} bytes from "
                                  f"{i.compress_size} (ratio over {MAX_COMPRESSION_RATIO}); refused as a zip bomb")


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(f"expected one '<name>/data.pkl' entry, found {len(pickles)}")
    return pickles[0].split("/")[0]


def _is_big_endian(zf: zipfile.ZipFile, prefix: str) -> bool:
    try:
        order = zf.read(f"{prefix}/byteorder")
    except KeyError:
        return False  # written before torch recorded it, always from little-endian hosts
    if order not in (b"little", b"big"):
        raise CheckpointError(f"unknown byteorder {_brief(order, 20)}")
    return order == b"big"


_LEAVES = (np.ndarray, str, bytes, int, float, bool, type(None))


def _check_tree(obj):
    """Refuse anything but containers, arrays and plain scalars (e.g. a bare storage or global)."""
    stack, seen = [obj], set()
    while stack:
        x = stack.pop()
        if isinstance(x, (dict, list, tuple)):
            if id(x) not in seen:
                seen.add(id(x))
                stack.extend([*x.keys(), *x.values()] if isinstance(x, dict) else x)
        elif not isinstance(x, _LEAVES) or isinstance(x, _StorageType):
            raise CheckpointError(f"unexpected {type(x).__name__} object: {_REFUSAL}")


def read_pt(path) -> dict:
    """Read a torch zip checkpoint (torch.save >= 1.6) without torch and without running its code.

    Returns the saved object (usually a dict) with every tensor as a numpy array: bfloat16 is
    upcast exactly to float32, other dtypes are kept. Contiguous tensors are read-only views of
    the storage bytes (tensors sharing a storage share them); strided ones are copied.
    Raises CheckpointError for missing, legacy, truncated or corrupt files, and for any global
    other than the tensor-rebuilding ones torch.save emits.
    """
    path = _existing(path)
    zf = _open_zip(path)
    try:
        with zf:
            _check_sizes(zf, path)
            prefix = _archive_prefix(zf)
            reader = _storage_reader(zf, prefix, _is_big_endian(zf, prefix))
            obj = _Unpickler(zf.read(f"{prefix}/data.pkl"), reader).load()
        _check_tree(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from None
    except (zipfile.BadZipFile, zlib.error, OSError) as e:
        raise CheckpointError(f"{path.name} is truncated or corrupt ({e}); {_REDOWNLOAD}") from None
    except Exception as e:  # a malformed pickle: bad opcodes, wrong argument types, ...
        msg = f"corrupt data.pkl ({type(e).__name__}: {e})"
        raise CheckpointError(f"{path.name}: {msg}; {_REDOWNLOAD}") from None
    return obj


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_MAX_HEADER = 100_000_000  # the safetensors library's own cap


def _truncated(path: Path, expected: int, found: int) -> CheckpointError:
    msg = f"is truncated (expected {expected} bytes, found {found})"
    return CheckpointError(f"{path.name} {msg}; {_REDOWNLOAD}")


def _safetensors_header(path: Path):
    """(header dict, offset of the data section, file size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _truncated(path, 8, size)
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path.name}: header length {n} is implausible; not safetensors?")
        if 8 + n > size:
            raise _truncated(path, 8 + n, size)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8; RecursionError: deep nesting
        raise CheckpointError(f"{path.name}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: header is not a JSON object; {_REDOWNLOAD}")
    return header, 8 + n, size


def _tensor_specs(path: Path, header: dict, start: int, size: int) -> dict:
    """name -> (dtype, shape, begin, end), each checked to be consistent and inside the file."""
    specs = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        bad = CheckpointError(f"{path.name}: bad header entry for '{key}': {_brief(info, 80)}")
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad from None
        if dtype not in _ST_DTYPES or not all(type(i) is int and i >= 0 for i in (*shape, begin, end)):
            raise bad
        nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{path.name}: tensor '{key}' spans bytes [{begin}, {end}) but "
                                  f"{dtype}{list(shape)} needs {nbytes}; the file is corrupt, {_REDOWNLOAD}")
        specs[key] = (dtype, shape, begin, end)
    expected = start + max((s[3] for s in specs.values()), default=0)
    if expected > size:
        raise _truncated(path, expected, size)
    spans = sorted((b, e, k) for k, (_, _, b, e) in specs.items() if e > b)
    for (_, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path.name}: tensors '{k0}' and '{k1}' overlap; {_REDOWNLOAD}")
    return specs


def read_safetensors(path) -> dict:
    """Read a .safetensors file into numpy arrays without the safetensors library.

    Arrays are read-only views of a memory map of the file, so nothing is read until used (keep
    them only as long as the file stays in place). BF16 is upcast exactly to float32 (a copy).
    """
    path = _existing(path)
    header, start, size = _safetensors_header(path)
    specs = _tensor_specs(path, header, start, size)
    with open(path, "rb") as f:
        buf = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    out = {}
    for key, (dtype, shape, begin, end) in specs.items():
        x = buf[start + begin : start + end].view(_ST_DTYPES[dtype]).reshape(shape)
        out[key] = _bf16_to_f32(x) if dtype == "BF16" else x
    return out


def safetensors_metadata(path) -> dict:
    """The `__metadata__` string map of a .safetensors file ({} when it has none)."""
    path = _existing(path)
    meta = _safetensors_header(path)[0].get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path.name}: __metadata__ is not a map of strings")
    return dict(meta)


# --------------------------------------------------------------------------------- helpers

_READERS = {".pt": read_pt, ".pth": read_pt, ".bin": read_pt, ".safetensors": read_safetensors}


def read_checkpoint(path) -> dict:
    """Read a checkpoint by suffix: .pt/.pth/.bin via read_pt, .safetensors via read_safetensors."""
    path = _existing(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        known = ", ".join(_READERS)
        raise CheckpointError(f"{path}: unknown checkpoint suffix {path.suffix!r}; expected {known}")
    return reader(path)


def read_weights(path) -> dict:
    """read_checkpoint for conversion: float tensors come back as float32 (fp16, bf16 and fp64
    checkpoints, such as fine-tunes and re-uploads, convert like fp32 ones; the recipe then sets
    the stored precision). fp16 -> fp32 is exact."""
    weights = read_checkpoint(path)
    return {k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.dtype != np.float32
            else v for k, v in weights.items()}


def flatten_state(obj, prefix: str = "") -> dict:
    """Flatten nested dicts (and lists, by index) into dotted keys, dropping None values.

    conds.pt holds {'t3': {'speaker_emb': ..., 'clap_emb': None, ...}, 'gen': {...}}, which
    becomes {'t3.speaker_emb': ..., 'gen.embedding': ...}; plain numbers become 0-d arrays.
    """
    if obj is None:
        return {}
    if isinstance(obj, (np.ndarray, bool, int, float)):
        return {prefix: np.asarray(obj)}
    if isinstance(obj, dict):
        children = obj.items()
    elif isinstance(obj, (list, tuple)):
        children = enumerate(obj)
    else:
        raise CheckpointError(f"'{prefix}': cannot flatten a {type(obj).__name__}")
    out = {}
    for key, value in children:
        out.update(flatten_state(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# Multilingual checkpoints ship .pt files, English ones .safetensors; either is accepted.
FILE_ORDER = {"en": (".safetensors", ".pt"), "mtl-v2": (".pt", ".safetensors"), "mtl-v3": (".pt", ".safetensors"),
              "turbo": (".safetensors", ".pt"), "nano": (".safetensors", ".pt")}


# Turbo/Nano name their S3Gen by its decoder (tts_turbo.from_local).
STEM_FOR_VARIANT = {("s3gen", "turbo"): "s3gen_meanflow", ("s3gen", "nano"): "s3gen_meanflow"}


def find_checkpoint_file(checkpoint: Path, stem: str, variant: str) -> Path:
    """`<stem>.pt` or `<stem>.safetensors` in a checkpoint dir, the variant's usual format first."""
    stem = STEM_FOR_VARIANT.get((stem, variant), stem)
    for suffix in FILE_ORDER.get(variant, (".pt", ".safetensors")):
        if (Path(checkpoint) / f"{stem}{suffix}").is_file():
            return Path(checkpoint) / f"{stem}{suffix}"
    raise CheckpointError(f"{checkpoint}: no {stem}.pt or {stem}.safetensors")
