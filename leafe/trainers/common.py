"""What the trainers share: loading a model to train (full or with LoRA layers) from any model
reference the policy backends accept (embedded name, folder, LoRA adapter, hub id)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leafe.config import FinetuneSettings
from leafe.policy.checkpoints import quiet_peft_deprecations, servable_model
from leafe.policy.embedded import resolve_model


def load_trainable(cfg: FinetuneSettings, base_model: str, seed: int) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved base folder) in float32; LoRA layers added (peft) when
    ``cfg.finetune == 'lora'``, their initial weights drawn from torch's generator seeded with
    ``seed`` (so the same seed gives the same run, in one process or across processes). A LoRA
    adapter as ``base_model`` is merged first (cached), so training always starts from plain
    weights."""
    torch.manual_seed(seed)  # peft draws the initial lora_A from torch's global generator
    base = servable_model(resolve_model(base_model))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
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
        with quiet_peft_deprecations():
            model = get_peft_model(model, lora)
    return model, tokenizer, base
