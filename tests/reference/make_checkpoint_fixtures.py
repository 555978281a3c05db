"""Writes tests/fixtures/checkpoint/: tiny checkpoints saved by REAL torch.save / safetensors.

Runs only in the reference env (it imports torch); CI reads the committed output without torch:
    ~/.cache/nightingale/ref-env/bin/python tests/reference/make_checkpoint_fixtures.py
Each `<name>.pt` / `.safetensors` has a `<name>.npz` of expected values beside it, keyed like
`convert.checkpoint.flatten_state` keys (bfloat16 stored as its exact float32 upcast).
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint"


def every_dtype() -> dict:
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-3, -2.5])
    return {
        "f32": torch.cat([special, torch.randn(5, generator=g)]).reshape(3, 4),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.cat([special, torch.randn(3, generator=g)]).bfloat16().reshape(2, 5),
        "f64": torch.randn(3, generator=g).double(),
        "i64": torch.tensor([-(2**40), -1, 0, 2**62]),
        "i32": torch.tensor([[-(2**31), 7], [2**31 - 1, 0]], dtype=torch.int32),
        "i16": torch.tensor([-32768, 5, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, -1, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
    }


def layouts() -> dict:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    shared = torch.arange(10, dtype=torch.int64)
    bf = torch.randn(3, 4, generator=g).bfloat16()
    return {
        "transposed": base.t(),  # stride (1, 6): saved as a view of the whole storage
        "slice": base[1:3, 2:5],  # storage offset 8, strides (6, 1)
        "shared_a": shared[:5],  # shared_a and shared_b are views of one storage
        "shared_b": shared[3:].view(7, 1),
        "bf16_t": bf.t(),  # non-contiguous bfloat16
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        "list": [torch.tensor([1, 2]), None, 0.5],
    }


def conds() -> dict:
    # The shape of Chatterbox's conds.pt: dict(t3=T3Cond.__dict__, gen=ref_dict), tiny sizes.
    g = torch.Generator().manual_seed(2)
    t3 = {
        "speaker_emb": torch.randn(1, 8, generator=g),
        "clap_emb": None,
        "cond_prompt_speech_tokens": torch.randint(0, 6561, (1, 6), generator=g),
        "cond_prompt_speech_emb": None,
        "emotion_adv": 0.5 * torch.ones(1, 1, 1),
    }
    gen = {
        "prompt_token": torch.randint(0, 6561, (1, 6), generator=g).int(),
        "prompt_token_len": torch.tensor([6], dtype=torch.int32),
        "prompt_feat": torch.randn(1, 4, 5, generator=g),
        "prompt_feat_len": None,
        "embedding": torch.randn(1, 8, generator=g),
    }
    return {"t3": t3, "gen": gen}


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.norm = torch.nn.BatchNorm1d(3)  # num_batches_tracked is a 0-dim int64
        self.proj = torch.nn.Linear(3, 2)


def flatten(obj, prefix=""):
    if obj is None:
        return {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    elif torch.is_tensor(obj):
        return {prefix: (obj.float() if obj.dtype == torch.bfloat16 else obj).detach().numpy()}
    else:
        return {prefix: np.asarray(obj)}  # a plain Python number
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def write(name: str, obj):
    torch.save(obj, OUT / f"{name}.pt")
    np.savez(OUT / f"{name}.npz", **flatten(obj))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    write("dtypes", every_dtype())
    write("layouts", layouts())
    write("conds", conds())
    write("state_dict", Tiny().state_dict())  # an OrderedDict with `_metadata`
    st = every_dtype()
    st["f32_2d"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save_file(st, OUT / "weights.safetensors", metadata={"format": "pt", "note": "fixture"})
    np.savez(OUT / "weights.npz", **flatten(st))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
