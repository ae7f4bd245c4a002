"""Make any checkpoint servable by the in-process backends: full folders pass through, LoRA
adapters are merged into their base model once and cached.

A LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as peft and our
SFT trainer write it) names its base model in ``base_model_name_or_path``. The native and
transformers backends want one plain checkpoint, so :func:`servable_model` merges the adapter with
peft's ``merge_and_unload`` into ``<cache root>/merged/<digest>/`` (the digest covers the adapter's
files and the base model's name, so a retrained adapter gets a new folder). vLLM serves adapters
without merging (an adapter whose base is itself an adapter excepted: that base is merged).

An adapter trained on top of another adapter (round 2 of ``leafe run``, LEAFE from a GRPO
adapter) was trained on that merged copy, so peft records the cache folder as its base. The
trainers therefore also write :data:`LINEAGE_FILE` beside it: the model training started from,
by absolute and relative path. When the recorded base is gone (the cache was cleared, the run
was copied to another machine), :func:`adapter_base` falls back to it and the merge is rebuilt.
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
from typing import Any

from leafe.policy.embedded import EMBEDDED_ALIASES, cache_root, file_lock, resolve_model

logger = logging.getLogger(__name__)

_MARKER = "leafe_merge.json"
MAX_ADAPTER_CHAIN = 32  # adapters on top of adapters (rounds) followed before giving up
LINEAGE_FILE = "leafe_base.json"
"""Written by the trainers into a model they save: ``{"model", "path", "relative"}``, the model
reference training started from, its absolute path and its path relative to the saved folder
(both None for a hub id or the embedded model), and ``"adapter_sha256"`` (its ``adapter_*``
files) when the start is an adapter."""


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

    When the recorded base does not exist here (a cleared cache, a run copied elsewhere) and the
    folder holds a :data:`LINEAGE_FILE`, the model training started from (:func:`training_start`)
    is the base instead: an adapter there is merged again by :func:`servable_model`.

    Raises:
        ValueError: ``adapter_config.json`` is unusable, or the lineage names a start that is
            gone or has changed since.
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
    if Path(os.path.expanduser(base)).exists():
        return base
    start = training_start(path)
    return base if start is None else start


def training_start(folder: str | Path) -> str | None:
    """The model the training that saved ``folder`` started from, as its :data:`LINEAGE_FILE`
    records it: a local folder found by its path relative to ``folder`` (the run moved with it)
    or its absolute path, else the hub id or embedded model's name; None without a record.

    Raises:
        ValueError: the record names a local folder that is in neither place, or an adapter
            whose files have changed since (it would rebuild another model).
    """
    try:
        record = json.loads((Path(folder) / LINEAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    path = record.get("path")
    if not isinstance(path, str):  # not a local folder: a hub id or the embedded model
        model = record.get("model")
        return model if isinstance(model, str) and model else None
    here = Path(folder).resolve()
    expected = record.get("adapter_sha256")
    changed = None
    for value in (record.get("relative"), path):
        candidate = (here / value).resolve() if isinstance(value, str) else None  # an absolute value replaces ``here``
        if candidate is None or not candidate.is_dir() or candidate == here:
            continue
        if expected and _adapter_files_digest(candidate) != expected:
            changed = changed or candidate  # another adapter there now: the other place may still hold it
            continue
        return str(candidate)
    if changed is not None:
        raise ValueError(
            f"{folder} was trained on top of {changed}, whose adapter files have changed since; "
            "its base cannot be rebuilt (restore that adapter or retrain)"
        )
    raise ValueError(
        f"{folder} was trained on top of {path}, which is gone (nor is it at {record.get('relative')} beside it), "
        "and so is the base its adapter_config.json names"
    )


def write_training_start(folder: Path, start: str) -> None:
    """Record in ``folder`` (a model being saved) that training started from model reference
    ``start`` (see :data:`LINEAGE_FILE`); for an adapter start, also a digest of its files."""
    local = Path(os.path.expanduser(start))
    if start.strip().lower() in EMBEDDED_ALIASES or not local.is_dir():
        record: dict[str, str | None] = {"model": start, "path": None, "relative": None}
    else:
        absolute = local.resolve()
        record = {"model": start, "path": str(absolute), "relative": os.path.relpath(absolute, folder.resolve())}
        if (absolute / "adapter_config.json").is_file():
            record["adapter_sha256"] = _adapter_files_digest(absolute)
    (folder / LINEAGE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _hash_adapter_files(hasher: Any, adapter: Path) -> None:
    """Feed ``adapter``'s ``adapter_*`` files (names and bytes, in name order) to ``hasher``."""
    for file in sorted(adapter.iterdir()):
        if file.is_file() and file.name.startswith("adapter_"):
            hasher.update(file.name.encode())
            hasher.update(file.read_bytes())


def _adapter_files_digest(adapter: Path) -> str:
    hasher = hashlib.sha256()
    _hash_adapter_files(hasher, adapter)
    return hasher.hexdigest()


def looks_like_path(model: str) -> bool:
    """Whether ``model`` can only mean a local folder: it starts with ``/``, ``.`` or ``~``, or it
    has more parts than a hub id (``namespace/name``) and is not a URL (``s3://...``). A
    ``namespace/name`` that is not a local folder is a hub id, even beside a ``namespace/`` folder."""
    if "://" in model:
        return False
    return model.startswith(("/", ".", "~")) or len(Path(model).parts) > 2


def check_model_reference(model: str, field: str, hf_layout: bool = True, _depth: int = 0) -> None:
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
        if _depth >= MAX_ADAPTER_CHAIN:
            raise ConfigError(f"{field}: more than {MAX_ADAPTER_CHAIN} adapters trained on top of each other (a loop in {LINEAGE_FILE}?)")
        check_model_reference(base, f"{field} (the base of the adapter {model})", _depth=_depth + 1)
    elif not (folder / "config.json").is_file():
        raise ConfigError(
            f"{field}: {model} holds no config.json (a Hugging Face model folder) nor adapter_config.json (a LoRA adapter)"
        )


def _digest(adapter: Path, base: str) -> str:
    hasher = hashlib.sha256(base.encode())
    _hash_adapter_files(hasher, adapter)
    return hasher.hexdigest()[:16]


def servable_model(model: str, _depth: int = 0) -> str:
    """``model`` itself, or for a LoRA adapter folder the cached merged checkpoint's folder (a
    base that is an adapter itself is merged first).

    Raises:
        ValueError: an adapter folder without a usable ``adapter_config.json``, or whose base
            cannot be rebuilt (:func:`adapter_base`).
    """
    path = Path(resolve_model(model))
    base = adapter_base(path)
    if base is None:
        return model
    target = cache_root() / "merged" / _digest(path, base)
    if (target / _MARKER).is_file():
        return str(target)
    if _depth >= MAX_ADAPTER_CHAIN:
        raise ValueError(f"{model}: more than {MAX_ADAPTER_CHAIN} adapters trained on top of each other (a loop in {LINEAGE_FILE}?)")
    base_path = resolve_model(servable_model(base, _depth + 1))  # before this merge's lock: never held twice
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / _MARKER).is_file():
            return str(target)
        started = time.perf_counter()
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
