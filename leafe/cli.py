"""The ``leafe`` command: builds objects from a config and calls one function per command.

    leafe run CONFIG [dotted.key=value ...] [--fresh]
    leafe eval CONFIG [dotted.key=value ...] [--fresh]
    leafe sft CONFIG [dotted.key=value ...] --data SFT_JSONL --out DIR [--model MODEL]
    leafe explore CONFIG [dotted.key=value ...] [--fresh]
    leafe grpo CONFIG [dotted.key=value ...] [--fresh]
    leafe early-experience CONFIG [dotted.key=value ...] [--fresh]
    leafe check-env CONFIG [dotted.key=value ...] [--tasks N]
    leafe view RUN_DIR
    leafe compare [LABEL=]RUN_OR_METRICS ... [--out DIR] [--title TITLE]
    leafe prepare-model [MODEL]

Configs are validated before torch or transformers are imported, so a bad field fails at once.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from leafe.config import ConfigError, ExperimentConfig, load_config
from leafe.envs.base import EnvUnreachable
from leafe.envs.checker import EnvCheckError
from leafe.policy.errors import BackendError, RequestTooLarge
from leafe.workers import WorkerError, stop_workers


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafe", description="Train LLM agents to recover from their own mistakes.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="the whole experiment: eval base, explore, build data, SFT, eval trained, report")
    run.add_argument("config", help="experiment YAML")
    run.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. sft.objective=reh_only run.rounds=2")
    run.add_argument("--fresh", action="store_true", help="delete the run directory and start over")

    sft = commands.add_parser("sft", help="LEAFE stage 2 training alone, on an sft.jsonl (accelerate launch -m leafe.cli sft ... for GPUs)")
    sft.add_argument("config", help="experiment YAML (its sft section)")
    sft.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. sft.finetune=full")
    sft.add_argument("--data", required=True, help="an sft.jsonl written by leafe run (RUN/round-1/data/sft.jsonl)")
    sft.add_argument("--out", required=True, help="output directory (checkpoints/ and model/); a rerun resumes")
    sft.add_argument("--model", default=None, help="model to fine-tune (default: policy.model)")

    evaluate = commands.add_parser("eval", help="Pass@k of a policy on an environment's test tasks")
    evaluate.add_argument("config", help="experiment YAML")
    evaluate.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. policy.temperature=0.5")
    evaluate.add_argument("--fresh", action="store_true", help="delete the run directory and start over")

    explore = commands.add_parser("explore", help="LEAFE stage 1: reflective rollback exploration trees (or a baseline)")
    explore.add_argument("config", help="experiment YAML (its explore section)")
    explore.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. explore.reflector=env")
    explore.add_argument("--fresh", action="store_true", help="delete the run directory and start over")

    grpo = commands.add_parser("grpo", help="multi-turn GRPO training (the outcome-driven baseline); writes OUTPUT_DIR/NAME/model")
    grpo.add_argument("config", help="experiment YAML (its grpo, policy and rollout sections)")
    grpo.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. grpo.steps=50 grpo.group_size=8")
    grpo.add_argument("--fresh", action="store_true", help="delete the run directory and start over")

    early = commands.add_parser(
        "early-experience", help="Early Experience baseline (world modelling or self-reflection at expert states); writes OUTPUT_DIR/NAME/model"
    )
    early.add_argument("config", help="experiment YAML (its early_experience, sft, policy and rollout sections)")
    early.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. early_experience.variant=sr")
    early.add_argument("--fresh", action="store_true", help="delete the run directory and start over")

    check = commands.add_parser("check-env", help="verify determinism, replay and snapshot/restore of an environment")
    check.add_argument("config", help="experiment YAML (its env section is checked)")
    check.add_argument("overrides", nargs="*", default=[], help="dotted overrides")
    check.add_argument("--tasks", type=_positive_int, default=10, help="tasks per split to check")

    view = commands.add_parser("view", help="write RUN_DIR/view.html: a static page showing what the agent did")
    view.add_argument("run_dir", help="a run directory (e.g. runs/sokoban-quickstart)")

    compare = commands.add_parser("compare", help="finished evaluations side by side: Pass@k table, paired differences, one plot")
    compare.add_argument("runs", nargs="+", metavar="[LABEL=]PATH",
                         help="a metrics.json, a leafe eval run directory or a leafe run directory (base and every round); "
                              "the first is the reference of the differences")
    compare.add_argument("--out", default="runs/compare", help="where compare.md, compare.json and passk.png go (default: runs/compare)")
    compare.add_argument("--title", default="Pass@k on the same test tasks", help="title of the table and the plot")

    serve = commands.add_parser("serve", help="serve a policy over an OpenAI-compatible HTTP API (/v1/completions)")
    serve.add_argument("overrides", nargs="*", default=[], help="dotted overrides of the policy section, e.g. policy.model=DIR")
    serve.add_argument("--config", help="experiment YAML whose policy section is served (default: defaults)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (0: any free port)")

    prepare = commands.add_parser("prepare-model", help="convert/cache a model so later runs start fast")
    prepare.add_argument("model", nargs="?", default=None, help="model alias, directory or hub id (default: embedded)")
    return parser


def _load_policy(cfg: ExperimentConfig, model: str | None = None, field: str = "policy.model"):
    """The policy serving ``model`` (default ``policy.model``); a load failure names ``field``."""
    from leafe.policy import load_policy_for

    hint = ("\n  use 'smollm2-135m-instruct' (embedded), a local Hugging Face model directory, or a hub id "
            "that is in the local cache or reachable")
    return load_policy_for(field, cfg.policy, model or cfg.policy.model, hint=hint)


def _prepare(cfg: ExperimentConfig, command: str, split: str, count: int, fresh: bool):
    """(agent, tasks, run dir, reflector policy) of a playing command. Everything that can fail on bad input is
    built before the run directory records the config."""
    from leafe.agent import build_agent, select_tasks
    from leafe.envs import build_env
    from leafe.runs import RunDir

    resumes = RunDir.check(cfg, command, fresh)  # an unusable or refused run directory fails before anything loads
    make_env, task_source = build_env(cfg.env)
    section = {"early-experience": "early_experience"}.get(command, command)
    tasks = select_tasks(task_source, split, count, f"{section}.num_tasks")
    distributed = cfg.workers.num > 1  # Ray workers load their own policies; this process none
    reflects = cfg.explore.method != "independent" if command == "explore" else cfg.eval.method == "reflexion"
    judged = reflects and cfg.explore.reflector == "model"
    reflector_policy = None
    if distributed:
        from leafe.workers import OnWorkers, check_model, start_workers

        check_model(cfg.policy, cfg.policy.model, "policy.model")
        if judged and cfg.explore.reflector_model:
            check_model(cfg.policy, cfg.explore.reflector_model, "explore.reflector_model")
        # The workers build their policies now, so a model they cannot load fails before the run is recorded.
        start_workers(cfg, _unfinished(cfg, command, tasks) if resumes else len(tasks), explores=command == "explore")
        agent = build_agent(cfg, make_env, task_source, OnWorkers(cfg.policy.model))
    else:
        agent = build_agent(cfg, make_env, task_source, _load_policy(cfg))
        if judged:
            reflector_policy = _load_policy(cfg, cfg.explore.reflector_model, "explore.reflector_model")
    run = RunDir.open(cfg, command=command, fresh=fresh)
    if run.resumed:
        print(f"resuming {run.path}", file=sys.stderr)
    return agent, tasks, run, reflector_policy


def _unfinished(cfg: ExperimentConfig, command: str, tasks) -> int:
    """How many of ``tasks`` the run in ``cfg.run_dir`` has not finished (a finished run's rerun
    starts no Ray workers)."""
    if command == "explore":
        from leafe.method.explore_run import TREES_FILE
        from leafe.method.tree import load_trees

        done = load_trees(cfg.run_dir / TREES_FILE)
        return sum(task.task_id not in done for task in tasks)
    from leafe.eval.evaluate import pending_jobs

    _jobs, _finished, todo = pending_jobs(cfg, cfg.run_dir, tasks)
    return len({job.task.task_id for job in todo})


def _one_process(cfg: ExperimentConfig, what: str) -> None:
    """Refuse ``workers.num > 1`` for a command that plays in this process only."""
    if cfg.workers.num > 1:
        raise ConfigError(
            f"workers.num: {what} plays in one process; Ray workers serve leafe eval (eval.method: sample), "
            "leafe explore and leafe run (set workers.num=1)"
        )


def _eval(cfg: ExperimentConfig, fresh: bool) -> None:
    from leafe.eval.evaluate import evaluate

    if cfg.eval.method == "reflexion":
        _one_process(cfg, "eval.method: reflexion")
    agent, tasks, run, reflector_policy = _prepare(cfg, "eval", cfg.eval.split, cfg.eval.num_tasks, fresh)
    if cfg.eval.method == "reflexion":
        from leafe.eval.reflexion import evaluate_reflexion

        evaluate_reflexion(cfg, run, agent, tasks, reflector_policy)
    else:
        evaluate(cfg, run, agent, tasks)
    print(f"report: {run.path / 'summary.md'}  plot: {run.path / 'passk.png'}")


def _explore(cfg: ExperimentConfig, fresh: bool) -> None:
    from leafe.method.explore_run import run_exploration
    from leafe.viewer import write_view

    agent, tasks, run, reflector_policy = _prepare(cfg, "explore", cfg.explore.split, cfg.explore.num_tasks, fresh)
    run_exploration(cfg, run, agent, tasks, reflector_policy)
    print(f"summary: {run.path / 'explore_summary.md'}  trees: {write_view(run.path)}")


def _early_experience(cfg: ExperimentConfig, fresh: bool) -> None:
    from leafe.method.early_experience_run import collect_all, train_early_experience

    _one_process(cfg, "leafe early-experience")
    section = cfg.early_experience
    agent, tasks, run, _ = _prepare(cfg, "early-experience", section.split, section.num_tasks, fresh)
    try:
        states, cost, seconds = collect_all(cfg, run, agent, tasks)
        prompter = agent.prompter
        release = getattr(agent.policy, "release_memory", None)
        if release is not None:
            release()
        del agent  # the collecting policy's memory goes back before training loads the model again
        gc.collect()
        summary = train_early_experience(cfg, run, states, prompter, cost, seconds, len(tasks))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(f"model: {summary['model_dir']}  summary: {run.path / 'summary.json'}\n"
          f"evaluate it: leafe eval CONFIG policy.model={summary['model_dir']} name={cfg.name}-eval")


def _check_env(cfg: ExperimentConfig, count: int) -> None:
    from leafe.envs import build_env
    from leafe.envs.checker import check_env

    make_env, task_source = build_env(cfg.env)
    for split in ("train", "test"):
        report = check_env(make_env, task_source.tasks(split, count), seed=cfg.seed)
        print(f"{cfg.env.name} {split}: OK {report}")


def _sft(cfg: ExperimentConfig, data: str, out: str, model: str | None) -> None:
    from pathlib import Path

    from leafe.runs import make_output_dir, read_jsonl
    from leafe.types import SFTExample

    path = Path(data)
    if path.is_dir():
        raise ConfigError(f"--data: {path} is a directory; pass the sft.jsonl in it (leafe run writes RUN/round-1/data/sft.jsonl)")
    if not path.is_file():
        raise ConfigError(f"--data: {path} does not exist")
    examples = []
    for number, record in enumerate(read_jsonl(path), start=1):
        try:
            examples.append(SFTExample.from_dict(record))
        except ValueError as error:
            raise ConfigError(f"--data: {path}, record {number}: not an SFT example leafe writes ({error})") from None
    if not examples:
        raise ConfigError(f"--data: {path} holds no SFT example (it is empty, or no line is a JSON object)")
    from leafe.policy.checkpoints import check_model_reference
    from leafe.policy.transformers_backend import resolve_device

    start, field = (model, "--model") if model else (cfg.policy.model, "policy.model")
    check_model_reference(start, field)  # trained here, whatever serves it
    resolve_device(cfg.policy.device)
    make_output_dir(Path(out), "--out")
    from leafe.trainers.sft import train_sft

    try:
        result = train_sft(cfg.sft, start, examples, Path(out), seed=cfg.seed, device=cfg.policy.device, model_field=field)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # once, also under torchrun / accelerate launch
        print(f"model: {result.model_dir}  ({result.steps} steps, {result.tokens_per_s} tokens/s)")


# What from_pretrained reads from a hub repository (not, e.g., the original/*.pth copies some hold).
_HUB_MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken", "*.py"]


def _prepare_model(model: str | None) -> None:
    """Convert the embedded model, merge a LoRA adapter or fetch a hub model into the local cache;
    print the folder later runs load."""
    from leafe.policy.checkpoints import check_model_reference, servable_model
    from leafe.policy.embedded import DEFAULT_MODEL, resolve_model
    from leafe.policy.errors import first_line

    model = model or DEFAULT_MODEL
    check_model_reference(model, "MODEL")
    resolved = resolve_model(model)
    if not os.path.isdir(resolved):  # a hub id: download it now (or find it in the cache)
        from huggingface_hub import snapshot_download

        try:
            resolved = snapshot_download(resolved, allow_patterns=_HUB_MODEL_FILES)
        except Exception as error:  # the hub client raises many kinds (offline, unknown repo, auth)
            raise ConfigError(f"MODEL: cannot fetch {model!r} from the Hugging Face hub or its cache: {first_line(error)}") from None
    try:
        print(servable_model(resolved))
    except (OSError, ValueError) as error:
        raise ConfigError(f"MODEL: cannot prepare {model!r}: {first_line(error)}") from None


def _serve(args: argparse.Namespace) -> None:
    from leafe.config import apply_overrides, config_from_dict
    from leafe.policy.server import serve

    stray = [text for text in args.overrides if not text.startswith("policy.")]
    if stray:
        raise ConfigError(f"override {stray[0]!r}: leafe serve reads only the policy section (policy.model=..., policy.backend=...)")
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(apply_overrides({}, args.overrides), source="command line")
    policy = _load_policy(cfg)
    try:
        serve(policy, cfg.policy.model, host=args.host, port=args.port)
    except OSError as error:  # e.g. the port is taken
        raise ConfigError(f"--host/--port: cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with ``key=value`` words after an option (``leafe eval C --fresh
    name=x``) taken as overrides, as before it (``compare``: as more paths)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    target = "runs" if args.command == "compare" else "overrides"
    words = [word for word in extra if "=" in word and not word.startswith("-")] if hasattr(args, target) else []
    unknown = [word for word in extra if word not in words]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if words:
        getattr(args, target).extend(words)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leafe`` command; returns the exit status."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the terminal shows warnings; leafe.log gets INFO too
        handler.setLevel(logging.WARNING)
    try:
        if args.command == "prepare-model":
            _prepare_model(args.model)
            return 0
        if args.command == "view":
            from leafe.viewer import write_view

            print(write_view(args.run_dir))
            return 0
        if args.command == "compare":
            from leafe.eval.compare import find_evaluations, write_comparison

            paths = write_comparison([e for item in args.runs for e in find_evaluations(item)], args.out, args.title)
            print(paths["markdown"].read_text())
            print(f"table: {paths['markdown']}  plot: {paths['plot']}")
            return 0
        if args.command == "serve":
            _serve(args)
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "run":
            from leafe.pipeline import run_pipeline

            run_pipeline(cfg, fresh=args.fresh)
            print(f"report: {cfg.run_dir / 'report.md'}  plot: {cfg.run_dir / 'passk.png'}  episodes: {cfg.run_dir / 'view.html'}")
        elif args.command == "sft":
            _sft(cfg, args.data, args.out, args.model)
        elif args.command == "eval":
            _eval(cfg, args.fresh)
        elif args.command == "explore":
            _explore(cfg, args.fresh)
        elif args.command == "grpo":
            from leafe.trainers.grpo import train_grpo

            _one_process(cfg, "leafe grpo (its rollouts run on the weights being trained)")
            result = train_grpo(cfg, fresh=args.fresh)
            print(f"model: {result.model_dir}  ({result.steps} steps, {result.episodes} episodes)  metrics: "
                  f"{cfg.run_dir / 'metrics.jsonl'}\nevaluate it: leafe eval CONFIG policy.model={result.model_dir} name={cfg.name}-eval")
        elif args.command == "early-experience":
            _early_experience(cfg, args.fresh)
        elif args.command == "check-env":
            _check_env(cfg, args.tasks)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except EnvCheckError as error:
        print(f"check-env failed: {error}", file=sys.stderr)
        return 1
    except RequestTooLarge as error:
        print(f"error: {error}\n  finished episodes are saved; rerun the same command to resume", file=sys.stderr)
        return 2
    except WorkerError as error:
        print(f"error: {error}\n  finished episodes are saved; rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what finished is on disk (records are appended as they finish)
        resumable = args.command in ("run", "eval", "explore", "grpo", "early-experience", "sft")
        print("\ninterrupted" + ("; finished work is saved: rerun the same command to resume" if resumable else ""), file=sys.stderr)
        return 130
    except EnvUnreachable as error:  # an environment's server (WebShop) cannot be reached; the message names the field
        resume = "" if args.command == "check-env" else "\n  finished episodes are saved; rerun the same command to resume"
        print(f"error: {error}{resume}", file=sys.stderr)
        return 1
    except BackendError as error:
        print(f"error: the inference server failed: {error}\n  finished episodes are saved; rerun the same "
              "command to resume", file=sys.stderr)
        return 1
    finally:
        stop_workers()  # Ray workers started for a call that never came (nothing left to play)
    return 0


if __name__ == "__main__":
    sys.exit(main())
