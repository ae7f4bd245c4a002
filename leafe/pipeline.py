"""``leafe run``: the whole LEAFE experiment in one resumable command.

    eval base -> [explore -> build data -> SFT -> eval] x run.rounds -> report + Pass@k plot

Round r explores with the model of round r-1 (the base model for round 1) and fine-tunes that
same model on its own corrections, so corrections compound over rounds (iterated LEAFE; the
paper runs one round). Every evaluation uses the same test tasks and seed (paired comparison).

    runs/<name>/
      eval-base/                 leafe eval of the base model, or of run.init_from's (e.g. a GRPO run)
      round-1/explore/           trees.jsonl, explore_summary.*, view.html
      round-1/data/              sft.jsonl (TRL / LLaMA-Factory / axolotl readable), README.md
      round-1/sft/               checkpoints/, model/ (the trained Hugging Face checkpoint)
      round-1/eval/              leafe eval of the trained model
      report.md, passk.png, report.json, view.html (links every stage's page)

Each stage writes ``stage.json`` when it finishes. A rerun skips finished stages (without loading
a model for them) and resumes the interrupted one where it stopped: exploration at the next
unexplored task, SFT at its last checkpoint, evaluation at the next unplayed episode.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from leafe.agent import Agent, build_agent, build_prompter, select_tasks
from leafe.config import ConfigError, ExperimentConfig
from leafe.envs import build_env
from leafe.eval.passk import PassAtK
from leafe.eval.report import REPORT_FILE, markdown_table, plot_pass_at_k, print_table
from leafe.method.distill import KINDS, build_examples, export_record
from leafe.method.tree import load_trees
from leafe.policy.checkpoints import looks_like_path
from leafe.runs import RunDir, append_jsonl, make_output_dir, read_jsonl, write_atomic
from leafe.prompting import Prompter
from leafe.types import SFTExample, Task

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
DATA_FILE = "sft.jsonl"


def _finished(folder: Path, key: dict[str, Any], legacy: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The recorded result of a stage finished with the same ``key`` settings (or ``legacy``: the
    key as an earlier leafe wrote it), else None."""
    marker = folder / STAGE_FILE
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("%s: unreadable (%s); the stage runs again", marker, error)
        return None
    if not isinstance(record, dict) or "result" not in record:
        return None
    return record["result"] if record.get("key") == key or (legacy is not None and record.get("key") == legacy) else None


def _model_key(model: str, run: Path) -> str:
    """``model`` as stage keys record it: relative to the run directory when it lies inside it
    (a run moved or renamed still matches its records), else as given."""
    path = Path(os.path.expanduser(model))
    if not looks_like_path(model) and not path.exists():
        return model  # a hub id or the embedded model's name
    for inside, root in ((Path(os.path.abspath(path)), Path(os.path.abspath(run))), (path.resolve(), run.resolve())):
        try:  # by the path's text first (a folder since deleted, or symlinked from elsewhere), then resolved
            return inside.relative_to(root).as_posix()
        except ValueError:
            continue
    return model


def _trained_model(sft: dict[str, Any], folder: Path, model: str) -> str:
    """The model round ``folder`` ends with: its SFT output as found in this run directory
    (``sft/model``, or ``sft/model/merged``), or ``model`` when SFT was skipped. Stage records
    hold the path where the run was first written; the run may have moved since."""
    if "skipped" in sft:
        return model
    trained = folder / "sft" / "model"
    return str(trained / "merged" if Path(sft["model_dir"]).name == "merged" else trained)


