"""Make any checkpoint servable by the in-process backends: full folders pass through, LoRA
adapters are merged into their base model once and cached.

A LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as peft and our
SFT trainer write it) names its base model in ``base_model_name_or_path``. The native and
transformers backends want one plain checkpoint, so :func:`servable_model` merges the adapter with
peft's ``merge_and_unload`` into ``<cache root>/merged/<digest>/`` (the digest covers the adapter's
files and the base model's name, so a retrained adapter gets a new folder). vLLM serves adapters
without merging and does not use this.

An adapter trained on top of another adapter (round 2 of ``leafe run``, LEAFE from a GRPO
adapter) was trained on that merged copy, so peft records the cache folder as its base. The
trainers therefore also write :data:`LINEAGE_FILE` beside it: the model training started from,
by absolute and relative path. When the recorded base is gone (the cache was cleared, the run
was copied to another machine), :func:`adapter_base` falls back to it and the merge is rebuilt;
an adapter of the embedded model whose cache folder is gone falls back to the embedded model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from leafe.policy.embedded import DEFAULT_MODEL, EMBEDDED_ALIASES, MODEL_DIRNAME, cache_root, file_lock, resolve_model

logger = logging.getLogger(__name__)

_MARKER = "leafe_merge.json"
LINEAGE_FILE = "leafe_base.json"
"""Written by the trainers into a model they save: ``{"model", "path", "relative"}``, the model
reference training started from, its absolute path and its path relative to the saved folder
(both None for a hub id or the embedded model)."""


@contextlib.contextmanager
def quiet_peft_deprecations() -> Iterator[None]:
    """Wrap a peft model construction: peft reads transformers' deprecated
    ``is_gradient_checkpointing``, and transformers 5 warns about it on every LoRA model (a
    FutureWarning users cannot act on). Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def adapter_base(path: str | Path) -> str | None:
    """The base model an adapter folder names, or None if ``path`` is not a LoRA adapter folder.

    When the recorded base is a folder that no longer exists, this is where it can be rebuilt
    from, if known: the :data:`LINEAGE_FILE` start (itself an adapter, which
    :func:`servable_model` merges again), else the embedded model for a base that was the
    embedded model's converted folder under another cache root. Otherwise the recorded base.
    """
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as error:
        raise ValueError(f"{config}: not valid JSON ({error})") from None
    if not base:
        raise ValueError(f"{config}: base_model_name_or_path is missing; cannot tell which model the adapter fits")
    base = str(base)
    if not looks_like_path(base) or Path(os.path.expanduser(base)).exists():
        return base
    start = training_start(path)
    if start is not None:
        return start
    if Path(base).parts[-2:] == ("models", MODEL_DIRNAME):
        return DEFAULT_MODEL
    return base


def training_start(folder: str | Path) -> str | None:
    """The model the training that saved ``folder`` started from, as :data:`LINEAGE_FILE`
    records it: the folder by its relative path (the run moved with it) or its absolute path,
    or a hub id / the embedded model's name; None if there is no usable record."""
    record_file = Path(folder) / LINEAGE_FILE
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    for key in ("relative", "path"):
        value = record.get(key)
        candidate = Path(folder) / value if isinstance(value, str) else None  # an absolute value replaces the folder
        if candidate is not None and candidate.is_dir() and candidate.resolve() != Path(folder).resolve():
            return os.path.normpath(candidate)
    model = record.get("model")
    return model if isinstance(model, str) and model and not looks_like_path(model) else None


def write_training_start(folder: Path, start: str) -> None:
    """Record in ``folder`` (a model being saved) that training started from model reference
    ``start`` (see :data:`LINEAGE_FILE`)."""
    local = Path(os.path.expanduser(start))
    if start.strip().lower() in EMBEDDED_ALIASES or not local.is_dir():
        record = {"model": start, "path": None, "relative": None}
    else:
        absolute = local.resolve()
        record = {"model": start, "path": str(absolute), "relative": os.path.relpath(absolute, folder.resolve())}
    (folder / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` can only mean a local folder: it starts with ``/``, ``.`` or ``~``, or it
    has more parts than a hub id (``namespace/name``) and is not a URL (``s3://...``). A
    ``namespace/name`` that is not a local folder is a hub id, even beside a ``namespace/`` folder."""
    if "://" in model:
        return False
    return model.startswith(("/", ".", "~")) or len(Path(model).parts) > 2


def check_model_reference(model: str, field: str, hf_layout: bool = True) -> None:
    """Refuse at once, naming ``field``, a model reference that cannot load: an empty name, a
    path to nothing, and with ``hf_layout`` (what transformers and the native engine read; vLLM
    also reads GGUF files and other layouts) a file, a folder that holds neither a model
    (``config.json``) nor a LoRA adapter (``adapter_config.json``), or an adapter whose base
    fails the same checks. Hub ids, URLs and the embedded model's aliases pass (they are loaded
    or converted later). Cheap: reads no weights.

    Raises:
        ConfigError: naming ``field`` and what is wrong.
    """
    from leafe.config import ConfigError

    if not model.strip():
        raise ConfigError(f"{field}: empty; use 'smollm2-135m-instruct' (embedded), a model folder or a hub id")
    if "://" in model:  # a URL some loaders read (vLLM from s3://, gs://)
        return
    if model.strip().lower() in EMBEDDED_ALIASES:
        return
    folder = Path(os.path.expanduser(model))
    if not hf_layout:
        if not folder.exists() and looks_like_path(model):
            raise ConfigError(f"{field}: no such model path: {model}")
        return
    if not folder.is_dir():
        if folder.exists():
            raise ConfigError(f"{field}: {model} is a file; a model is a folder (config.json and weights) or a hub id")
        if looks_like_path(model):
            raise ConfigError(f"{field}: no such model folder: {model}")
        return  # a hub id: loaded (from the local cache or the hub) by the backend
    try:
        base = adapter_base(folder)
    except ValueError as error:
        raise ConfigError(f"{field}: {error}") from None
    if base is not None:
        check_model_reference(base, f"{field} (the base_model_name_or_path of the adapter {model})")
    elif not (folder / "config.json").is_file():
        raise ConfigError(
            f"{field}: {model} holds no config.json (a Hugging Face model folder) nor adapter_config.json (a LoRA adapter)"
        )


def _digest(adapter: Path, base: str) -> str:
    hasher = hashlib.sha256(base.encode())
    for file in sorted(adapter.iterdir()):
        if file.is_file() and file.name.startswith("adapter_"):
            hasher.update(file.name.encode())
            hasher.update(file.read_bytes())
    return hasher.hexdigest()[:16]


def servable_model(model: str) -> str:
    """``model`` itself, or for a LoRA adapter folder the cached merged checkpoint's folder.

    Raises:
        ValueError: an adapter folder without a usable ``adapter_config.json``.
    """
    path = Path(resolve_model(model))
    base = adapter_base(path)
    if base is None:
        return model
    target = cache_root() / "merged" / _digest(path, base)
    if (target / _MARKER).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / _MARKER).is_file():
            return str(target)
        started = time.perf_counter()
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base_path = resolve_model(servable_model(base))  # a base that is an adapter too is merged first
        model_obj = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        with quiet_peft_deprecations():
            merged = PeftModel.from_pretrained(model_obj, str(path)).merge_and_unload()
        tokenizer_source = path if (path / "tokenizer_config.json").is_file() else Path(base_path)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            merged.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            (scratch / _MARKER).write_text(json.dumps({"adapter": str(path), "base": base}, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
        logger.info("Merged LoRA adapter %s into %s in %.1f s", path, target, time.perf_counter() - started)
    return str(target)
