"""Convert a GGUF checkpoint into an ordinary HF directory, once.

transformers' GGUF reader (with the `gguf` package) dequantizes the weights; we write
config.json without `quantization_config`, the tokenizer files, and model.safetensors with the
tied lm_head left out. The result loads with any HF-format loader, ours included. The write goes
to a temporary sibling directory renamed into place, so concurrent workers never see half a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["convert_gguf"]


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"converting {gguf_path.name} needs torch, transformers, gguf and safetensors "
            f"(pip install 'genfleet[worker,convert]'): {exc}"
        ) from exc

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        src, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(src, gguf_file=name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if out_dir.exists():  # another process won the race
            shutil.rmtree(tmp)
            return out_dir
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
