"""Greedy decoding on a static KV cache, with the decode step replayed as a CUDA graph.

Evaluating a cell means greedy generation for the same few hundred prompts on many checkpoints of
one model. At the study's scale (a 0.5B model, 520 prompts, 256 new tokens) the GPU does a decode
step for every row in about 2 ms, so `generate`'s per-step Python, kernel launches and mask
building are most of its time. `StaticCacheDecoder` runs its own loop instead:

- prompts are sorted by length and left-padded into few, large batches; one prefill each, then one
  forward per new token on a `transformers.StaticCache`;
- it builds the 4D additive attention mask itself and opens one cache column per step in place, and
  passes explicit per-row `position_ids`, so transformers' mask code never runs (a 4D mask is
  returned as-is by `masking_utils`);
- on CUDA, the whole decode step (mask update, forward, argmax, stop bookkeeping, counters) is one
  CUDA graph per (rows, cache length), captured once and replayed for every later batch of that
  shape: the next checkpoint, whose weights are copied into the same tensors, replays it as is;
- the host looks at the stop flags only every `stop_check_interval` steps;
- the prefill runs in column chunks of at most `max_prefill_tokens` (rows x columns, 32,768): a
  judge's batch of 256 rubric prompts of ~1,070 tokens, prefilled at once, needs 4.55 GiB for each
  MLP activation of the 1.5B stand-in judge, and ran the GPU of the grid out of memory beside
  other cells at ~36 GiB a judge (reports/h200-2026-12-03-grid2/). Chunks write the same cache
  columns in order; a generator's batch of AdvBench prompts (520 x ~40) is one chunk, as before.

Attention runs through our own function (`_attention`, swapped in for the duration of `decode`):
for a single query it folds the query heads that share a key/value head into the query-length
axis, so each step reads the cache once per key/value head, where transformers' SDPA path with a
mask (5.17) repeats the whole cache for every query head of the group first.

Each shape's cache stays for the next checkpoint, within `max_cache_bytes` (16 GiB): past it, the
least recently used shapes are dropped first. A judge reads prompts of many lengths once, each
batch a new shape that nothing uses again: a batch of 256 rubric prompts of ~1,000 tokens, with
384 new ones, has a cache of ~10 GB on the 1.5B stand-in judge; kept, eight such batches would
hold 80 GB (a process at ~67 GiB filled the H200 of `reports/standin-h200-2026-12-03/`). The
budget keeps one of them. The graphs share one memory pool; once the last of them is dropped, the
next capture takes a new pool (capturing into the old one fails an internal assert of PyTorch's
allocator, which the grid's judge stages hit on the H200: `reports/h200-2026-12-03-mps/`).

Rows that have stopped leave the batch (`compact_rows`): at a look at the stop flags, once the rows
still running fit in half the batch or less, they are gathered in place into the batch's first rows
and decoding goes on over that many rows (the next power of two, the rest idle), a view of the same
cache, with its own graph. A judge's batch needs this: about a fifth of the stand-in judge's
rubric answers loop to `max_new_tokens` while the rest end within ~190 tokens, and every step of a
row reads its whole ~1,300-column cache. No memory is added: the smaller shapes are views of the
batch's tensors, and their graphs are kept with the batch's for the next checkpoint.

Results equal transformers' greedy `generate` token for token, in float32 (tests/test_decoding.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, StaticCache

ATTENTION_NAME = "safetydrift_static"
CACHE_LEN_MULTIPLE = 64  # cache lengths are rounded up so that nearby prompt widths share a graph
WARMUP_STEPS = 2  # eager steps before a capture; they may run past the last real column
MAX_CACHE_BYTES = 16 * 2**30  # caches kept across batches and calls (see the module's docstring)
MAX_PREFILL_TOKENS = 32768  # rows x columns of one prefill forward (see the module's docstring)


@dataclass
class Decoded:
    token_ids: list[int]  # new tokens, without the stop token, without padding
    finish_reason: str  # "stop" (an eos/stop token was produced) or "length"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over the static cache with our own mask: [batch, 1, queries, keys_in_use].

    The mask may be narrower than the cache (prefill only looks at the prompt's columns).
    """
    key = key[:, :, : attention_mask.shape[-1]]
    value = value[:, :, : attention_mask.shape[-1]]
    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if queries == 1 and groups > 1:
        grouped = query.reshape(batch, kv_heads, groups, dim)
        out = F.scaled_dot_product_attention(
            grouped, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
        )
        out = out.reshape(batch, heads, 1, dim)
    else:
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, _attention)