def _finish(folder: Path, key: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    make_output_dir(folder, "run directory")
    write_atomic(folder / STAGE_FILE, json.dumps({"key": key, "result": result}, indent=2, default=str) + "\n")
    return result


class _Policies:
    """Holds at most one loaded policy (and the explore reflector's), loading on demand."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.model: str | None = None
        self.policy: Any = None
        self.reflector: Any = None

    def get(self, model: str, field: str = "policy.model") -> Any:
        """The policy of ``model``, loaded if another one is held; a failure to load names ``field``."""
        if self.model != model:
            self.release()
            from leafe.policy import load_policy_for

            if self.cfg.workers.num > 1:  # the Ray workers load their own copies
                from leafe.workers import OnWorkers, check_model

                check_model(self.cfg.policy, model, field)
                self.policy, self.model = OnWorkers(model), model
                return self.policy
            self.policy, self.model = load_policy_for(field, self.cfg.policy, model), model
        return self.policy

    def reflector_policy(self) -> Any:
        section = self.cfg.explore
        if section.reflector != "model" or section.method == "independent" or self.cfg.workers.num > 1:
            return None
        if self.reflector is None:
            from leafe.policy import load_policy_for

            self.reflector = load_policy_for("explore.reflector_model", self.cfg.policy, section.reflector_model)
        return self.reflector

    def release(self) -> None:
        """Drop the loaded policy (before training, to give its memory back) and hand freed memory
        back to the OS (what training freed must not stay in the process under the next engine)."""
        from leafe.policy.memory import give_back_freed_memory

        self.policy, self.model = None, None
        gc.collect()
        give_back_freed_memory()


def variant_name(cfg: ExperimentConfig) -> str:
    """The trained model's label in reports: the method, or which ablation it is."""
    name = {"leafe": "LEAFE", "cf_only": "L_cf only", "reh_only": "L_reh only"}[cfg.sft.objective]
    extras = []
    if cfg.explore.method != "leafe":
        extras.append(f"{cfg.explore.method} exploration")
    if cfg.explore.experience_window == 0:
        extras.append("no summary")
    return f"{name} ({', '.join(extras)})" if extras else name


def _with_model(cfg: ExperimentConfig, model: str) -> ExperimentConfig:
    return cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"model": model})})


def _sub_run(folder: Path) -> RunDir:
    make_output_dir(folder, "run directory")
    return RunDir(path=folder, resumed=any(folder.iterdir()))


def _start_model(cfg: ExperimentConfig, check: bool) -> tuple[str, str]:
    """The model the first round starts from and the setting that names it: ``run.init_from``
    (e.g. a GRPO run: LEAFE starts from its checkpoint, as in the paper) or ``policy.model``.
    With ``check`` (a new run; a resumed one may not need it any more) it is checked with the
    explore reflector's and ``policy.device`` (SFT runs in this process), so a typo fails before
    anything runs."""
    from leafe.policy import check_before_loading
    from leafe.policy.transformers_backend import resolve_device

    if cfg.run.init_from:
        from leafe.trainers.grpo import resolve_init

        model, field = resolve_init(cfg.run.init_from), "run.init_from"
    else:
        model, field = cfg.policy.model, "policy.model"
    if check:  # (with Ray workers: the paths as this node sees them)
        check_before_loading(cfg.policy, model, field, device=False)
        if cfg.explore.method != "independent" and cfg.explore.reflector == "model" and cfg.explore.reflector_model:
            check_before_loading(cfg.policy, cfg.explore.reflector_model, "explore.reflector_model", device=False)
        resolve_device(cfg.policy.device)  # SFT runs in this process
    return model, field


