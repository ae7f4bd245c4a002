"""leafe.trainers.common: loading a model to train."""

import warnings

from leafe.config import SFTConfig
from leafe.trainers.common import load_trainable


def test_a_lora_model_loads_without_a_future_warning_users_cannot_act_on(tiny_model_dir):
    # peft reads transformers' deprecated is_gradient_checkpointing on every LoRA model; the
    # warning it triggers is printed at every SFT and GRPO run unless load_trainable silences it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _, _ = load_trainable(SFTConfig(finetune="lora"), str(tiny_model_dir), seed=0)
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_every_sft_example_kind_has_a_loss_term():
    from leafe.trainers.sft import _KIND_IDS
    from leafe.types import SFT_KINDS

    assert set(_KIND_IDS) == set(SFT_KINDS)  # SFTExample.from_dict accepts exactly the kinds the trainer weighs