@dataclass
class DecodeStats:
    """Where a decoder's time went, summed over its calls (the host waits for the GPU once after
    each prefill to split them; a shape's first prefill includes its graph's capture).
    `row_steps` counts every row of every step, idle rows included: the work `compact_rows` cuts."""

    batches: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    steps: int = 0
    row_steps: int = 0
    compactions: int = 0


@dataclass
class _Slot:
    """A KV cache and the decode step's input/output buffers for one (rows, cache length).

    A captured graph holds the addresses of all of these, so they live as long as the graph and
    every batch of this shape decodes in place in them.
    """

    rows: int
    cache_len: int
    cache: StaticCache
    input_ids: torch.Tensor  # [rows, 1] the token fed to the next step
    position_ids: torch.Tensor  # [rows, 1] its rotary position (prompt length + tokens so far)
    cache_position: torch.Tensor  # [1] the cache column the next step writes
    step: torch.Tensor  # [1] the column of `out` the next step writes
    mask: torch.Tensor  # [rows, 1, 1, cache_len] additive: 0 where a key may be attended
    done: torch.Tensor  # [rows] a stop token has been produced
    out: torch.Tensor  # [rows, max_new_tokens + warm-up steps] produced tokens, pad after a stop
    graph: torch.cuda.CUDAGraph | None = None
    # The same tensors' first rows, by row count: where the running rows go once they fit.
    leading: dict[int, _Slot] = field(default_factory=dict)

    def first_rows(self, rows: int) -> _Slot:
        """A slot over this one's first `rows` rows (views: writes to either are seen by both)."""
        if rows not in self.leading:
            cache = copy.copy(self.cache)
            cache.layers = [copy.copy(layer) for layer in self.cache.layers]
            for layer in cache.layers:
                # The same step counter (`cumulative_length`) and the same storage.
                layer.keys = layer.keys[:rows]
                layer.values = layer.values[:rows]
                layer.batch_size = rows
            self.leading[rows] = _Slot(
                rows=rows,
                cache_len=self.cache_len,
                cache=cache,
                input_ids=self.input_ids[:rows],
                position_ids=self.position_ids[:rows],
                cache_position=self.cache_position,
                step=self.step,
                mask=self.mask[:rows],
                done=self.done[:rows],
                out=self.out[:rows],
            )
        return self.leading[rows]


