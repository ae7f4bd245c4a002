"""The native CPU engine: continuous batching with a prefix (KV) cache over a transformers model.

Why it exists: in agent rollouts the prompt dominates. Every turn re-sends the instructions and the
few-shot example, the n samples of a task start from the same prompt, and an append-only history
repeats the previous turn. ``transformers.generate`` re-encodes all of it on every call. This engine
keeps each running sequence's keys/values in a fixed slot, reuses the longest cached prefix of every
new prompt (:class:`PrefixCache`), and computes a prefix shared by several new prompts once. Every
step is one packed forward pass: a decode token for each active sequence plus the remaining prompt
tokens of newly admitted ones, so the weights are read once for both. A sequence that finishes
leaves the batch and a queued request takes its slot in the next step (continuous batching; with
:meth:`NativePolicy.stream`, an episode's next turn joins while other episodes are mid-reply).

The forward pass reuses the model's own modules (embedding, norms, projections, MLP, rotary
embedding, LM head); only attention and the cache layout are ours. That covers the Llama family
(Llama 2/3, SmolLM, Mistral without sliding window use, Qwen2, Qwen3); anything else raises
:class:`UnsupportedModel` (``backend: auto`` then falls back to transformers).

Speculative decoding (``speculative_tokens``, :mod:`leafe.policy.speculative`): each step a
sequence may run its last token plus a draft copied from its own context in the same pass, and
keeps the draft's prefix that the model samples itself, plus one token of its own. Agents repeat
their history and observations, so at a history window of 8 a step keeps ~3 tokens per sequence
(docs/BENCHMARKS.md). The tokens are those of one-token decoding for the same logits.

Sampling is the same seeded sampler as the transformers backend (:mod:`leafe.policy.sampling`),
so for the same logits both backends draw the same tokens for the same seed. Logits are not bitwise
equal (different matmul shapes), so a near-tie can still go the other way.

The requests in flight, the counters and the client stream are in
:mod:`leafe.policy.native_requests`. The forward pass itself is
:class:`~leafe.policy.native_forward.LlamaFamilyForward`; the
key/value slots are :class:`~leafe.policy.kv_slots.KVSlots` (``keys[layer]``, ``values[layer]``:
``(slots, kv_heads, capacity, head_dim)``). The decode batch is the slot range ``0..B-1``, a view,
never a gather. A finished sequence's keys/values stay *parked* in its slot for a few steps: an
episode's next turn extends its previous prompt and completion, so it continues in that slot with
nothing copied. A parked slot is a hole in the decode batch: it costs no linear-layer row. On the
CPU flash kernel, decode attention leaves runs of holes out of its calls
(:func:`~leafe.policy.native_layout.split_rows`), so a slot stays parked until a new sequence
needs it, and only then goes to the prefix cache: an episode's last turn, which nothing
continues, is never copied out (on the 64-episode benchmark that was 79 copies, 3.7 s). Elsewhere
a hole costs a whole attention row and turns the cascade off, so a parked slot nobody claims
within ``PARK_STEPS`` steps goes to the prefix cache and the highest active sequence moves down
into it, keeping the slots packed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from leafe.policy.base import Generation, GenerationRequest, SamplingParams
from leafe.policy.embedded import DEFAULT_MODEL
from leafe.policy.kv_slots import KVSlots
from leafe.policy.memory import give_back_freed_memory, keep_freed_memory
from leafe.policy.native_forward import MIN_CASCADE, SUPPORTED_MODEL_TYPES, LlamaFamilyForward, UnsupportedModel
from leafe.policy.native_kernels import HEAD_DIMS, ragged_attention_op
from leafe.policy.native_requests import EngineStats, NativeStream, _Parked, _Sequence
from leafe.policy.prefix_cache import PrefixCache, common_prefix_length
from leafe.policy.speculative import DRAFT_TOKENS, propose_draft, verify_drafts
from leafe.policy.text import PromptCodec, TokenGeneration, check_params, eos_token_ids

__all__ = ["SUPPORTED_MODEL_TYPES", "EngineStats", "NativePolicy", "NativeStream", "UnsupportedModel"]

logger = logging.getLogger(__name__)

_MIN_SHARED = 16  # a prefix shared by new prompts is computed once if it is at least this long
# Off the CPU flash kernel, a slot parked in step s can be claimed in steps s+1 .. s+PARK_STEPS-1
# and is evicted at the end of step s+PARK_STEPS-1: with 2, the next step only, which is when an
# episode's next turn comes (the rollout loop submits it as soon as its environment steps).
PARK_STEPS = 2


class NativePolicy:
    """The Policy protocol on the native engine (see the module docstring).

    Args:
        model: ``"embedded"``, a local folder (full checkpoint or LoRA adapter) or a hub id.
        device: ``"auto"`` / ``"cpu"`` / ``"cuda:0"`` (the engine is written for CPU; it runs on
            CUDA too, but vLLM is the better choice there).
        dtype: ``"auto"`` (float32 on CPU) or an explicit dtype.
        max_batch_size: sequences decoded together (slots).
        prefix_cache_mb: memory for cached prefixes (keys/values); 0 disables reuse.
        max_prefill_tokens: prompt tokens per packed forward pass (bounds activation memory).
        speculative_tokens: draft tokens per sequence and step, copied from its context and
            verified exactly (:mod:`leafe.policy.speculative`); 0 decodes one token per step.
        packed_linear: on the CPU in float32, run passes of 16+ rows on oneDNN with a copy of the
            weights reordered once (:class:`~leafe.policy.native_linear.PackedWeights`; one
            more copy of the weights in memory); False runs every product on MKL.
    """

    name = "native"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 64,
        prefix_cache_mb: int = 2048,
        max_prefill_tokens: int = 2048,
        speculative_tokens: int = DRAFT_TOKENS,
        packed_linear: bool = True,
    ) -> None:
        from leafe.policy.transformers_backend import load_model

        hf_model, tokenizer = load_model(model, device, dtype)
        self._setup(
            hf_model, tokenizer, max_batch_size, prefix_cache_mb, max_prefill_tokens, model, speculative_tokens, packed_linear
        )
        self.net.fuse_projections()  # the model is the engine's own: nothing else holds its parameters
        self.net.pack_weights()

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 64,
        prefix_cache_mb: int = 2048,
        max_prefill_tokens: int = 2048,
        speculative_tokens: int = DRAFT_TOKENS,
        packed_linear: bool = True,
    ) -> NativePolicy:
        """Serve an already-built ``(model, tokenizer)`` pair (tests, or a model being trained:
        call :meth:`weights_changed` after every update)."""
        policy = cls.__new__(cls)
        name = getattr(model, "name_or_path", "") or ""
        policy._setup(
            model, tokenizer, max_batch_size, prefix_cache_mb, max_prefill_tokens, name, speculative_tokens, packed_linear
        )
        return policy

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int,
        prefix_cache_mb: int,
        max_prefill_tokens: int,
        name: str,
        speculative_tokens: int = 0,
        packed_linear: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {max_prefill_tokens}")
        if speculative_tokens < 0:
            raise ValueError(f"speculative_tokens must be >= 0, got {speculative_tokens}")
        self.net = LlamaFamilyForward(model)
        self.net.packed.enabled = self.net.packed.enabled and bool(packed_linear)
        net = self.net
        if net.flash_cascade and net.param.device.type == "cpu" and net.param.dtype == torch.float32 and net.head_dim in HEAD_DIMS:
            net.ragged = ragged_attention_op()  # None where it cannot be built: the flash kernel then
        keep_freed_memory()  # freed logits, cache entries and activations are reused, not re-faulted
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = name
        self.codec = PromptCodec(tokenizer, name)
        self.eos_token_ids = frozenset(eos_token_ids(model, tokenizer))
        self.max_batch_size = int(max_batch_size)
        self.max_prefill_tokens = int(max_prefill_tokens)
        self.speculative_tokens = int(speculative_tokens)
        self.cascade = True  # decode attention reads a prefix common to all rows once
        param = self.net.param
        self.cache = PrefixCache(
            int(prefix_cache_mb) << 20, len(self.net.layers), self.net.kv_heads, self.net.head_dim, param.dtype, param.device
        )
        self.stats = EngineStats()
        self.slots = KVSlots(self.net, max_batch_size, name)
        self._queue: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []  # in slot order
        self._parked: dict[int, _Parked] = {}  # slot -> what it holds
        # How long a slot stays parked: until its slot is needed where decode attention leaves
        # holes out (the CPU flash kernel), else PARK_STEPS steps (holes cost whole rows there).
        self.park_steps: int | None = None if self.net.flash_cascade and param.device.type == "cpu" else PARK_STEPS
        self._steps = 0
        self._ready: dict[int, list[_Sequence]] = {}  # stream.id -> finished, not yet collected
        self._lock = threading.RLock()

    def render_prompt(self, prompt: Any) -> str:
        """The exact text the model is conditioned on (see :meth:`PromptCodec.render`)."""
        return self.codec.render(prompt)

    def weights_changed(self) -> None:
        """Forget cached prefixes and the weights' oneDNN copies: they were made from the old
        weights. (A copy is also remade when its weight's version counter moves, but an update
        through ``.data`` does not move it.) Sequences still running keep the keys/values they
        have, but these are neither parked nor copied for other prompts."""
        with self._lock:
            self.cache.clear()
            self._parked.clear()
            for seq in self._active:
                seq.current = False
            self._compact()
            self.net.packed.clear()

    def release_memory(self) -> None:
        """Give back the key/value slots and the prefix cache while nothing is generating (e.g.
        before a training update that needs the memory); the next request allocates them again."""
        with self._lock:
            if self._active or self._queue:
                return
            self._parked.clear()
            self.slots.clear()
            self.cache.release()
            self.net.packed.clear()
            give_back_freed_memory()

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request; the i-th generation answers the i-th request."""
        return [result.generation for result in self.generate_tokens(requests, params)]

    def generate_tokens(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[TokenGeneration]:
        """Like :meth:`generate`, also returning prompt and completion token ids."""
        stream = self.stream(params)
        results: list[TokenGeneration | None] = [None] * len(requests)
        try:
            for index, request in enumerate(requests):
                stream.submit(index, request)
            while stream.pending:
                for index, result in stream.next_finished():
                    results[index] = result
        finally:
            stream.close()
        return [result for result in results if result is not None]

    def stream(self, params: SamplingParams) -> NativeStream:
        """A stream of requests sharing ``params``: submit at any time, collect as they finish.
        Several streams may share the engine; their sequences are decoded in one batch."""
        check_params(params)
        return NativeStream(self, params)

    def _enqueue(self, seq: _Sequence) -> None:
        with self._lock:
            self.slots.reserve(self.max_batch_size, seq.reach)
            self.stats.requests += 1
            self.stats.prompt_tokens += len(seq.prompt_ids)
            if seq.params.max_new_tokens == 0:
                self._ready.setdefault(seq.stream.id, []).append(seq)
            else:
                self._queue.append(seq)

    def _cancel(self, stream: NativeStream) -> None:
        """Drop every queued, running or uncollected sequence of ``stream``."""
        with self._lock:
            self._queue = deque(seq for seq in self._queue if seq.stream is not stream)
            for seq in [seq for seq in self._active if seq.stream is stream]:
                self._release(seq)
            self._ready.pop(stream.id, None)

    def _collect(self, stream: NativeStream) -> list[_Sequence]:
        """Run the scheduler until at least one of ``stream``'s sequences is done; return them all."""
        while True:  # the lock is released between steps so other threads can submit
            with self._lock, torch.inference_mode():
                if self._ready.get(stream.id):
                    self.stats.cache_evictions = self.cache.evictions
                    return self._ready.pop(stream.id)
                if not self._queue and not self._active:
                    raise RuntimeError("the engine has no work left for this stream (lost requests)")
                self._step()

    def _step(self) -> None:
        """One scheduler iteration: one forward pass that advances every active sequence by a
        token (or several: with ``speculative_tokens``, its last token and a draft are verified
        in the same pass) and, in the same pass, prefills the prompts of queued sequences that
        fit into free slots (their first token is sampled from it). Admissions too large for one
        pass (``max_prefill_tokens``) or with nothing to decode get prompt-only passes instead.
        Finished sequences are parked in their slots; with ``park_steps``, parked slots nobody
        claimed in time go to the prefix cache."""
        slots = self.slots.count
        decoding = list(self._active)  # in slot order
        drafts = [self._draft(seq) for seq in decoding]
        admitted: list[_Sequence] = []
        if self._queue and len(decoding) < slots:
            admitted = [self._queue.popleft() for _ in range(min(slots - len(decoding), len(self._queue)))]
            unclaimed, scratch = self._place(admitted)
            for seq in admitted:
                self.slots.prepare(seq.slot, seq.reach)
            # The unclaimed sequences' slots are still empty: shared prefixes may be computed there.
            self._load_prefixes(unclaimed, scratch)
            if self.cache.enabled:  # prefix_cache_mb=0 turns every reuse off
                self._copy_from_slots(admitted, [seq for seq in decoding if seq.current])
            new_tokens = sum(len(seq.prompt_ids) - seq.length for seq in admitted)
            if not decoding or len(decoding) + sum(map(len, drafts)) + new_tokens > self.max_prefill_tokens:
                hidden = self._run_prompts([(seq.slot, seq.length, seq.prompt_ids[seq.length :]) for seq in admitted])
                self._activate(admitted)
                self._advance(admitted, [[] for _ in admitted], self.net.logits(hidden))
                admitted, decoding = [], []
        if decoding:
            start = time.perf_counter()
            device = self.net.param.device
            token_ids: list[int] = []
            token_positions: list[int] = []
            token_slots: list[int] = []
            for seq, draft in zip(decoding, drafts):  # rows in slot order; the batch is slots 0..B-1
                token_ids += [seq.generated[-1], *draft]
                token_positions += range(seq.length, seq.length + 1 + len(draft))
                token_slots += [seq.slot] * (1 + len(draft))
            tokens = torch.tensor(token_ids, device=device)
            positions = torch.tensor(token_positions, device=device)
            holes = decoding[-1].slot + 1 > len(decoding)  # parked or free slots below an active one
            decode_slots = torch.tensor(token_slots, device=device) if len(token_ids) > len(decoding) or holes else None
            pieces = [(seq.slot, seq.length, seq.prompt_ids[seq.length :]) for seq in admitted]
            shared = self._shared_prefix(decoding) if self.cascade else 0
            logits = self.net.logits(
                self.net.forward(
                    self.slots.keys, self.slots.values, tokens, positions, pieces, shared, decode_slots, decoding[0].slot
                )
            )
            self._activate(admitted)
            self.stats.computed_prompt_tokens += sum(len(toks) for _, _, toks in pieces)
            self.stats.decode_seconds += time.perf_counter() - start
            self.stats.decode_steps += 1
            self._advance(decoding + admitted, drafts + [[] for _ in admitted], logits)
        for seq in [seq for seq in self._active if seq.done]:
            self._retire(seq)
            self._ready.setdefault(seq.stream.id, []).append(seq)
        self._steps += 1
        if self.park_steps is not None:
            for slot in [slot for slot, parked in self._parked.items() if self._steps - parked.step >= self.park_steps]:
                self._evict(slot)
        self._compact()

    def _activate(self, seqs: list[_Sequence]) -> None:
        """Add placed sequences to the active ones, kept in slot order."""
        self._active.extend(seqs)
        self._active.sort(key=lambda seq: seq.slot)

    def _place(self, seqs: list[_Sequence]) -> tuple[list[_Sequence], list[int]]:
        """Give each admitted sequence a slot: the parked slot it continues (:meth:`_claim`; its
        ``length`` is then set), else the lowest free slot, else the slot parked longest (sent to
        the cache first). Returns the sequences without a claim, and the slots that may be
        written before their prefixes are loaded: theirs, then the free ones left."""
        claimed = [self._claim(seq) for seq in seqs]
        unclaimed = [seq for seq, done in zip(seqs, claimed) if not done]
        taken = {seq.slot for seq in self._active} | {seq.slot for seq, done in zip(seqs, claimed) if done} | set(self._parked)
        free = [slot for slot in range(self.slots.count) if slot not in taken]
        for seq in unclaimed:
            if free:
                seq.slot = free.pop(0)
            else:
                seq.slot = min(self._parked, key=lambda slot: self._parked[slot].step)
                self._evict(seq.slot)
        return unclaimed, [seq.slot for seq in unclaimed] + free

    def _claim(self, seq: _Sequence) -> bool:
        """Continue ``seq`` in the parked slot sharing its longest prompt prefix, with nothing
        copied, when that prefix is at least ``_MIN_SHARED`` tokens and no shorter than the
        prefix cache's best match.

        A slot holding ``_MIN_SHARED`` or more tokens past the shared prefix (the new prompt
        diverges from it: a branch from an earlier turn, or another episode's slot) is claimed
        only if that saves ``_MIN_SHARED`` or more tokens of compute over the cache's match; what
        it held goes to the cache first, as :meth:`_evict` would. A shorter tail (an episode's
        next turn differs from its last completion by a token or two where the text is tokenized
        anew) is dropped."""
        best, common = self._longest_parked(seq.prompt_array)
        if common < _MIN_SHARED:
            return False
        cached = self.cache.match(seq.prompt_array)[1]
        diverges = len(self._parked[best].tokens) - common >= _MIN_SHARED
        if common < cached or (diverges and common - cached < _MIN_SHARED):
            return False
        if diverges:
            self._evict(best)
        else:
            del self._parked[best]
        seq.slot, seq.length = best, min(common, len(seq.prompt_ids) - 1)
        self.stats.cached_prompt_tokens += seq.length
        self.stats.slot_reuses += 1
        return True

    def _copy_from_slots(self, seqs: list[_Sequence], sources: list[_Sequence]) -> None:
        """Where the slot of a running sequence in ``sources``, or a parked slot, holds a longer
        prefix of a new prompt than its slot has (``seq.length``), copy the missing positions
        from there: by ``_MIN_SHARED`` or more. Such prefixes are in no cache entry, since a
        sequence's keys/values reach the cache only when its slot stops being used. Cases: n
        samples of a task that drew the same replies so far, one of them a turn ahead; a branch
        from an episode that is still running."""
        for seq in seqs:
            want = len(seq.prompt_ids) - 1  # the last prompt token is always computed
            best, source = seq.length, -1
            if want - best < _MIN_SHARED:
                continue
            for other in sources:
                common = common_prefix_length(other.prompt_array, seq.prompt_array)
                if common == len(other.prompt_array) and other.length > common:  # on into its reply
                    reply = np.asarray(other.generated[: other.length - common], dtype=np.int64)
                    common += common_prefix_length(reply, seq.prompt_array[common:])
                common = min(common, other.length, want)
                if common > best:
                    best, source = common, other.slot
            slot, common = self._longest_parked(seq.prompt_array)
            if min(common, want) > best:
                best, source = min(common, want), slot
            if best - seq.length >= _MIN_SHARED:
                self.slots.move(source, seq.slot, best, start=seq.length)
                self.stats.cached_prompt_tokens += best - seq.length
                seq.length = best

    def _longest_parked(self, prompt: np.ndarray) -> tuple[int, int]:
        """The parked slot sharing the longest prefix with ``prompt`` and that length (``(-1, 0)``
        when none shares any)."""
        best, common = -1, 0
        for slot, parked in self._parked.items():
            length = common_prefix_length(parked.tokens, prompt)
            if length > common:
                best, common = slot, length
        return best, common

    def _evict(self, slot: int) -> None:
        """Un-park a slot: what it holds goes to the prefix cache; the slot is then free."""
        tokens = self._parked.pop(slot).tokens
        self.cache.insert(tokens, lambda kv: self.slots.copy_out(slot, len(tokens), kv))

    def _compact(self) -> None:
        """Move the highest active sequences down into free slots below them (parked slots stay),
        so that the decode batch ``0..B-1`` has as few holes as it can."""
        taken = {seq.slot for seq in self._active} | set(self._parked)
        free = deque(slot for slot in range(self._active[-1].slot if self._active else 0) if slot not in taken)
        while free and free[0] < self._active[-1].slot:
            top, target = self._active.pop(), free.popleft()
            self.slots.prepare(target, top.reach)
            self.slots.move(top.slot, target, top.length)
            top.slot = target
            self._activate([top])

    def _shared_prefix(self, seqs: list[_Sequence]) -> int:
        """Length of the prompt prefix every sequence shares and holds in its slot (0 for one)."""
        if len(seqs) < 2:
            return 0
        first = seqs[0].prompt_array
        shared = min(len(first), min(seq.length for seq in seqs))
        for seq in seqs[1:]:
            shared = min(shared, common_prefix_length(first[:shared], seq.prompt_array))
            if shared < MIN_CASCADE:
                return 0
        return shared

    def _draft(self, seq: _Sequence) -> list[int]:
        """Draft tokens for ``seq``'s next step (``[]`` without speculation). At most
        ``max_new_tokens`` are generated: the verified draft plus the model's own token must fit."""
        room = min(self.speculative_tokens, seq.params.max_new_tokens - len(seq.generated) - 1)
        if room <= 0:
            return []
        context = np.concatenate([seq.prompt_array, np.asarray(seq.generated, dtype=np.int64)])
        return propose_draft(context, room)

    def _advance(self, seqs: Sequence[_Sequence], drafts: Sequence[list[int]], logits: torch.Tensor) -> None:
        """Append each sequence's new tokens, rows grouped by their stream's sampling parameters:
        its draft's accepted prefix and one token of its own (:func:`verify_drafts`; a sequence
        just admitted, or without a draft, samples one token), up to its end (eos, stop string,
        ``max_new_tokens``, which sets ``done``). ``logits: (sum(1 + len(d) for d in drafts),
        vocab)``, each sequence's rows in order. Its slot then holds keys/values for every token
        but the last kept one, as after as many one-token steps."""
        firsts = np.cumsum([0] + [1 + len(d) for d in drafts]).tolist()
        groups: dict[int, list[int]] = {}
        for index, seq in enumerate(seqs):
            groups.setdefault(id(seq.params), []).append(index)
        for members in groups.values():
            params = seqs[members[0]].params
            rows = [row for i in members for row in range(firsts[i], firsts[i + 1])]
            kept = verify_drafts(
                logits[rows] if len(members) < len(seqs) else logits,
                [drafts[i] for i in members],
                [seqs[i].generator for i in members],
                params.temperature,
                params.top_p,
            )
            for i, new in zip(members, kept):
                seq = seqs[i]
                for count, token in enumerate(new, 1):
                    seq.generated.append(token)
                    if self._finished(seq):
                        seq.done = True
                        break
                seq.length = len(seq.prompt_ids) + len(seq.generated) - 1
                self.stats.generated_tokens += count
                self.stats.draft_tokens += len(drafts[i])
                self.stats.accepted_draft_tokens += len(new) - 1

    def _finished(self, seq: _Sequence) -> bool:
        if seq.generated[-1] in self.eos_token_ids or self.codec.has_stop(seq.generated, seq.params.stop):
            seq.stopped = True
            return True
        return len(seq.generated) >= seq.params.max_new_tokens

    def _retire(self, seq: _Sequence) -> None:
        """Take a finished sequence out of the batch, its keys/values parked in its slot for a
        continuation to claim (with the prefix cache off, the slot is simply freed)."""
        self._active.remove(seq)
        if self.cache.enabled and seq.current:
            reply = np.asarray(seq.generated[:-1], dtype=np.int64)  # the last token was sampled, never run
            self._parked[seq.slot] = _Parked(np.concatenate([seq.prompt_array, reply]), self._steps)

    def _release(self, seq: _Sequence) -> None:
        """Drop an active sequence (its stream was cancelled) and free its slot."""
        self._active.remove(seq)
        self._compact()

    # ------------------------------------------------------------------ prompts

    def _load_prefixes(self, seqs: list[_Sequence], free_slots: Sequence[int]) -> None:
        """Prepare new sequences' slots: compute prefixes shared by several of them once (into the
        cache), then copy each one's longest cached prefix into its slot and set ``seq.length``.
        At least the last prompt token is left to compute (its logits give the first token)."""
        self._warm_shared([seq.prompt_ids for seq in seqs], list(free_slots))
        for seq in seqs:
            entry, length = self.cache.match(seq.prompt_ids)
            length = min(length, len(seq.prompt_ids) - 1)
            if entry is not None and length > 0:
                self.slots.load(seq.slot, entry.kv, length)
            seq.length = max(length, 0)
            self.stats.cached_prompt_tokens += seq.length

    def _warm_shared(self, prompts: list[list[int]], free_slots: list[int]) -> None:
        """Compute, once, each prefix that two or more ``prompts`` share beyond what the cache
        holds, and cache it. Recurses so that prefixes shared among those prefixes (say, the
        instructions common to several tasks' prompts) are computed first, also only once."""
        if len(prompts) < 2 or not free_slots or not self.cache.enabled:
            return
        ordered = sorted(prompts)
        arrays = [np.asarray(p) for p in ordered]
        neighbour = [common_prefix_length(a, b) for a, b in zip(arrays, arrays[1:])]
        wanted: dict[tuple[int, ...], None] = {}
        for i, prompt in enumerate(ordered):
            shared = max(neighbour[i - 1] if i > 0 else 0, neighbour[i] if i < len(neighbour) else 0)
            if shared >= _MIN_SHARED and shared - self.cache.match(prompt[:shared])[1] >= _MIN_SHARED:
                wanted[tuple(prompt[:shared])] = None
        prefixes = [list(p) for p in wanted]
        if not prefixes:
            return
        self._warm_shared(prefixes, free_slots)
        for start in range(0, len(prefixes), len(free_slots)):
            batch = list(zip(free_slots, prefixes[start : start + len(free_slots)]))
            pieces = []
            for slot, prefix in batch:
                entry, length = self.cache.match(prefix)
                length = min(length, len(prefix) - 1)
                if entry is not None and length > 0:
                    self.slots.load(slot, entry.kv, length)
                pieces.append((slot, length, prefix[length:]))
            self._run_prompts(pieces)
            for slot, prefix in batch:
                self.cache.insert(prefix, lambda kv, slot=slot, n=len(prefix): self.slots.copy_out(slot, n, kv))

    def _run_prompts(self, segments: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        """Prefill ``(slot, start, tokens)`` segments in packed passes of at most
        ``max_prefill_tokens`` tokens (a long segment is split across passes). Returns each
        segment's last hidden state, ``(len(segments), hidden)``."""
        start_time = time.perf_counter()
        budget = self.max_prefill_tokens
        pieces: list[tuple[int, int, list[int], int | None]] = []  # (slot, start, tokens, segment or None)
        for index, (slot, start, tokens) in enumerate(segments):
            for lo in range(0, len(tokens), budget):
                last = lo + budget >= len(tokens)
                pieces.append((slot, start + lo, tokens[lo : lo + budget], index if last else None))
        last_hidden: list[torch.Tensor | None] = [None] * len(segments)
        empty = torch.empty(0, dtype=torch.long, device=self.net.param.device)
        batch: list[tuple[int, int, list[int], int | None]] = []
        used = 0

        def flush() -> None:
            hidden = self.net.forward(self.slots.keys, self.slots.values, empty, empty, [(s, st, t) for s, st, t, _ in batch])
            for row, (_, _, _, segment) in enumerate(batch):
                if segment is not None:
                    last_hidden[segment] = hidden[row]

        for piece in pieces:
            if batch and used + len(piece[2]) > budget:
                flush()
                batch, used = [], 0
            batch.append(piece)
            used += len(piece[2])
        if batch:
            flush()
        self.stats.computed_prompt_tokens += sum(len(tokens) for _, _, tokens in segments)
        self.stats.prefill_seconds += time.perf_counter() - start_time
        return torch.stack([h for h in last_hidden if h is not None])
