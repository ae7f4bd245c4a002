"""The native engine's forward pass over key/value slots, on a Llama-family transformers model.

It reuses the model's own modules and weights (embedding, norms, projections, MLP, rotary
embedding, LM head; plain linear layers go through :func:`~leafe.policy.native_linear.linear`,
the same product on the fastest kernel measured for its shape); only attention and the cache
layout are ours. One pass
packs a decode step for the active slots with prompt pieces of new sequences; decode attention
can read a prefix common to all rows once. On the CPU in float32, each slot's own keys (decode)
and the prompt pieces are attended by the engine's compiled kernel
(:mod:`~leafe.policy.native_kernels`) where it builds, else by PyTorch's CPU flash kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from leafe.policy.native_layout import DecodeLayout, OwnSuffixPlan, causal_seen, hole_runs, piece_mask, split_rows
from leafe.policy.native_linear import PackedWeights, add_adapters, apply_linear, base_linear, linear, lora_adapters

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MIN_CASCADE = 64  # decode attention reads a common prefix once if it is at least this long
# Decode attention over each row's own suffix may be split into up to this many calls over
# contiguous slot ranges, each reading only up to its own longest row (see native_layout.split_rows).
MAX_OWN_CHUNKS = 4
# Prompt pieces of up to this many tokens attend with a key/value head's query heads as its rows
# (LlamaFamilyForward._piece_attention; its additive mask is ``group`` times the causal mask's
# rows); longer ones, rare first prefills, on SDPA, where grouping measured no gain.
GROUPED_PIECE_TOKENS = 256
# PyTorch's CPU flash-attention kernel, which also returns the log-sum-exp the cascade merges on
# (a private op; where a PyTorch build lacks it, the cascade runs on batched matmuls).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def _rms_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a Llama-family RMSNorm, on PyTorch's fused kernel where that is bitwise the
    same (float32: the module computes in float32 anyway; one kernel instead of five ops)."""
    if x.dtype == torch.float32 and type(module).__name__ in _RMS_NORMS:
        return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
    return module(x)


class UnsupportedModel(ValueError):
    """The model's architecture is not one the native engine implements."""


