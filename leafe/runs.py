"""Run directories: where every command writes, and what makes it resumable.

    runs/<name>/
      config.yaml      the resolved config (after overrides)
      meta.json        seed, package versions, git commit, every invocation
      leafe.log        the log of every invocation
      episodes.jsonl   one finished trajectory per line, appended as episodes end
      ...              command artifacts (metrics.json, passk.png, summary.md)

Re-running a command on an existing run directory resumes it: finished records are read back
and skipped. A run directory refuses a config that would change results (another model, seed,
temperature, ...) unless ``fresh=True``; fields that only change how much is done or how it is
reported (task count, n, ks, batch size) may change between invocations.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from leafe.config import ConfigError, ExperimentConfig, config_from_dict, config_to_yaml
from leafe.policy.errors import first_line

logger = logging.getLogger(__name__)
META_FILE = "meta.json"  # a run directory's seed, versions and every invocation (command, argv, host)
LOG_FILE = "leafe.log"  # every invocation's log (INFO and up)

# Fields that may differ between invocations of one run: they change how much is done, where,
# how fast, or how results are summarised, not what a finished episode contains. (Every backend
# samples with the same per-request seeds; their logits agree up to float rounding.)
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "name",  # a run directory moved or renamed by hand (the name only places it)
        "eval.num_tasks",
        "eval.samples_per_task",
        "eval.ks",
        "eval.num_bootstrap",
        "eval.confidence",
        "policy.max_batch_size",
        "policy.backend",
        "policy.prefix_cache_mb",
        "policy.speculative_tokens",  # exact: the same tokens for the same logits
        "policy.packed_linear",  # the same products up to float rounding
        "policy.api_key_env",
        "policy.base_url",  # a restarted server at a new address serves the same policy.model
        "policy.request_timeout_s",
        "policy.max_retries",
        "rollout.max_concurrent_episodes",
        "workers.num",  # where episodes are played, not what they contain
        "workers.ray_address",
        "workers.cpus",
        "workers.gpus",
        "explore.num_tasks",
        "explore.max_tasks_in_flight",
        "grpo.steps",  # train longer: the steps done so far are the same
        "grpo.save_steps",
    }
)

_VERSIONED_PACKAGES = ("leafe", "torch", "transformers", "numpy", "gguf", "gym-sokoban")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted fields whose values differ between two config dicts, as ``field: old -> new``."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    return [
        f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    ]


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide results (without importing them)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old or the new file.

    Goes through a uniquely named temporary sibling, fsync and ``os.replace``; parent
    directories are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record and force it to disk (a finished result survives a kill).

    A torn last line left by a killed writer is closed off first, so it stays a single
    unreadable line that :func:`read_jsonl` skips instead of corrupting this record.
    """
    with path.open("ab+") as handle:
        handle.seek(0, os.SEEK_END)
        torn = False
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records (JSON objects) of a JSONL file; a missing file has none. A torn line (a writer
    killed mid-line), a line that is not UTF-8 or not a JSON object is skipped with a warning.

    Raises:
        ConfigError: ``path`` is a directory.
    """
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a JSONL file")
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                logger.warning("%s:%d: skipping a line that is not UTF-8 text", path, number)
                continue
            except json.JSONDecodeError:
                if raw.strip():
                    logger.warning("%s:%d: skipping a torn record (a run was killed while writing it)", path, number)
                continue
            if isinstance(record, dict):
                yield record
            else:
                logger.warning("%s:%d: skipping a line that is not a JSON object", path, number)


def recorded_commands(path: Path) -> set[str]:
    """The commands ``meta.json`` in run directory ``path`` records (none if it is missing or
    unreadable; an invocation without one is skipped)."""
    try:
        invocations = json.loads((path / META_FILE).read_text())["invocations"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return _commands(invocations)


def _commands(invocations: Any) -> set[str]:
    """The commands a ``meta.json`` list of invocations records (none if it is not a list)."""
    if not isinstance(invocations, list):
        return set()
    return {str(entry["command"]) for entry in invocations if isinstance(entry, dict) and "command" in entry}


def make_output_dir(path: Path, what: str) -> Path:
    """Create directory ``path`` (and its parents) for writing; return it.

    Raises:
        ConfigError: it is a file, cannot be created or is not writable (names ``what``: the
            flag or field that chose it).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is a file; name a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{what}: cannot create {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: cannot write in {path} (permission denied)")
    return path


def _check_writable(path: Path) -> None:
    """Refuse, before anything runs, a run directory that cannot be made or written: ``path`` or a
    parent is a file, or the deepest existing parent is not writable.

    Raises:
        ConfigError: naming ``output_dir``/``name`` and the path at fault.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"name: the run directory {path} is a file; choose another name (name=...) or output_dir")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ConfigError(f"output_dir: {existing} is a file, so the run directory {path} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: cannot write in {existing} (permission denied), so not in {path}")


def _holds_no_work(path: Path) -> bool:
    """Whether run directory ``path`` holds only what :meth:`RunDir.open` writes (the config, the
    invocations, the log) and empty folders: a run that stopped before finishing anything, which a
    new config or command may take over."""
    return all(
        child.name in ("config.yaml", META_FILE, LOG_FILE) or (child.is_dir() and not any(p.is_file() for p in child.rglob("*")))
        for child in path.iterdir()
    )


def _read_meta(meta_file: Path) -> dict[str, Any]:
    """A run directory's ``meta.json`` (empty if there is none), refused if leafe cannot read it
    (a hand edit, a bad copy).

    Raises:
        ConfigError: naming the file, with the way out (``--fresh``).
    """
    if not meta_file.exists():
        return {}
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{meta_file}: unreadable ({error}); pass --fresh to start the run over") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("invocations"), list):
        raise ConfigError(f"{meta_file}: has no list of invocations, so leafe did not write it; pass --fresh to start the run over")
    return meta


@dataclass(frozen=True)
class RunDir:
    """An opened run directory."""

    path: Path
    resumed: bool

    @staticmethod
    def check(cfg: ExperimentConfig, command: str, fresh: bool = False) -> bool:
        """Whether :meth:`open` would resume ``cfg.run_dir`` for ``command``; touches nothing.

        Raises:
            ConfigError: as :meth:`open`.
        """
        path = cfg.run_dir
        config_file = path / "config.yaml"
        _check_writable(path)
        if fresh and path.exists():
            if Path(cfg.output_dir).resolve() not in path.resolve().parents:
                raise ConfigError(f"name: {cfg.name!r} does not name a directory inside {cfg.output_dir}")
            return False
        if not config_file.exists() or _holds_no_work(path):  # e.g. left by a run whose model failed to load
            return False
        other = sorted(_commands(_read_meta(path / META_FILE).get("invocations")) - {command})
        if other:  # e.g. `leafe eval` in a `leafe run` directory would replace the run's passk.png
            raise ConfigError(
                f"run directory {path} holds a `leafe {other[0]}` run; `leafe {command}` would mix its own "
                "files into it\nchoose another name (name=...) or pass --fresh to delete the old run"
            )
        try:
            old = yaml.safe_load(config_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{config_file}: unreadable ({first_line(error)}); pass --fresh to start the run over") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{config_file}: not a config leafe wrote; pass --fresh to start the run over")
        try:  # fields added to the schema since that run get their defaults
            old = config_from_dict(old).model_dump(mode="json")
        except ConfigError:
            pass  # a field since removed or renamed: compare as written
        blocking = [c for c in config_changes(old, cfg.model_dump(mode="json")) if c.split(":")[0] not in RESUMABLE_CHANGES]
        if blocking:
            raise ConfigError(
                f"run directory {path} holds a run with a different config:\n  "
                + "\n  ".join(blocking)
                + "\nchoose another name (name=...) or pass --fresh to delete the old run"
            )
        return True

    @classmethod
    def open(cls, cfg: ExperimentConfig, command: str, fresh: bool = False) -> RunDir:
        """Create or resume ``cfg.run_dir`` for ``command``; set up logging into it.

        Raises:
            ConfigError: the directory holds a run of another command, or one whose config
                differs in a field that changes results (and ``fresh`` is False); it cannot be
                made or written; its config.yaml or meta.json cannot be read.
        """
        path = cfg.run_dir
        config_file = path / "config.yaml"
        resumed = cls.check(cfg, command, fresh)
        if fresh and path.exists():
            shutil.rmtree(path)
        make_output_dir(path, "output_dir")
        write_atomic(config_file, config_to_yaml(cfg))
        meta_file = path / META_FILE
        # a run resumed keeps its history; a new one (or one that had finished nothing) starts its own
        meta = json.loads(meta_file.read_text()) if resumed and meta_file.exists() else {"seed": cfg.seed, "invocations": []}
        meta["invocations"].append(
            {
                "command": command,
                "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "resumed": resumed,
                "versions": package_versions(),
                "git_commit": _git_commit(),
                "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "system": platform.system()},
            }
        )
        write_atomic(meta_file, json.dumps(meta, indent=2))
        _log_to(path / LOG_FILE)
        return cls(path=path, resumed=resumed)


def _log_to(log_file: Path) -> None:
    root = logging.getLogger("leafe")
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