def run_pipeline(cfg: ExperimentConfig, fresh: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment of ``cfg``; returns what ``report.json`` holds.

    Raises:
        ConfigError: ``eval.method`` is not ``sample`` (Reflexion chains are ``leafe eval``'s).
    """
    if cfg.eval.method != "sample":
        raise ConfigError(
            f"eval.method={cfg.eval.method!r}: `leafe run` evaluates its models by sampling (eval.method: sample); "
            "run the Reflexion evaluation with `leafe eval`"
        )
    if cfg.explore.split == "test" and cfg.eval.split == "test":
        raise ConfigError(
            "explore.split: `leafe run` would train on the test tasks it then evaluates on; explore the train split "
            "(explore.split: train) or evaluate elsewhere"
        )
    console = console or Console(stderr=True)
    make_env, task_source = build_env(cfg.env)
    explore_tasks = select_tasks(task_source, cfg.explore.split, cfg.explore.num_tasks, "explore.num_tasks")
    eval_tasks = select_tasks(task_source, cfg.eval.split, cfg.eval.num_tasks, "eval.num_tasks")
    # a model that cannot load fails before the run directory records the config
    model, field = _start_model(cfg, check=not RunDir.check(cfg, "run", fresh))
    fields = {model: field}  # model -> what a failure to load it names: the setting, or the round that trained it
    run = RunDir.open(cfg, command="run", fresh=fresh)
    if run.resumed:
        console.print(f"resuming {run.path}")
    policies = _Policies(cfg)
    stages = ["eval base"] * cfg.run.eval_base + [
        f"round {r}: {stage}" for r in range(1, cfg.run.rounds + 1) for stage in ("explore", "data", "sft", "eval")
    ]
    counter = iter(range(1, len(stages) + 1))

    def stage(name: str) -> None:
        console.rule(f"[bold][{next(counter)}/{len(stages)}] {name}")

    def agent_for(model: str) -> Agent:
        return build_agent(_with_model(cfg, model), make_env, task_source, policies.get(model, fields[model]))

    eval_key = {"eval": cfg.eval.model_dump(mode="json"), "rollout": cfg.rollout.model_dump(mode="json")}
    evaluated: dict[str, tuple[PassAtK, Path]] = {}  # model -> its result and the folder that holds it

    def evaluate_model(model: str, folder: Path, label: str) -> tuple[PassAtK, Path]:
        if model in evaluated:  # SFT was skipped: the same model, the same test tasks and seeds
            console.print(f"{label}: the model did not change, reusing its evaluation")
            return evaluated[model]
        evaluated[model] = (_evaluate(model, folder, label), folder)
        return evaluated[model]

    def _evaluate(model: str, folder: Path, label: str) -> PassAtK:
        key = {**eval_key, "model": _model_key(model, run.path)}
        done = _finished(folder, key, legacy={**eval_key, "model": model})
        if done is not None:
            console.print(f"{label}: finished earlier")
            return PassAtK.from_dict(done)
        from leafe.eval.evaluate import evaluate

        agent = agent_for(model)  # loaded before the stage's folder is made: a model that fails leaves none
        result = evaluate(_with_model(cfg, model), _sub_run(folder), agent, eval_tasks)
        _finish(folder, key, result.to_dict())
        return result

    report: dict[str, Any] = {"name": cfg.name, "base_model": model, "rounds": []}
    curves: dict[str, PassAtK] = {}
    eval_dirs: dict[str, str] = {}  # curve label -> the folder (in the run) of its metrics.json and episodes

    def add_curve(label: str, result: tuple[PassAtK, Path]) -> None:
        curves[label], eval_dirs[label] = result[0], result[1].relative_to(run.path).as_posix()

    if cfg.run.eval_base:
        stage("eval base")
        label = "init" if cfg.run.init_from else "base"
        add_curve(label, evaluate_model(model, run.path / "eval-base", label))
    for round_index in range(1, cfg.run.rounds + 1):
        folder = run.path / f"round-{round_index}"
        stage(f"round {round_index}: explore")
        exploration = _explore(cfg, model, _model_key(model, run.path), folder / "explore", explore_tasks, agent_for, policies)
        stage(f"round {round_index}: data")
        data = _build_data(cfg, folder, build_prompter(cfg, make_env, task_source))
        stage(f"round {round_index}: sft")
        sft = _train(cfg, model, _model_key(model, run.path), fields[model], folder, policies)
        trained = _trained_model(sft, folder, model)
        if trained != model:
            model, sft = trained, {**sft, "model_dir": trained}  # where it is now, if the run moved
            fields.setdefault(model, f"the model round {round_index} trained ({folder.name}/sft)")
        stage(f"round {round_index}: eval")
        add_curve(f"{variant_name(cfg)} round {round_index}", evaluate_model(model, folder / "eval", f"round {round_index} eval"))
        report["rounds"].append({"round": round_index, "explore": exploration, "data": data, "sft": sft, "model": model})
    policies.release()
    report["pass_at_k"] = {name: result.to_dict() for name, result in curves.items()}
    report["eval_dirs"] = eval_dirs
    _write_report(cfg, run.path, report, curves)
    from leafe.viewer import write_view

    write_view(run.path)  # view.html: an index of every stage's episodes and trees
    print_table(curves)
    return report


def _explore(
    cfg: ExperimentConfig,
    model: str,
    model_key: str,
    folder: Path,
    tasks: Sequence[Task],
    agent_for: Callable[[str], Agent],
    policies: _Policies,
) -> dict[str, Any]:
    key = {"explore": cfg.explore.model_dump(mode="json"), "rollout": cfg.rollout.model_dump(mode="json"), "model": model_key}
    done = _finished(folder, key, legacy={**key, "model": model})
    if done is not None:
        return done
    from leafe.method.explore_run import run_exploration
    from leafe.viewer import write_view

    agent = agent_for(model)  # loaded before the stage's folder is made: a model that fails leaves none
    summary = run_exploration(_with_model(cfg, model), _sub_run(folder), agent, tasks, policies.reflector_policy())
    write_view(folder)
    return _finish(folder, key, asdict(summary))


def _build_data(cfg: ExperimentConfig, folder: Path, prompter: Prompter) -> dict[str, Any]:
    from leafe.method.explore_run import TREES_FILE

    out = folder / "data"
    key = {"data": cfg.data.model_dump(mode="json"), "sft": {"objective": cfg.sft.objective, "beta": cfg.sft.beta}}
    done = _finished(out, key)
    if done is not None:
        return done
    trees = list(load_trees(folder / "explore" / TREES_FILE).values())
    examples = build_examples(
        trees,
        prompter,
        max_cf_per_task=cfg.data.max_cf_per_task,
        cf_target=cfg.data.cf_target,
        rehearsal_fraction=cfg.data.rehearsal_fraction,
        seed=cfg.seed,
    )
    weights = {"counterfactual": 1.0, "rehearsal": cfg.sft.beta}
    data_file = out / DATA_FILE
    out.mkdir(parents=True, exist_ok=True)
    data_file.unlink(missing_ok=True)  # rebuilt whole: building is cheap and deterministic
    for example in examples:
        append_jsonl(data_file, export_record(example, weights[example.kind]))
    write_atomic(out / "README.md", _DATA_README)
    write_atomic(out / "dataset_info.json", json.dumps(_LLAMA_FACTORY_INFO, indent=2) + "\n")
    counts = {kind: sum(e.kind == kind for e in examples) for kind in KINDS}
    counts["tasks_with_counterfactuals"] = len({e.task_id for e in examples if e.kind == "counterfactual"})
    counts["trees"] = len(trees)
    logger.info("data: %s", counts)
    return _finish(out, key, counts)


def _train(cfg: ExperimentConfig, model: str, model_key: str, field: str, folder: Path, policies: _Policies) -> dict[str, Any]:
    """Stage 2's SFT of ``model`` (recorded as ``model_key``; a failure to load it names
    ``field``) on ``folder``'s data into ``folder/sft``; its result, or the recorded one."""
    out = folder / "sft"
    key = {"sft": cfg.sft.model_dump(mode="json"), "model": model_key}
    done = _finished(out, key, legacy={**key, "model": model})
    if done is not None:
        return done
    data_file = folder / "data" / DATA_FILE
    try:
        examples = [SFTExample.from_dict(record) for record in read_jsonl(data_file)]
    except ValueError as error:
        raise ConfigError(f"{data_file}: {error}; was it edited? delete {data_file.parent} to build the data again") from None
    from leafe.trainers.sft import objective_weights, train_sft

    weights = dict(zip(KINDS, objective_weights(cfg.sft)))
    if not any(weights.get(example.kind, 0.0) > 0 for example in examples):
        # Nothing to learn this round (no successful episode of the kinds the objective trains on):
        # the model carries over unchanged rather than ending a multi-round run.
        reason = f"no {'/'.join(kind for kind in KINDS if weights[kind] > 0)} examples for sft.objective={cfg.sft.objective}"
        logger.warning("sft: skipped, %s; the model stays %s", reason, model)
        return _finish(out, key, {"skipped": reason, "model_dir": model, "steps": 0, "tokens_per_s": 0.0, "train_loss": None})
    policies.release()

    try:
        result = train_sft(cfg.sft, model, examples, out, seed=cfg.seed, device=cfg.policy.device, model_field=field)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return _finish(out, key, result.to_dict())


def _write_report(cfg: ExperimentConfig, path: Path, report: dict[str, Any], curves: dict[str, PassAtK]) -> None:
    title = f"{cfg.name}: LEAFE on {cfg.env.name} ({report['base_model']})"
    plot_pass_at_k(curves, path / "passk.png", title)
    write_atomic(path / REPORT_FILE, json.dumps(report, indent=2, default=str) + "\n")
    first = next(iter(curves.values()))
    lines = [
        f"# {title}",
        "",
        f"Pass@k on {first.num_tasks} {cfg.eval.split} tasks, n={first.samples_per_task} episodes each, "
        f"{cfg.rollout.max_steps} turns per episode, seed {cfg.seed}; unbiased estimator, "
        f"{first.confidence:.0%} bootstrap CI over tasks.",
        "",
        markdown_table(curves),
        "![Pass@k](passk.png)",
        "",
        "| round | tasks explored | solved | corrected branches | env steps | model tokens | cf examples | reh examples | SFT steps | SFT tokens/s | train loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["rounds"]:
        explore, data, sft = entry["explore"], entry["data"], entry["sft"]
        lines.append(
            f"| {entry['round']} | {explore['tasks']} | {explore['solved_tasks']} | {explore['successful_corrected_branches']} "
            f"| {explore['env_steps']} | {explore['model_tokens']} | {data['counterfactual']} | {data['rehearsal']} "
            f"| {sft['steps']} | {sft['tokens_per_s']} | {sft['train_loss'] if 'skipped' not in sft else 'skipped: ' + sft['skipped']} |"
        )
    lines += [
        "",
        f"Exploration: {cfg.explore.method}, reflector {cfg.explore.reflector}, budget {cfg.explore.max_env_steps} turns per task. "
        f"Objective: {cfg.sft.objective} (beta={cfg.sft.beta}), {cfg.sft.finetune} fine-tuning, {cfg.sft.epochs} epochs, "
        f"lr {cfg.sft.learning_rate}.",
        "",
    ]
    write_atomic(path / "report.md", "\n".join(lines))


_DATA_README = """# LEAFE stage-2 data

`sft.jsonl`: one example per line, a target turn and the prompt the policy sees before it.

- `kind`: `counterfactual` (L_cf: a corrected action, prompt WITHOUT the experience summary)
  or `rehearsal` (L_reh: a turn of a successful rollout); `weight`: 1 or beta.
- `prompt` / `completion`: TRL `SFTTrainer` prompt-completion format (loss on the completion only;
  keep just these two columns, e.g. `dataset.select_columns(["prompt", "completion"])`).
- `messages`: chat format with a per-message `train` flag (only the last, target turn is true):
  axolotl `type: chat_template` with `message_field_training: train`; LLaMA-Factory `sharegpt`
  with `mask_history: true` (see `dataset_info.json`).
- `segments`: (completion prompt format only) axolotl's template-free `input_output` format,
  `label: true` on the target text.

With the completion prompt format, `prompt` is raw text that ends in `Thought:`; train without a
chat template (TRL: plain prompt-completion; LLaMA-Factory: `template: empty`) so that training
sees what the policy sees at test time.
"""

_LLAMA_FACTORY_INFO = {
    "leafe": {
        "file_name": DATA_FILE,
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"},
    }
}
