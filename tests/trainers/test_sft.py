"""The SFT trainer: only reply tokens are trained, the loss is L_cf + beta * L_reh, training
moves the weights, the output loads in every in-process backend, and a killed run resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from leafe.algos.sft_loss import IGNORE
from leafe.config import SFTConfig
from leafe.trainers.sft import DONE_FILE, Collator, LeafeSFTTrainer, encode_example, train_sft
from leafe.types import SFTExample

PROMPT = "Push the box onto the goal.\nObservation:\nPlayer: row 2, col 2.\nThought:"


def _examples(count=8):
    moves = ["up", "down", "left", "right"]
    return [
        SFTExample(
            "counterfactual" if i % 2 else "rehearsal",
            f"{PROMPT} (room {i})" if i % 3 else PROMPT,
            f" The box is {moves[i % 4]} of me.\nAction: {moves[i % 4]}\n\n",
            f"t{i}",
            0,
            0,
        )
        for i in range(count)
    ]


def _fast(**overrides):
    base = dict(batch_size=2, gradient_accumulation_steps=1, epochs=1.0, learning_rate=1e-2, logging_steps=1, save_steps=100)
    return SFTConfig(**{**base, **overrides})


def test_labels_mask_the_prompt_and_keep_exactly_the_reply(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = _examples()[0]
    encoded = encode_example(tokenizer, example)
    prompt_len = len(tokenizer(example.prompt)["input_ids"])
    assert encoded.labels[:prompt_len] == [IGNORE] * prompt_len
    assert IGNORE not in encoded.labels[prompt_len:]
    assert tokenizer.decode([t for t in encoded.labels if t != IGNORE]) == example.completion
    assert tokenizer.decode(encoded.input_ids) == example.prompt + example.completion
    chat = SFTExample("rehearsal", [{"role": "user", "content": "Observation: x"}], "Thought: go\nAction: up", "t", 0, 0)
    encoded = encode_example(tokenizer, chat)
    trained = tokenizer.decode([t for t in encoded.labels if t != IGNORE])
    assert trained.startswith("Thought: go\nAction: up") and "<|im_end|>" in trained
    assert "Observation" not in trained


def test_trainer_loss_equals_the_masked_loss_of_a_full_forward(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples = _examples(4)
    batch = Collator(tokenizer.pad_token_id)([vars(encode_example(tokenizer, e)) for e in examples])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = LeafeSFTTrainer(model=model, args=args, beta=0.25)
    loss = trainer.compute_loss(model, dict(batch))

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    mask = labels != IGNORE
    kinds = batch["kind"][:, None].expand_as(labels)
    cf = nll[mask & (kinds == 0)].mean()
    reh = nll[mask & (kinds == 1)].mean()
    assert torch.allclose(loss, cf + 0.25 * reh, atol=1e-5)
    # Changing a prompt-token label cannot change the loss: it is never a target.
    batch["labels"][0, 0] = IGNORE
    assert torch.allclose(trainer.compute_loss(model, dict(batch)), loss)


def test_full_finetune_moves_weights_and_serves_in_native_and_transformers(tiny_model_dir, tmp_path):
    from leafe.config import PolicyConfig
    from leafe.policy import load_policy
    from leafe.policy.base import GenerationRequest, SamplingParams

    result = train_sft(_fast(finetune="full"), str(tiny_model_dir), _examples(), tmp_path / "sft", seed=0)
    assert result.examples == {"counterfactual": 4, "rehearsal": 4} and result.steps == 4
    assert result.tokens > result.target_tokens > 0 and result.train_loss > 0
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    texts = set()
    for backend in ("native", "transformers"):
        policy = load_policy(PolicyConfig(backend=backend), result.model_dir)
        texts.add(policy.generate([GenerationRequest(PROMPT, seed=0)], params)[0].text)
    assert len(texts) == 1  # both backends read the same trained weights
    again = train_sft(_fast(finetune="full"), str(tiny_model_dir), _examples(), tmp_path / "sft", seed=0)
    assert again == result  # finished: nothing retrained


def test_lora_adapter_is_servable_and_differs_from_the_base(tiny_model_dir, tmp_path):
    from leafe.config import PolicyConfig
    from leafe.policy import load_policy
    from leafe.policy.base import GenerationRequest, SamplingParams

    result = train_sft(_fast(finetune="lora", lora_r=4, learning_rate=5e-2), str(tiny_model_dir), _examples(), tmp_path / "lora")
    model_dir = Path(result.model_dir)
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    request = [GenerationRequest(PROMPT, seed=0)]
    trained = load_policy(PolicyConfig(backend="native"), str(model_dir)).generate(request, params)[0]
    base = load_policy(PolicyConfig(backend="native"), str(tiny_model_dir)).generate(request, params)[0]
    assert trained.text != base.text


def test_lora_training_with_the_same_seed_repeats_bit_for_bit(tiny_model_dir, tmp_path):
    """peft draws the initial adapters from torch's global generator: the seed must set it, or
    two runs in one process (or in two) start from different adapters."""
    from safetensors.torch import load_file

    def adapter(name, seed):
        cfg = _fast(finetune="lora", lora_r=4, lora_dropout=0.1, learning_rate=5e-2)
        result = train_sft(cfg, str(tiny_model_dir), _examples(), tmp_path / name, seed=seed)
        return load_file(Path(result.model_dir) / "adapter_model.safetensors")

    first, again, other = adapter("a", 0), adapter("b", 0), adapter("c", 1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_a_second_round_adapter_survives_a_cleared_cache_and_a_moved_run(tiny_model_dir, tmp_path, monkeypatch):
    """Round 2 trains LoRA on round 1's merged adapter, so peft records that cached merge as its
    base. With the cache cleared, or both rounds copied elsewhere (the base model too), the merge
    is rebuilt from round 1 and serves the same weights."""
    import shutil

    from safetensors.torch import load_file

    from leafe.policy.checkpoints import LINEAGE_FILE, adapter_base, check_model_reference, servable_model

    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "run" / "base"
    shutil.copytree(tiny_model_dir, base)
    cfg = _fast(finetune="lora", lora_r=4, learning_rate=5e-2)
    round_1 = train_sft(cfg, str(base), _examples(), tmp_path / "run" / "round-1", seed=0).model_dir
    round_2 = train_sft(cfg, round_1, _examples(), tmp_path / "run" / "round-2", seed=0).model_dir
    recorded = json.loads((Path(round_2) / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).parent == tmp_path / "cache" / "merged"  # what peft wrote: the cached merge of round 1
    assert json.loads((Path(round_2) / LINEAGE_FILE).read_text())["relative"] == "../../round-1/model"

    def weights(model: str) -> dict[str, torch.Tensor]:
        return load_file(Path(servable_model(model)) / "model.safetensors")

    expected = weights(round_2)
    shutil.rmtree(tmp_path / "cache")
    assert adapter_base(round_2) == round_1
    check_model_reference(round_2, "policy.model")
    rebuilt = weights(round_2)
    assert rebuilt.keys() == expected.keys() and all(torch.allclose(rebuilt[k], expected[k], atol=1e-6) for k in expected)

    shutil.move(tmp_path / "run", tmp_path / "copied")  # the base went with it: round 1 records it relatively too
    shutil.rmtree(tmp_path / "cache")
    moved = str(tmp_path / "copied" / "round-2" / "model")
    check_model_reference(moved, "policy.model")
    copied = weights(moved)
    assert all(torch.allclose(copied[k], expected[k], atol=1e-6) for k in expected)


def test_the_lineage_fallback_refuses_what_it_cannot_rebuild_faithfully(tmp_path):
    """Only a recorded base that is gone is replaced, and only by the start the trainer
    recorded: the embedded model by name; a start adapter changed since, a start that is gone
    or a loop is an error, never another model."""
    import shutil

    from leafe.config import ConfigError
    from leafe.policy.checkpoints import LINEAGE_FILE, adapter_base, check_model_reference, servable_model, write_training_start

    def adapter(name: str, base: str, start: str | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        if start is not None:
            write_training_start(folder, start)
        return folder

    gone = str(tmp_path / "cache" / "merged" / "0123")
    assert adapter_base(adapter("no-record", gone)) == gone  # nothing to rebuild from: the error names it
    assert adapter_base(adapter("embedded", gone, "smollm2-135m-instruct")) == "smollm2-135m-instruct"
    assert adapter_base(adapter("hub", gone, "Qwen/Qwen2.5-0.5B")) == "Qwen/Qwen2.5-0.5B"
    present = adapter("present", str(tmp_path), "smollm2-135m-instruct")
    assert adapter_base(present) == str(tmp_path)  # the recorded base exists: used as is

    start = adapter("start", str(tmp_path / "base-model"))
    child = adapter("child", gone, str(start))
    assert json.loads((child / LINEAGE_FILE).read_text())["relative"] == "../start"
    assert adapter_base(child) == str(start)
    copy = tmp_path / "copy"  # the child copied beside another adapter named "start": the original is used
    copy.mkdir()
    shutil.copytree(child, copy / "child")
    other = adapter("copy/start", str(tmp_path / "base-model"))
    (other / "adapter_model.safetensors").write_bytes(b"another")
    assert adapter_base(copy / "child") == str(start)
    (start / "adapter_model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ValueError, match="trained on top of .*start, whose adapter files have changed"):
        adapter_base(child)
    with pytest.raises(ConfigError, match="^policy.model: .*child was trained on top of .*start, whose adapter files"):
        check_model_reference(str(child), "policy.model")
    (start / "adapter_model.safetensors").unlink()
    start.rename(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="trained on top of .*start, which is gone .*and so is the base"):
        check_model_reference(str(child), "policy.model")

    first, second = adapter("first", gone), adapter("second", gone)  # a hand-made loop
    write_training_start(first, str(second))
    write_training_start(second, str(first))
    with pytest.raises(ConfigError, match="more than 32 adapters trained on top of each other"):
        check_model_reference(str(first), "policy.model")
    with pytest.raises(ValueError, match="more than 32 adapters trained on top of each other"):
        servable_model(str(first))
    from leafe.policy import _model_type

    assert _model_type(str(first)) is None  # backend auto's probe gives up too


def test_objective_without_examples_of_its_kind_is_a_clear_error(tiny_model_dir, tmp_path):
    rehearsal_only = [e for e in _examples() if e.kind == "rehearsal"]
    with pytest.raises(ValueError, match="sft.objective='cf_only': no counterfactual examples"):
        train_sft(_fast(objective="cf_only"), str(tiny_model_dir), rehearsal_only, tmp_path / "x")


_CHILD = """
import sys
from pathlib import Path
from leafe.config import SFTConfig
from leafe.trainers.sft import train_sft
from tests.trainers.test_sft import _examples, _fast
train_sft(_fast(finetune="full", save_steps=2, epochs=float(sys.argv[3])), sys.argv[1], _examples(16), Path(sys.argv[2]), seed=0)
"""


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    epochs = 6.0
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tiny_model_dir), str(out), str(epochs)], cwd=os.getcwd())
    deadline = time.time() + 120
    while not (out / "checkpoints" / "checkpoint-4").is_dir() and child.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "model" / DONE_FILE).exists(), "training finished before it could be killed"
    resumed = train_sft(_fast(finetune="full", save_steps=2, epochs=epochs), str(tiny_model_dir), _examples(16), out, seed=0)
    assert resumed.steps == 48
    straight = train_sft(_fast(finetune="full", save_steps=2, epochs=epochs), str(tiny_model_dir), _examples(16), tmp_path / "straight", seed=0)
    a = AutoModelForCausalLM.from_pretrained(resumed.model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(straight.model_dir).state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    assert resumed.tokens < straight.tokens  # the rerun trained only the steps after the checkpoint


def test_leafe_sft_command_trains_on_an_exported_file(tiny_model_dir, tmp_path, capsys):
    from leafe.cli import main
    from leafe.method.distill import export_record

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(export_record(e, 1.0)) + "\n" for e in _examples(4)))
    config = Path(__file__).resolve().parents[2] / "configs" / "sokoban_quickstart.yaml"
    args = [str(config), f"policy.model={tiny_model_dir}", "sft.batch_size=2", "sft.epochs=1", "sft.finetune=full"]
    assert main(["sft", *args, "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    assert "2 steps" in capsys.readouterr().out and (tmp_path / "out" / "model" / DONE_FILE).is_file()
    # Copied elsewhere, the finished checkpoint reports where it now is.
    import shutil

    shutil.copytree(tmp_path / "out" / "model", tmp_path / "moved" / "model")
    moved = train_sft(SFTConfig(), str(tiny_model_dir), [], tmp_path / "moved")
    assert moved.model_dir == str(tmp_path / "moved" / "model")
    assert main(["sft", *args, "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "--data:" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_data_parallel_training_splits_the_batches_and_writes_one_model(tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2` (what `accelerate launch --multi_gpu` runs) on CPU, gloo:
    each process trains on half of the examples, and only the main process writes the model."""
    from leafe.method.distill import export_record

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(export_record(e, 1.0)) + "\n" for e in _examples(16)))
    config = Path(__file__).resolve().parents[2] / "configs" / "sokoban_quickstart.yaml"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    args = [str(config), f"policy.model={tiny_model_dir}", "sft.batch_size=2", "sft.gradient_accumulation_steps=1", "sft.epochs=1"]
    result = subprocess.run(
        [*torchrun, "-m", "leafe.cli", "sft", *args, "--data", str(data), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model:") == 1  # printed by the main process only
    done = json.loads((tmp_path / "out" / "model" / DONE_FILE).read_text())
    assert done["steps"] == 4  # 16 examples / (2 per batch x 2 processes); one process would take 8
    assert done["examples"] == {"counterfactual": 8, "rehearsal": 8}
    assert not (tmp_path / "out" / "model.partial").exists()
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").is_file()
