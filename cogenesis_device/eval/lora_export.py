"""A peft LoRA of the local model written as a GGUF LoRA adapter, which llama.cpp (and so the engine:
cg_adapter_load, LocalModel(adapter=...)) loads.

The layout is llama.cpp's (what its convert_lora_to_gguf.py writes): general.type "adapter",
adapter.type "lora", adapter.lora.alpha; for each adapted weight of the base GGUF, `<name>.lora_a`
(rank x in) and `<name>.lora_b` (out x rank), in float32. llama.cpp scales the update by alpha / rank,
as peft does. The llama architecture's GGUF stores attn_q and attn_k with their rows permuted for its
rotary embedding (transformers undoes that when it reads the GGUF), so their lora_b gets the same
permutation; no other architecture permutes.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError

# HF module name -> llama.cpp tensor name, within block N.
_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}
_MODULE = re.compile(r"layers\.(\d+)\.(.+)$")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("exporting an adapter needs the gguf package: pip install "
                                     "'cogenesis-device[finetune]'") from None
    return gguf


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (per head: interleaved halves)."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def lora_pairs(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF module path: (A, B)} of a peft model's LoRA layers, as float32 arrays."""
    pairs = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().float().cpu().numpy()
            b = module.lora_B["default"].weight.detach().float().cpu().numpy()
            pairs[name] = (a, b)
    return pairs


def export_gguf_lora(model, base_gguf: str | os.PathLike, out_path: str | os.PathLike, *, alpha: float) -> Path:
    """Write the LoRA of `model` (a peft model over the GGUF base_gguf) to out_path, 0600 (written beside it,
    then renamed over it)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(base_gguf))

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0].item()

    arch = field("general.architecture")
    n_head, n_head_kv = field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv")
    base_names = {t.name for t in reader.tensors}
    out_path = Path(out_path)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".")  # 0600 from the start
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp_name, arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    pairs = lora_pairs(model)
    if not pairs:
        raise InvalidParameterError("the model has no LoRA layers to export")
    for module, (a, b) in sorted(pairs.items()):
        match = _MODULE.search(module)
        if not match or match.group(2) not in _NAMES:
            raise InvalidParameterError(f"no llama.cpp tensor for the adapted module {module!r}")
        name = f"blk.{match.group(1)}.{_NAMES[match.group(2)]}.weight"
        if name not in base_names:
            raise InvalidParameterError(f"the base GGUF has no tensor {name} for {module!r}")
        if arch == "llama" and match.group(2) in ("self_attn.q_proj", "self_attn.k_proj"):
            b = _permute(b, n_head if match.group(2) == "self_attn.q_proj" else n_head_kv)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    return out_path
