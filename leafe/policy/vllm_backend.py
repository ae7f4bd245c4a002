"""Policy backend on vLLM (GPU machines; ``pip install -e ".[gpu]"``).

Same protocol and sampling semantics as the other backends: prompts are rendered and tokenized by
:class:`~leafe.policy.text.PromptCodec` (so a chat prompt is the same token sequence everywhere) and
passed to vLLM as token ids; every request carries its own ``seed``; stop strings are cut from the
text. A LoRA adapter folder is served without merging: the base model is loaded with
``enable_lora=True`` and every request carries a ``LoRARequest`` for the adapter.

vLLM is not installable on the CPU development machine; ``tests/policy/test_vllm_backend.py`` runs
only where vLLM and a CUDA device are present.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from leafe.policy.base import Generation, GenerationRequest, SamplingParams
from leafe.policy.checkpoints import adapter_base
from leafe.policy.embedded import resolve_model
from leafe.policy.text import PromptCodec, check_params


class VLLMPolicy:
    """The Policy protocol on ``vllm.LLM``.

    Args:
        model: ``"embedded"``, a local folder (full checkpoint or LoRA adapter) or a hub id.
        dtype: ``"auto"`` or a dtype name vLLM accepts.
        engine_args: extra keyword arguments for ``vllm.LLM`` (``gpu_memory_utilization``,
            ``tensor_parallel_size``, ``max_model_len``, ``max_lora_rank``, ...).
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", engine_args: dict[str, Any] | None = None) -> None:
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        args = dict(engine_args or {})
        path = resolve_model(model)
        base = adapter_base(path)
        self.lora_request = None
        if base is not None:
            args.setdefault("enable_lora", True)
            args.setdefault("max_lora_rank", 64)
            self.lora_request = LoRARequest("leafe-adapter", 1, path)
            path = resolve_model(base)
        self.llm = LLM(model=path, dtype=dtype, **args)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = model
        self.codec = PromptCodec(self.tokenizer, model)
        self._lock = threading.Lock()  # vllm.LLM is not safe to call from several threads (leafe serve)

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
