"""Policy backend on vLLM (GPU machines; ``pip install -e ".[gpu]"``).

Same protocol and sampling semantics as the other backends: prompts are rendered and tokenized by
:class:`~leafe.policy.text.PromptCodec` (so a chat prompt is the same token sequence everywhere) and
passed to vLLM as token ids; every request carries its own ``seed``; stop strings are cut from the
text. A LoRA adapter folder is served without merging: the base model is loaded with
``enable_lora=True`` and every request carries a ``LoRARequest`` for the adapter.

Training on the GPU (GRPO) syncs the trained weights into the running engine after every update,
without restarting it (:meth:`VLLMPolicy.follow`): a LoRA adapter is saved and served under a
fresh adapter id; full weights are copied into every worker's model with ``collective_rpc``.

vLLM is not installable on the CPU development machine; ``tests/policy/test_vllm_backend.py`` runs
only where vLLM and a CUDA device are present.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from leafe.policy.base import Generation, GenerationRequest, SamplingParams
from leafe.policy.checkpoints import adapter_base, servable_model
from leafe.policy.embedded import resolve_model
from leafe.policy.text import PromptCodec, check_params


class VLLMPolicy:
    """The Policy protocol on ``vllm.LLM``.

    Args:
        model: ``"embedded"``, a local folder (full checkpoint or LoRA adapter) or a hub id.
        dtype: ``"auto"`` or a dtype name vLLM accepts.
        engine_args: extra keyword arguments for ``vllm.LLM`` (``gpu_memory_utilization``,
            ``tensor_parallel_size``, ``max_model_len``, ``max_lora_rank``, ...).
        enable_lora: load a full model ready to serve adapters that come later (GRPO with LoRA).
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", engine_args: dict[str, Any] | None = None, enable_lora: bool = False) -> None:
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError as error:
            from leafe.config import ConfigError

            raise ConfigError(
                f"policy.backend: vllm is not importable here ({error}); install it on a CUDA machine with "
                "pip install -e '.[gpu]', or use backend auto|native|transformers"
            ) from None

        args = dict(engine_args or {})
        path = resolve_model(model)
        base = adapter_base(path)
        self.lora_request = None
        self._followed: tuple[Any, Path] | None = None  # (model being trained, adapter folder)
        if enable_lora:
            args.setdefault("enable_lora", True)
            args.setdefault("max_lora_rank", 64)
        if base is not None:
            args.setdefault("enable_lora", True)
            args.setdefault("max_lora_rank", 64)
            self.lora_request = LoRARequest("leafe-adapter", 1, path)
            path = resolve_model(servable_model(base))  # a base that is an adapter itself (round 2) is merged
        self.llm = LLM(model=path, dtype=dtype, **args)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = model
        self.codec = PromptCodec(self.tokenizer, model)
        self._lock = threading.Lock()  # vllm.LLM is not safe to call from several threads (leafe serve)

    def load_adapter(self, adapter_dir: str | Path) -> None:
        """Serve the LoRA adapter in ``adapter_dir`` from the next request on. It gets a fresh
        adapter id, so vLLM loads it instead of reusing the adapter it cached under the old id."""
        from vllm.lora.request import LoRARequest

        previous = self.lora_request
        next_id = previous.lora_int_id + 1 if previous is not None else 1
        with self._lock:
            self.lora_request = LoRARequest("leafe-adapter", next_id, str(adapter_dir))
            remove = getattr(self.llm.llm_engine, "remove_lora", None)
            if previous is not None and remove is not None:  # free the old adapter's GPU slot
                remove(previous.lora_int_id)

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Copy full weights (Hugging Face parameter names -> tensors) into the model of every
        worker, then drop the prefix cache (its keys/values came from the old weights)."""
        tensors = [(name, tensor.detach().to("cpu")) for name, tensor in weights]
        with self._lock:
            self.llm.collective_rpc(_load_worker_weights, args=(tensors,))
            self.llm.reset_prefix_cache()

    def follow(self, model: Any, scratch_dir: str | Path) -> None:
        """Serve ``model`` (being trained beside the engine) from now on: every
        :meth:`weights_changed` copies its current weights in. A peft model's adapter is saved to
        ``scratch_dir`` (overwritten per sync) and served under a new id; any other model's
        parameters are copied into the workers. (At this call the model still holds the weights
        the engine loaded, so nothing is synced yet.)"""
        self._followed = (model, Path(scratch_dir))

    def weights_changed(self) -> None:
        """Sync the followed model's weights in (call after every optimiser update)."""
        if self._followed is None:
            return
        model, scratch = self._followed
        if not hasattr(model, "peft_config"):
            self.load_weights(model.state_dict().items())
            return
        shutil.rmtree(scratch, ignore_errors=True)
        model.save_pretrained(str(scratch))
        self.load_adapter(scratch)

    def render_prompt(self, prompt: Any) -> str:
        return self.codec.render(prompt)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request in one ``LLM.generate`` call; the i-th answers the i-th."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        check_params(params)
        texts = [self.codec.render(request.prompt) for request in requests]
        ids = [self.codec.encode(request.prompt, text) for request, text in zip(requests, texts)]
        sampling = [
            VLLMSamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                seed=int(request.seed) % (1 << 63),
                skip_special_tokens=True,
            )
            for request in requests
        ]
        with self._lock:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompt_ids) for prompt_ids in ids],
                sampling,
                use_tqdm=False,
                lora_request=self.lora_request,
            )
        results = []
        for text, prompt_ids, output in zip(texts, ids, outputs):
            completion = output.outputs[0]
            results.append(
                Generation(
                    text=completion.text,
                    prompt_text=text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        return results


def _load_worker_weights(worker: Any, weights: list[tuple[str, Any]]) -> None:
    """Runs inside each vLLM worker (``LLM.collective_rpc`` passes the worker first)."""
    worker.model_runner.model.load_weights(weights=weights)
