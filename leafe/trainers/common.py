"""What the trainers share: loading a model to train (full or with LoRA layers) from any model
reference the policy backends accept (embedded name, folder, LoRA adapter, hub id)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leafe.config import ConfigError, FinetuneSettings, GRPOConfig
from leafe.policy.checkpoints import check_model_reference, quiet_peft_deprecations, servable_model
from leafe.policy.embedded import resolve_model
from leafe.policy.errors import first_line


def load_trainable(cfg: FinetuneSettings, base_model: str, seed: int, field: str = "policy.model") -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved base folder) in float32; LoRA layers added (peft) when
    ``cfg.finetune == 'lora'``, their initial weights drawn from torch's generator seeded with
    ``seed`` (so the same seed gives the same run, in one process or across processes). A LoRA
    adapter as ``base_model`` is merged first (cached), so training always starts from plain
    weights.

    Raises:
        ConfigError: ``base_model`` cannot load (the message names ``field``), or the LoRA
            target modules match nothing in it (names ``sft.`` or ``grpo.lora_target_modules``).
    """
    check_model_reference(base_model, field)
    torch.manual_seed(seed)  # peft draws the initial lora_A from torch's global generator
    try:
        base = servable_model(resolve_model(base_model))
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except ConfigError:  # it names its own setting (e.g. LEAFE_CACHE)
        raise
    except (OSError, ValueError) as error:
        raise ConfigError(f"{field}: cannot load {base_model!r} to train: {first_line(error)}") from None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        try:
            with quiet_peft_deprecations():
                model = get_peft_model(model, lora)
        except ValueError as error:  # e.g. target modules that match no layer of this model
            section = "grpo" if isinstance(cfg, GRPOConfig) else "sft"
            raise ConfigError(f"{section}.lora_target_modules: {first_line(error)}") from None
    return model, tokenizer, base