class LlamaFamilyForward:
    """The forward pass over slots, on the modules of a Llama-family transformers model."""

    def __init__(self, model: Any) -> None:
        config = model.config
        model_type = getattr(config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(
                f"the native engine supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not {model_type!r}; "
                "use policy.backend: transformers"
            )
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.num_heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 20))
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window:
            self.max_positions = min(self.max_positions, int(window))
        attn = self.layers[0].self_attn
        self.qk_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
        self.param = next(model.parameters())
        # Cascade decode attention and prompt pieces on the CPU flash kernel (else batched matmuls
        # and SDPA; see bench/).
        self.flash_cascade = _CPU_FLASH is not None
        self.max_own_chunks = MAX_OWN_CHUNKS  # 1: own suffixes in one call (see split_rows)
        # The engine's own attention kernel (native_kernels.ragged_attention_op), when the engine
        # sets it: own suffixes and prompt pieces in one call per layer each, instead of the flash
        # calls. Only for float32 on the CPU with a head size in native_kernels.HEAD_DIMS.
        self.ragged: Callable | None = None
        # oneDNN copies of the weights for passes of PACKED_LINEAR_MIN_ROWS rows and more (see
        # native_linear.linear); ``packed.enabled = False`` runs every product on MKL instead.
        self.packed = PackedWeights()
        self._cos = self._sin = torch.empty(0)
        # Per layer (see fuse_projections): the fused weight, bias, and the modules' own weights
        # (views of it, whose in-place updates the fused tensor's version counter does not see).
        self._qkv: list[tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]] = []
        self._gate_up: list[tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]] = []
        # Per layer, the fused group's modules when one of them is LoRA-wrapped (its adapters are
        # added to the fused base product), else None.
        self._qkv_wrapped: list[list[Any] | None] = []
        self._gate_up_wrapped: list[list[Any] | None] = []

    def fuse_projections(self) -> bool:
        """Store each layer's q/k/v weights in one tensor and its gate/up weights in another, so a
        pass runs one matmul for each group instead of three and two (fewer, wider products; the
        outputs are bitwise the same, each is still a dot product over the hidden size; see
        docs/BENCHMARKS.md, session 13, for the measured effect together with the other changes).

        The modules' parameters become row slices of the fused tensors (same ``Parameter``
        objects, so an in-place update of either stays visible to both). Only for plain
        ``nn.Linear`` projections with matching biases, or peft LoRA wrappers of them: then the
        base layers' (frozen) weights are fused and each pass adds the adapters, which may change
        between passes, as peft does (see :func:`lora_adapters`). Returns whether the layers
        were fused; call once, on a model whose parameters will not be replaced afterwards
        (``model.to(...)`` would silently unfuse them), and not on weights an optimizer updates
        that are saved with safetensors (which refuses tensors sharing memory).
        """
        if self._qkv:
            return True
        groups = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for names, owner in ((("q_proj", "k_proj", "v_proj"), attn), (("gate_proj", "up_proj"), mlp)):
                modules = [getattr(owner, name, None) for name in names]
                bases = [base_linear(m) for m in modules]
                if any(base is None for base in bases):
                    return False
                if len({base.bias is None for base in bases}) > 1:
                    return False
                groups.append((modules, bases))
        fused, wrapped = [], []
        with torch.no_grad():
            for modules, bases in groups:
                weight = torch.cat([base.weight for base in bases])
                bias = None if bases[0].bias is None else torch.cat([base.bias for base in bases])
                row = 0
                for base in bases:
                    rows = base.weight.shape[0]
                    base.weight.data = weight[row : row + rows]
                    if bias is not None:
                        base.bias.data = bias[row : row + rows]
                    row += rows
                fused.append((weight, bias, tuple(base.weight for base in bases)))
                wrapped.append(None if all(type(m) is torch.nn.Linear for m in modules) else modules)
        self._qkv, self._gate_up = fused[0::2], fused[1::2]
        self._qkv_wrapped, self._gate_up_wrapped = wrapped[0::2], wrapped[1::2]
        return True

    def pack_weights(self) -> None:
        """Make the oneDNN copy (:class:`PackedWeights`) of every weight a pass reads now, rather
        than on the first pass that reads each: the reorders and the fresh memory they write move
        from the first requests to the engine's start (for the embedded model, 121 copies: 0.13 s on
        a warm heap, ~0.5 s of a rollout run where their memory is fresh). Call after
        :meth:`fuse_projections`; a no-op where the packed path is off."""
        if not self.packed.enabled or self.param.device.type != "cpu" or self.param.dtype != torch.float32:
            return
        weights: list[tuple[torch.Tensor, Sequence[torch.Tensor]]] = []

        def modules(*layers: Any) -> None:  # what apply_linear hands to linear: the (base) weight
            weights.extend((base.weight, ()) for base in map(base_linear, layers) if base is not None)

        for index, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if self._qkv:
                weights.append((self._qkv[index][0], self._qkv[index][2]))
            else:
                modules(attn.q_proj, attn.k_proj, attn.v_proj)
            modules(attn.o_proj)
            if self._gate_up:
                weights.append((self._gate_up[index][0], self._gate_up[index][2]))
            else:
                modules(mlp.gate_proj, mlp.up_proj)
            modules(mlp.down_proj)
        modules(self.model.lm_head)
        for weight, members in weights:
            self.packed.get(weight, members)

    @staticmethod
    def _with_adapters(
        wrapped: list[Any] | None, parts: Sequence[torch.Tensor], x: torch.Tensor
    ) -> Sequence[torch.Tensor]:
        """A fused group's outputs ``parts`` (each ``(rows, out_i)``, from the base weights) with
        each LoRA-wrapped module's adapters added; a module whose forward is more than that now
        runs its own forward on ``x: (rows, in)``."""
        if wrapped is None:
            return parts
        out = []
        for module, part in zip(wrapped, parts):
            if type(module) is torch.nn.Linear:
                out.append(part)
                continue
            adapters = lora_adapters(module, x.dtype)
            out.append(module(x) if adapters is None else add_adapters(part, x, adapters))
        return out

    def rope_table(self, positions: int) -> None:
        """Precompute cos/sin ``(positions, head_dim)`` with the model's own rotary embedding."""
        if self._cos.shape[0] >= positions:
            return
        ids = torch.arange(positions, device=self.param.device)[None]
        cos, sin = self.inner.rotary_emb(self.param.new_zeros(1), ids)
        self._cos, self._sin = cos[0], sin[0]

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for ``positions: (tokens,)``, each ``(tokens, 1, head_dim)``; the sin half
        that multiplies the first half of a vector is negated, so rotation is two products."""
        cos, sin = self._cos[positions][:, None, :], self._sin[positions][:, None, :].clone()
        sin[..., : self.head_dim // 2].neg_()
        return cos, sin

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Apply rotary embedding to ``x: (tokens, heads, head_dim)`` (Llama's rotate-half layout)."""
        cos, signed_sin = rope
        half = x.shape[-1] // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin

    def _project(
        self, index: int, layer: Any, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """``h: (tokens, hidden)`` -> q ``(tokens, heads, hd)``, k and v ``(tokens, kv_heads, hd)``."""
        attn = layer.self_attn
        x = _rms_norm(layer.input_layernorm, h)
        n = x.shape[0]
        if self._qkv:
            kv_width = self.kv_heads * self.head_dim
            fused = linear(x, *self._qkv[index], packed=self.packed)
            parts = fused.split([self.num_heads * self.head_dim, kv_width, kv_width], dim=-1)
            q, k, v = self._with_adapters(self._qkv_wrapped[index], parts, x)
            if self._qkv_wrapped[index] is None and not self.qk_norm:
                # q and k are adjacent in each row of the fused output: one rotation for both.
                qk = self._rotate(fused[:, : -kv_width].view(n, self.num_heads + self.kv_heads, self.head_dim), rope)
                return qk[:, : self.num_heads], qk[:, self.num_heads :], v.view(n, self.kv_heads, self.head_dim)
        else:
            q, k, v = (apply_linear(m, x, self.packed) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.kv_heads, self.head_dim)
        v = v.view(n, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
        return self._rotate(q, rope), self._rotate(k, rope), v

    def _finish_layer(self, index: int, layer: Any, h: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        attended = attended.reshape(h.shape[0], self.num_heads * self.head_dim)
        h = h + apply_linear(layer.self_attn.o_proj, attended, self.packed)
        x = _rms_norm(layer.post_attention_layernorm, h)
        mlp = layer.mlp  # the model's own MLP, down_proj(act(gate_proj(x)) * up_proj(x))
        if self._gate_up:  # on the fused weights
            fused = linear(x, *self._gate_up[index], packed=self.packed)
            gate, up = self._with_adapters(self._gate_up_wrapped[index], fused.chunk(2, dim=-1), x)
        else:
            gate, up = apply_linear(mlp.gate_proj, x, self.packed), apply_linear(mlp.up_proj, x, self.packed)
        return h + apply_linear(mlp.down_proj, mlp.act_fn(gate).mul_(up), self.packed)  # inference only: in place

    def _cascade_attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        shared: int,
        chunks: Sequence[tuple[int, int, int]] | None = None,
        source: int = 0,
    ) -> torch.Tensor:
        """Decode attention that reads a prefix common to all rows once.

        ``q: (B, heads, hd)``; ``keys``/``values``: one layer's ``(slots, kv_heads, capacity, hd)``;
        row ``b`` attends to positions ``0..positions[b]`` of slot ``b``, whose first ``shared``
        positions equal those of slot ``source``, which is read for them. Softmax is split in two
        parts (the shared prefix, one matmul for all rows; each row's own suffix) and merged with
        their log-sum-exp, which is exact.
        Memory read per step drops from ``B * span`` to ``shared + B * (span - shared)`` positions;
        in agent rollouts the instructions and few-shot example are a large share of every prompt.
        Returns ``(B, heads, hd)``.
        """
        if self.flash_cascade and q.device.type == "cpu":
            return self._flash_cascade_attention(q, keys, values, positions, shared, chunks, source=source)
        batch, group = q.shape[0], self.num_heads // self.kv_heads
        span = int(positions.max()) + 1
        grouped = q.view(batch, self.kv_heads, group, self.head_dim) * self.head_dim**-0.5
        # Shared prefix: (kv_heads, B * group, hd) @ (kv_heads, hd, shared) in one batched matmul.
        by_head = grouped.permute(1, 0, 2, 3).reshape(self.kv_heads, batch * group, self.head_dim)
        shared_scores = torch.matmul(by_head, keys[source, :, :shared].transpose(1, 2))
        shared_max = shared_scores.amax(dim=-1, keepdim=True)
        shared_weights = torch.exp(shared_scores - shared_max)
        shared_out = torch.matmul(shared_weights, values[source, :, :shared])  # (kv_heads, B*group, hd)

        def per_row(t: torch.Tensor) -> torch.Tensor:  # (kv_heads, B*group, x) -> (B, kv_heads, group, x)
            return t.view(self.kv_heads, batch, group, -1).permute(1, 0, 2, 3)

        shared_max, shared_sum, shared_out = (
            per_row(shared_max), per_row(shared_weights.sum(dim=-1, keepdim=True)), per_row(shared_out)
        )
        # Own suffix: (B, kv_heads, group, hd) @ (B, kv_heads, hd, span - shared), masked past each row's end.
        own_scores = torch.matmul(grouped, keys[:batch, :, shared:span].transpose(-1, -2))
        beyond = torch.arange(shared, span, device=q.device)[None, :] > positions[:, None]  # (B, span - shared)
        own_scores = own_scores.masked_fill(beyond[:, None, None, :], float("-inf"))
        own_max = own_scores.amax(dim=-1, keepdim=True)  # finite: every row sees its own position
        own_weights = torch.exp(own_scores - own_max)
        own_out = torch.matmul(own_weights, values[:batch, :, shared:span])
        top = torch.maximum(shared_max, own_max)
        shared_scale, own_scale = torch.exp(shared_max - top), torch.exp(own_max - top)
        out = (shared_out * shared_scale + own_out * own_scale) / (
            shared_sum * shared_scale + own_weights.sum(dim=-1, keepdim=True) * own_scale
        )
        return out.reshape(batch, self.num_heads, self.head_dim)

    def _flash_cascade_attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        positions: torch.Tensor,
        shared: int,
        chunks: Sequence[tuple[int, int, int]] | None = None,
        layout: DecodeLayout | None = None,
        source: int = 0,
        plan: OwnSuffixPlan | None = None,
        groups: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """:meth:`_cascade_attention` on the CPU flash kernel; same shapes and result.

        A token's ``group`` query heads that share a key/value head attend to the same keys
        under the same mask, so they are passed as that head's query rows: shared prefix
        ``(1, kv_heads, T * group, hd)`` against slot ``source``, own suffix per call ``(hi - lo,
        kv_heads, w * group, hd)`` against each slot with an additive mask (``w``: the call's most
        tokens in a slot; see :class:`OwnSuffixPlan`).
        The two parts are merged with their float32 log-sum-exps ``(T, kv_heads, group)``.

        ``layout``: several tokens per slot (``T`` tokens in ``B`` slots, at most ``Q`` per slot;
        default one token per slot, ``T = B``, ``Q = 1``); ``q: (T, heads, hd)``,
        ``positions: (T,)``. ``chunks``: ``(lo, hi, end)``: slots ``lo..hi-1`` read their own
        suffixes in a call of their own, up to position ``end - 1`` (their longest row; see
        :func:`split_rows`); default one call over all slots. With a layout, slots with no token
        (holes) may be in no chunk. ``plan``: :class:`OwnSuffixPlan` of these arguments, made
        once per pass for every layer (made here when None). ``groups``: with :attr:`ragged` set,
        ``(group_slot (N,), group_first (N + 1,))``, the slots that decode and where their tokens
        start: the own suffixes are then one :attr:`ragged` call, and ``chunks``, ``layout`` and
        ``plan`` are not used.
        """
        tokens, group, kv_heads, hd = q.shape[0], self.num_heads // self.kv_heads, self.kv_heads, self.head_dim
        scale = hd**-0.5
        grouped = q.view(tokens, kv_heads, group, hd)
        by_head = grouped.permute(1, 0, 2, 3).reshape(1, kv_heads, tokens * group, hd)
        shared_out, shared_lse = _CPU_FLASH(
            by_head, keys[source : source + 1, :, :shared], values[source : source + 1, :, :shared], 0.0, False, scale=scale
        )
        shared_out = shared_out[0].view(kv_heads, tokens, group, hd).permute(1, 0, 2, 3)
        shared_lse = shared_lse[0].view(kv_heads, tokens, group).permute(1, 0, 2)
        if groups is not None and self.ragged is not None:
            own_out, own_lse = self.ragged(self._by_kv_head(q), keys, values, *groups, positions, shared, scale)
        else:
            if plan is None:
                plan = OwnSuffixPlan(positions, shared, chunks, layout, kv_heads, group, q.dtype)
            parts = [
                _CPU_FLASH(
                    own_q, keys[lo:hi, :, shared:end], values[lo:hi, :, shared:end], 0.0, False, attn_mask=mask, scale=scale
                )
                for (lo, hi, end), own_q, mask in zip(plan.chunks, plan.queries(grouped), plan.masks)
            ]
            own_out, own_lse = plan.unpack(parts)
        top = torch.maximum(shared_lse, own_lse)
        shared_weight, own_weight = torch.exp(shared_lse - top)[..., None], torch.exp(own_lse - top)[..., None]
        out = (shared_out.float() * shared_weight + own_out.float() * own_weight) / (shared_weight + own_weight)
        return out.to(q.dtype).reshape(tokens, self.num_heads, hd)

    def _by_kv_head(self, q: torch.Tensor) -> torch.Tensor:
        """``q: (T, heads, hd)`` as ``(T, kv_heads, group, hd)`` with each token's heads contiguous
        (the layout :attr:`ragged` takes; a view where ``q``'s strides allow)."""
        if q.stride(-1) != 1 or q.stride(-2) != self.head_dim:
            q = q.contiguous()
        return q.view(q.shape[0], self.kv_heads, self.num_heads // self.kv_heads, self.head_dim)

    def _piece_attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, out: torch.Tensor
    ) -> None:
        """A prompt piece's attention on the CPU flash kernel, written into ``out: (n, heads, hd)``.

        ``q: (n, heads, hd)``, the piece's tokens at consecutive positions; ``keys``/``values``:
        its slot's ``(1, kv_heads, end, hd)``; ``mask``: :func:`piece_mask`, ``(n * group, end)``.
        The ``group`` query heads that share a key/value head are passed as that head's rows
        (``(1, kv_heads, n * group, hd)``), so each kernel call multiplies ``n * group`` rows
        against the keys instead of ``n``: ~3% faster than SDPA with ``enable_gqa`` over a pass of
        the window-8 workload's pieces (``bench/piece_attention.py``; docs/BENCHMARKS.md, session 19).
        """
        n, kv_heads, hd = q.shape[0], self.kv_heads, self.head_dim
        group = self.num_heads // kv_heads
        rows = q.view(n, kv_heads, group, hd).permute(1, 0, 2, 3).reshape(1, kv_heads, n * group, hd)
        attended, _ = _CPU_FLASH(rows, keys, values, 0.0, False, attn_mask=mask, scale=hd**-0.5)
        out.view(n, kv_heads, group, hd).copy_(attended[0].view(kv_heads, n, group, hd).permute(1, 0, 2, 3))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """``h: (rows, hidden)`` -> float32 logits ``(rows, vocab)``."""
        return apply_linear(self.model.lm_head, _rms_norm(self.inner.norm, h), self.packed).float()

    def forward(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        decode_tokens: torch.Tensor,
        decode_positions: torch.Tensor,
        pieces: Sequence[tuple[int, int, list[int]]] = (),
        shared: int = 0,
        decode_slots: torch.Tensor | None = None,
        shared_slot: int = 0,
    ) -> torch.Tensor:
        """One packed forward pass: a decode step for slots ``0..B-1`` plus prompt pieces.

        Decode: ``decode_tokens``, ``decode_positions`` ``(T,)`` (T may be 0); by default token
        ``b`` belongs to slot ``b`` (``T = B``). ``decode_slots: (T,)`` gives each token's slot
        instead (non-decreasing), so a slot can decode several consecutive positions in one pass
        (draft tokens being verified), and slots below the last may have no token (see
        :class:`DecodeLayout`). Each token writes its key/value at its position and attends to
        its slot's ``0..position``.
        Pieces ``(slot, start, token_ids)`` (slots with no decode token): the tokens take positions
        ``start..start+len-1`` of their slot and attend causally to ``0..start+len-1``. Keys/values
        of every row are written before any attention of the same layer, so consecutive pieces of
        one slot may share a pass. All rows share the linear layers (the weights are read once).

        ``shared``: the first ``shared`` positions hold the same keys/values in all decode slots
        (a common prompt prefix); attention then reads them once, from slot ``shared_slot``, a
        decode slot (see :meth:`_cascade_attention`).

        Returns hidden states ``(T + len(pieces), hidden)``: the decode tokens, then each piece's
        last position.
        """
        device = self.param.device
        tokens = int(decode_tokens.shape[0])
        layout = None
        if decode_slots is not None and tokens and not torch.equal(decode_slots, torch.arange(tokens, device=device)):
            layout = DecodeLayout(decode_slots, decode_positions)
        ids = [decode_tokens] + [torch.tensor(toks, device=device) for _, _, toks in pieces]
        positions = [decode_positions] + [
            torch.arange(start, start + len(toks), device=device) for _, start, toks in pieces
        ]
        offsets = (tokens + np.cumsum([0] + [len(toks) for _, _, toks in pieces])).tolist()
        chunks = None
        flash = self.flash_cascade and device.type == "cpu"
        ragged = self.ragged if flash and self.param.dtype == torch.float32 else None
        group = self.num_heads // self.kv_heads
        scale = self.head_dim**-0.5
        if ragged is not None:  # every piece in one call per layer: its slot, first row, positions
            grouped, masks = (), ()  # (no piece is attended by a call of its own)
            piece_groups = (
                torch.tensor([slot for slot, _, _ in pieces], dtype=torch.long),
                torch.tensor([offset - tokens for offset in offsets], dtype=torch.long),
            )
        else:
            # Each piece's causal mask, made once for every layer: additive over grouped query rows
            # for the pieces that attend as such, boolean for SDPA.
            grouped = [flash and len(toks) <= GROUPED_PIECE_TOKENS for _, _, toks in pieces]
            masks = [
                piece_mask(start, len(toks), group, self.param.dtype, device) if is_grouped
                else causal_seen(start, len(toks), device)
                for (_, start, toks), is_grouped in zip(pieces, grouped)
            ]
        cascade = tokens > 0 and shared >= MIN_CASCADE and (layout is None or flash)
        plan = None  # the flash cascade's per-pass constants
        decode_groups = None  # with the ragged kernel: the decoding slots and their first tokens
        if tokens and ragged is not None:
            if layout is None:
                decode_groups = (torch.arange(tokens), torch.arange(tokens + 1))
            else:
                slots, counts = torch.unique_consecutive(decode_slots, return_counts=True)
                decode_groups = (slots, torch.cat([counts.new_zeros(1), counts.cumsum(0)]))
        elif tokens:
            ends = decode_positions if layout is None else layout.ends  # (B,) each slot's last position
            span = int(ends.max()) + 1
            if cascade and flash:
                holes = None if layout is None else layout.holes.cpu().numpy()
                last = ends.cpu().numpy() if holes is None else np.where(holes, shared, ends.cpu().numpy())
                chunks = [
                    (lo, hi, int(last[lo:hi].max()) + 1)
                    for lo, hi in split_rows(last, shared, self.max_own_chunks + hole_runs(holes), holes=holes)
                ]
                plan = OwnSuffixPlan(decode_positions, shared, chunks, layout, self.kv_heads, group, self.param.dtype)
            query_positions = decode_positions[:, None] if layout is None else layout.query_positions  # (B, Q)
            decode_mask = (torch.arange(span, device=device)[None, None, :] <= query_positions[:, :, None])[:, None]
        all_positions = torch.cat(positions)
        # Where each row's key/value goes: (slot (N, 1), kv head (1, kv_heads), position (N, 1)) indices.
        row_slots = [decode_slots if decode_slots is not None else torch.arange(tokens, device=device)] + [
            torch.full((len(toks),), slot, device=device) for slot, _, toks in pieces
        ]
        written = (torch.cat(row_slots)[:, None], torch.arange(self.kv_heads, device=device)[None, :], all_positions[:, None])
        rope = self._rope(all_positions)
        one_by_one = pieces if ragged is None else ()  # pieces attended by a call each
        h = self.inner.embed_tokens(torch.cat(ids))
        for index, layer in enumerate(self.layers):
            q, k, v = self._project(index, layer, h, rope)
            layer_keys, layer_values = keys[index], values[index]
            layer_keys[written] = k  # every row's key/value at its slot and position, in one op each
            layer_values[written] = v
            attended = torch.empty_like(q)
            if decode_groups is not None and cascade:
                attended[:tokens] = self._flash_cascade_attention(
                    q[:tokens], layer_keys, layer_values, decode_positions, shared, source=shared_slot, groups=decode_groups
                )
            elif decode_groups is not None:
                attended[:tokens] = ragged(
                    self._by_kv_head(q[:tokens]), layer_keys, layer_values, *decode_groups, decode_positions, 0, scale
                )[0].view(tokens, self.num_heads, self.head_dim)
            elif plan is not None:
                attended[:tokens] = self._flash_cascade_attention(
                    q[:tokens], layer_keys, layer_values, decode_positions, shared, chunks, layout, shared_slot, plan
                )
            elif cascade:
                attended[:tokens] = self._cascade_attention(
                    q[:tokens], layer_keys, layer_values, decode_positions, shared, chunks, shared_slot
                )
            elif layout is not None:  # (B, heads, Q, hd) against each slot, causal within the slot's tokens
                batch = layout.batch
                out = F.scaled_dot_product_attention(
                    layout.padded(q[:tokens]).transpose(1, 2),
                    layer_keys[:batch, :, :span],
                    layer_values[:batch, :, :span],
                    attn_mask=decode_mask,
                    enable_gqa=True,
                )
                attended[:tokens] = layout.packed(out.transpose(1, 2))
            elif tokens:
                attended[:tokens] = F.scaled_dot_product_attention(
                    q[:tokens, :, None, :],
                    layer_keys[:tokens, :, :span],
                    layer_values[:tokens, :, :span],
                    attn_mask=decode_mask,
                    enable_gqa=True,
                )[:, :, 0, :]
            if ragged is not None and pieces:
                rows = offsets[-1] - tokens
                attended[tokens:] = ragged(
                    self._by_kv_head(q[tokens:]), layer_keys, layer_values, *piece_groups, all_positions[tokens:], 0, scale
                )[0].view(rows, self.num_heads, self.head_dim)
            for (slot, start, toks), lo, mask, is_grouped in zip(one_by_one, offsets, masks, grouped):
                end = start + len(toks)
                if is_grouped:
                    self._piece_attention(
                        q[lo : lo + len(toks)], layer_keys[slot : slot + 1, :, :end],
                        layer_values[slot : slot + 1, :, :end], mask, attended[lo : lo + len(toks)],
                    )
                    continue
                out = F.scaled_dot_product_attention(
                    q[lo : lo + len(toks)].transpose(0, 1)[None],
                    layer_keys[slot : slot + 1, :, :end],
                    layer_values[slot : slot + 1, :, :end],
                    attn_mask=mask,
                    enable_gqa=True,
                )
                attended[lo : lo + len(toks)] = out[0].transpose(0, 1)
            h = self._finish_layer(index, layer, h, attended)
        last = list(range(tokens)) + [end - 1 for end in offsets[1:]]
        return h[torch.tensor(last, device=device)]
