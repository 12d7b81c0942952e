"""The decoder's forward and backward replayed as CUDA graphs while a trainer trains.

At the study's batch of 8 short sentences a training step is bound by the host, not the GPU:
profiled on an H100, a step launched ~1,900 kernels (compiled blocks) to ~3,250 (eager) one at a
time, for 23-31 ms of GPU work. A CUDA graph launches a recorded sequence of kernels at once, so
`GraphedBackbone` records the whole decoder stack (embedding, every block, final norm) of a
causal LM once per batch shape, forward and backward, with
`torch.cuda.make_graphed_callables`, and replays it on every later batch of that shape. The LM
head and TRL's loss stay eager: they are a few kernels, and the loss selects its tokens with a
data-dependent mask. Nothing about the computation changes: the same kernels run on the same
values, and TRL's trainer, the optimizer and the schedule are untouched.

What makes it safe:
- Shapes: a graph replays fixed shapes, so batches are padded to a multiple of the sequence
  length (`train.pad_to_multiple_of`), which the loss ignores; the stand-in split then meets
  four lengths. A batch of another size (the epoch's last, partial one) runs eager.
- The attention mask: transformers decides between masks with host-side checks of the data,
  which a recording cannot hold, so the 4-D mask (causal and padding) is built here, outside the
  graph, and passed in; transformers uses a 4-D mask as given.
- Only training runs the graphs: in eval mode, under `torch.no_grad`, or with arguments other
  than ids and a padding mask, the decoder's own forward runs.
- Memory: every shape keeps its own activations and gradient buffers (for full fine-tuning of
  the 0.5B stand-in, ~2 GiB of float32 gradients a shape); the shapes share one memory pool,
  which is safe because one shape's forward and backward never interleave with another's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

log = logging.getLogger(__name__)

# Arguments the graphed forward accepts with these values; anything else runs eager.
NEUTRAL_ARGUMENTS = {
    "use_cache": (None, False),
    "past_key_values": (None,),
    "cache": (None,),  # transformers 5.24's name for past_key_values
    "inputs_embeds": (None,),
    "position_ids": (None,),
    "cache_position": (None,),
    "output_attentions": (None, False),
    "output_hidden_states": (None, False),
    "return_dict": (None, True),
}


def padded_causal_mask(attention_mask):
    """The boolean 4-D mask (batch, 1, query, key) that sdpa attention takes: causal, and no
    attention to padding. A padding query also attends to itself, so that with left padding no
    row is empty (an empty row is NaN in memory-efficient attention); the loss ignores those
    rows."""
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    diagonal = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    return mask | diagonal[None, None]


def capture_cuda_graphs(module, sample_args: tuple, pool) -> Callable:
    """Record `module`'s forward and backward on `sample_args` (torch's own capture)."""
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if torch.is_autocast_enabled("cuda"):
        # A recording cannot use autocast's cache of cast weights (torch refuses it); the casts
        # are recorded as kernels instead, as many as eager autocast runs.
        context = torch.autocast(
            "cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False
        )
    with context:
        return torch.cuda.make_graphed_callables(module, sample_args, pool=pool)


class GraphedBackbone:
    """Replace `backbone.forward` by one that replays CUDA graphs in training, per batch shape.

    `batch_size` is the per-device batch: only batches of that many rows are recorded.
    `capture(module, sample_args, pool)` returns a callable that runs `module` on arguments of
    `sample_args`' shapes; it is `capture_cuda_graphs` on a GPU.
    """

    def __init__(self, backbone, batch_size: int, capture: Callable = capture_cuda_graphs):
        self.backbone = backbone
        self.batch_size = batch_size
        self.capture = capture
        self.eager_forward = backbone.forward
        self.graphs: dict[tuple[int, ...], Callable] = {}
        self.captures: list[dict[str, Any]] = []  # shape and seconds of every recording
        self.eager_calls = 0  # training forwards that ran eager (partial batches)
        self.pool = None
        backbone.forward = self.forward

    def forward(self, *args, **kwargs):
        if args or not self.replayable(kwargs):
            if self.backbone.training and torch.is_grad_enabled():
                self.eager_calls += 1
            return self.eager_forward(*args, **kwargs)
        input_ids, attention_mask = kwargs["input_ids"], kwargs["attention_mask"]
        mask = padded_causal_mask(attention_mask)
        graphed = self.graphs.get(tuple(input_ids.shape))
        if graphed is None:
            graphed = self.record(input_ids, mask)
        return BaseModelOutputWithPast(last_hidden_state=graphed(input_ids, mask))

    def replayable(self, kwargs: dict[str, Any]) -> bool:
        """Training, on a full batch of ids with a padding mask, and nothing else that counts."""
        others = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}
        input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        return (
            self.backbone.training
            and torch.is_grad_enabled()
            and input_ids is not None
            and attention_mask is not None
            and input_ids.dim() == 2
            and attention_mask.dim() == 2
            and input_ids.shape[0] == self.batch_size
            and all(
                name in NEUTRAL_ARGUMENTS
                and any(value is allowed for allowed in NEUTRAL_ARGUMENTS[name])
                for name, value in others.items()
            )
        )

    def record(self, input_ids, mask) -> Callable:
        if self.pool is None and torch.cuda.is_available():
            self.pool = torch.cuda.graph_pool_handle()
        started = time.perf_counter()
        graphed = self.capture(
            DecoderCall(self.backbone, self.eager_forward), (input_ids, mask), self.pool
        )
        seconds = time.perf_counter() - started
        shape = tuple(input_ids.shape)
        self.graphs[shape] = graphed
        self.captures.append({"shape": list(shape), "seconds": round(seconds, 3)})
        log.info(
            "recorded the decoder's CUDA graphs for batches of shape %s in %.2f s", shape, seconds
        )
        return graphed

    def restore(self) -> None:
        """Put the decoder's own forward back and free the recordings."""
        self.backbone.forward = self.eager_forward
        self.graphs.clear()
        self.pool = None


class DecoderCall(torch.nn.Module):
    """The decoder as `(input_ids, 4-D mask) -> last hidden state`: tensors in, one tensor out,
    the decoder's parameters as its own, which is the form torch's capture records."""

    def __init__(self, backbone, forward: Callable) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder_forward = forward  # the decoder's own forward, not the graphed one

    def forward(self, input_ids, mask):
        return self.decoder_forward(
            input_ids=input_ids, attention_mask=mask, use_cache=False
        ).last_hidden_state


def backbone_of(model):
    """The decoder stack of a causal LM, through a PEFT wrapper: what TRL's fused LM head calls."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model