class StaticCacheDecoder:
    """Greedy decoding for a causal LM (plain or PEFT-wrapped), reused across its checkpoints.

    The model must stay the same object with the same parameter tensors between calls: load the
    next checkpoint with `load_state_dict` (which copies in place), not by building a new model.
    Call `reset()` after anything replaced tensors, to free the caches and graphs.
    """

    stop_check_interval = 16  # steps between the host's looks at the stop flags (each one a sync)

    def __init__(
        self,
        model,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        max_new_tokens: int,
        max_batch_size: int = 1024,
        use_cuda_graphs: bool | None = None,
        max_cache_bytes: int | None = MAX_CACHE_BYTES,
        max_prefill_tokens: int = MAX_PREFILL_TOKENS,
        compact_rows: bool = True,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {max_prefill_tokens}")
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = base.config
        layer_types = set(getattr(self.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(
                f"StaticCacheDecoder supports full-attention layers only, the model has "
                f"{sorted(layer_types)}"
            )
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = base.get_input_embeddings().weight.dtype
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.pad_token_id = int(pad_token_id)
        self.max_new_tokens = int(max_new_tokens)
        self.max_batch_size = int(max_batch_size)
        self.max_prefill_tokens = int(max_prefill_tokens)
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        if use_cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {self.device}")
        self.use_cuda_graphs = use_cuda_graphs
        self.compact_rows = compact_rows
        self.stats = DecodeStats()
        self._eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        # None: every shape's cache is kept (one batch's cache is kept whatever the budget).
        self.max_cache_bytes = max_cache_bytes
        # In order of last use, the least recent first.
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._pool = None

    def reset(self) -> None:
        """Drop every cache and captured graph (the next `decode` captures afresh)."""
        self._slots.clear()
        self._pool = None

    @torch.inference_mode()
    def decode(self, prompts: Sequence[Sequence[int]]) -> list[Decoded]:
        """Greedy continuations of `prompts` (token ids, chat template applied), in their order."""
        if self.model.training:
            raise ValueError("StaticCacheDecoder needs the model in eval mode (model.eval())")
        for number, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {number} is empty")
        if not prompts:
            return []
        # Longest first, in equal batches: similar lengths share a batch, so little is padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        batches = math.ceil(len(order) / self.max_batch_size)
        size = math.ceil(len(order) / batches)
        results: list[Decoded | None] = [None] * len(prompts)
        with self._our_attention():
            for start in range(0, len(order), size):
                chosen = order[start : start + size]
                decoded = self._decode_batch([prompts[i] for i in chosen])
                for index, result in zip(chosen, decoded, strict=True):
                    results[index] = result
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _our_attention(self) -> Iterator[None]:
        # Every config object the modules read `_attn_implementation` from (one for these
        # families), restored afterwards so that the model's own `generate` is unaffected.
        configs = {
            id(c): c
            for m in self.model.modules()
            if (c := getattr(m, "config", None)) is not None and hasattr(c, "_attn_implementation")
        }
        saved = {key: config._attn_implementation for key, config in configs.items()}
        try:
            for config in configs.values():
                config._attn_implementation = ATTENTION_NAME
            yield
        finally:
            for key, config in configs.items():
                config._attn_implementation = saved[key]

    def cache_bytes(self, rows: int, cache_len: int) -> int:
        """The bytes of one shape's key/value cache."""
        config = self.config
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * config.num_hidden_layers * rows * kv_heads * cache_len * head_dim * element

    def _make_room(self, rows: int, cache_len: int) -> None:
        if self.max_cache_bytes is None:
            return
        needed = self.cache_bytes(rows, cache_len)
        held = sum(self.cache_bytes(*key) for key in self._slots)
        while self._slots and held + needed > self.max_cache_bytes:
            oldest = next(iter(self._slots))
            held -= self.cache_bytes(*oldest)
            # Its graph goes with it: it holds the addresses of the slot's tensors.
            del self._slots[oldest]
        if not any(
            s.graph is not None
            for slot in self._slots.values()
            for s in (slot, *slot.leading.values())
        ):
            # With its last graph gone, PyTorch frees the shared pool once its blocks are free,
            # and a capture into that pool fails an internal assert: the next capture needs a
            # new one.
            self._pool = None

    def _slot(self, rows: int, cache_len: int) -> _Slot:
        key = (rows, cache_len)
        if key in self._slots:
            self._slots[key] = self._slots.pop(key)  # now the most recently used
        else:
            self._make_room(rows, cache_len)
            device = self.device
            self._slots[key] = _Slot(
                rows=rows,
                cache_len=cache_len,
                cache=StaticCache(config=self.config, max_cache_len=cache_len),
                input_ids=torch.zeros((rows, 1), dtype=torch.long, device=device),
                position_ids=torch.zeros((rows, 1), dtype=torch.long, device=device),
                cache_position=torch.zeros(1, dtype=torch.long, device=device),
                step=torch.zeros(1, dtype=torch.long, device=device),
                mask=torch.zeros((rows, 1, 1, cache_len), dtype=self.dtype, device=device),
                done=torch.zeros(rows, dtype=torch.bool, device=device),
                out=torch.zeros(
                    (rows, self.max_new_tokens + WARMUP_STEPS), dtype=torch.long, device=device
                ),
            )
        return self._slots[key]

    def _decode_batch(self, prompts: Sequence[Sequence[int]]) -> list[Decoded]:
        width = max(len(p) for p in prompts)
        # Prompt columns, then one column per decode step (the last new token is never fed back).
        needed = width + max(self.max_new_tokens, WARMUP_STEPS)
        cache_len = -(-needed // CACHE_LEN_MULTIPLE) * CACHE_LEN_MULTIPLE
        ids = torch.tensor(
            [[self.pad_token_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long
        ).to(self.device)
        valid = torch.tensor(
            [[False] * (width - len(p)) + [True] * len(p) for p in prompts], dtype=torch.bool
        ).to(self.device)
        slot = self._slot(len(prompts), cache_len)
        started = time.perf_counter()

        self._prefill(slot, ids, valid)
        if self.use_cuda_graphs and slot.graph is None and self.max_new_tokens > 1:
            # The warm-up steps before capture really run and move the slot's state on: start over.
            self._capture(slot)
            self._prefill(slot, ids, valid)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        prefilled = time.perf_counter()
        stats = self.stats
        stats.batches += 1
        stats.prefill_seconds += prefilled - started

        results: list[Decoded | None] = [None] * len(prompts)
        running, rows = slot, list(range(len(prompts)))  # rows[i]: the prompt of running row i
        steps = 1
        while steps < self.max_new_tokens:
            chunk = min(self.stop_check_interval, self.max_new_tokens - steps)
            for _ in range(chunk):
                if running.graph is not None:
                    running.graph.replay()
                else:
                    self._step(running)
            steps += chunk
            stats.steps += chunk
            stats.row_steps += chunk * running.rows
            if steps >= self.max_new_tokens:
                break
            done = running.done[: len(rows)].tolist()
            if all(done):
                break
            if self.compact_rows:
                running, rows, steps = self._compact(slot, running, rows, done, steps, results)

        for row, tokens in zip(rows, running.out[: len(rows), :steps].tolist(), strict=True):
            results[row] = self._decoded(tokens)
        stats.decode_seconds += time.perf_counter() - prefilled
        return results  # type: ignore[return-value]

    def _compact(
        self,
        slot: _Slot,
        running: _Slot,
        rows: list[int],
        done: list[bool],
        steps: int,
        results: list[Decoded | None],
    ) -> tuple[_Slot, list[int], int]:
        """Once the rows still running fit in half of `running`'s rows, gather them into `slot`'s
        first rows (the next power of two; the rest idle) and go on there. Rows that stopped are
        read out now. Returns the slot, its rows' prompts and the steps taken."""
        keep = [i for i, stopped in enumerate(done) if not stopped]
        size = 1 << (len(keep) - 1).bit_length()
        left = self.max_new_tokens - steps
        # Too few steps left to be worth a capture.
        if size > running.rows // 2 or left < self.stop_check_interval + WARMUP_STEPS:
            return running, rows, steps
        stopped = [i for i, flag in enumerate(done) if flag]
        for i, tokens in zip(stopped, running.out[stopped, :steps].tolist(), strict=True):
            results[rows[i]] = self._decoded(tokens)
        # Idle rows repeat a running one (finite values everywhere) and are marked stopped.
        index = torch.tensor(keep + keep[:1] * (size - len(keep)), device=self.device)
        target = slot.first_rows(size)
        for source, layer in zip(running.cache.layers, target.cache.layers, strict=True):
            layer.keys.copy_(source.keys.index_select(0, index))
            layer.values.copy_(source.values.index_select(0, index))
        for name in ("input_ids", "position_ids", "mask", "done", "out"):
            getattr(target, name).copy_(getattr(running, name).index_select(0, index))
        target.done[len(keep) :] = True
        self.stats.compactions += 1
        if self.use_cuda_graphs and target.graph is None:
            # Here the warm-up steps are taken as real steps: the slot's state moves on.
            self._capture(target)
            steps += WARMUP_STEPS
            self.stats.steps += WARMUP_STEPS
            self.stats.row_steps += WARMUP_STEPS * target.rows
        return target, [rows[i] for i in keep], steps

    def _decoded(self, tokens: list[int]) -> Decoded:
        stop = next((i for i, t in enumerate(tokens) if t in self.eos_token_ids), None)
        if stop is None:
            return Decoded(tokens, "length")
        return Decoded(tokens[:stop], "stop")

    def _forward(self, ids, position_ids, mask, cache) -> torch.Tensor:
        output = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1]

    def _prefill(self, slot: _Slot, ids: torch.Tensor, valid: torch.Tensor) -> None:
        """Run the prompts through the model and leave the slot ready for the first decode step."""
        rows, width = ids.shape
        slot.cache.reset()
        # As `generate` derives them from the attention mask: positions skip the left padding,
        # and padding itself sits at position 0.
        positions = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 0)
        lowest = torch.finfo(self.dtype).min
        columns = max(1, self.max_prefill_tokens // rows)
        for start in range(0, width, columns):
            # Queries start..end-1 against keys 0..end-1; the cache appends each chunk's columns
            # after the previous ones.
            end = min(width, start + columns)
            query = torch.arange(start, end, device=self.device)[:, None]
            key = torch.arange(end, device=self.device)[None]
            allowed = (key <= query)[None] & valid[:, None, :end]
            # A padding query would attend to nothing at all; letting it see itself keeps its
            # (never attended) cache entries finite.
            allowed |= (key == query)[None]
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            mask = mask.masked_fill_(~allowed, lowest)[:, None]
            logits = self._forward(ids[:, start:end], positions[:, start:end], mask, slot.cache)
        first = logits.argmax(-1)

        slot.mask.fill_(lowest)
        slot.mask[:, 0, 0, :width].masked_fill_(valid, 0.0)
        slot.input_ids.copy_(first[:, None])
        slot.position_ids.copy_(valid.sum(-1, keepdim=True))
        slot.cache_position.fill_(width)
        slot.step.fill_(1)
        slot.done.copy_(self._is_stop(first))
        slot.out[:, 0] = first

    def _is_stop(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens[:, None] == self._eos).any(-1)

    def _step(self, slot: _Slot) -> None:
        """One new token for every row; device work only, so that it can be captured."""
        slot.mask.index_fill_(-1, slot.cache_position, 0.0)
        logits = self._forward(slot.input_ids, slot.position_ids, slot.mask, slot.cache)
        # As `generate`: rows that have stopped get padding from then on.
        token = torch.where(slot.done, self.pad_token_id, logits.argmax(-1))
        slot.out.index_copy_(1, slot.step, token[:, None])
        slot.done |= self._is_stop(token)
        slot.input_ids.copy_(token[:, None])
        slot.position_ids += 1
        slot.cache_position += 1
        slot.step += 1

    def _capture(self, slot: _Slot) -> None:
        if self._pool is None:
            # One pool for all graphs: they are replayed one at a time and keep nothing in it
            # between replays (every buffer that outlives a step belongs to the slot).
            self._pool = torch.cuda.graph_pool_handle()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        # Warm-up on a side stream, as capture requires: lazy library handles and workspaces
        # are created here rather than inside the graph.
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step(slot)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(slot)
        slot.graph = graph
