"""A frozen tower's forward replayed as one CUDA graph per input shape (`kernels.graph_geometry_encoder`).

The best training arm on an H200 (compiled layers and towers; bench/README.md) kept the GPU busy 82 % of its step: the
host launched 5,206 kernels a step one by one, and the frozen VGGT encoder, run without gradient on a few shapes
(samples × views × image size), is the largest share of them. A CUDA graph records those launches once per shape and
replays them with one call, so the tower costs the host one launch instead of thousands (the same cure as compiled
decoding, modeling_gap_mllm/generation.py, where transformers and `torch.compile(mode="reduce-overhead")` do
the recording; here the tower is captured by hand, because its shapes are few and known and nothing in it trains).

    graphs = CudaGraphForward(model.geometry_encoder)   # model.geometry_encoder.forward is now `graphs`
    ...                                                  # training steps: one capture per new shape, then replays
    graphs.remove()                                      # the module's own forward again

What capture needs, and why it holds for VGGT (tests/test_cuda_graph_forward.py checks each on the CPU):
- no gradient: the wrapper runs the module's forward itself when grad is enabled and a parameter trains;
- fixed addresses: each shape owns a static input (copied into before a replay) and static outputs (overwritten by
  the next replay of that shape), so every call returns *copies* of the outputs (a few MB per level at training
  sizes), never the static buffers a later replay would change under a caller;
- no host synchronisation and no tensor made on the host inside the forward (a capture records device work only):
  VGGT's forward has neither (counted with modeling_gap_mllm/host_syncs.py, and run on the meta device, where a
  host-made tensor would show as a CPU tensor).

Captures of all shapes share one memory pool; that is safe here because a shape's outputs are copied before any other
replay, and its static input lives outside the pool. The first call of a shape runs the forward `warmup` times on a
side stream before capturing (cuDNN / cuBLAS handles and `torch.compile`'s compilation happen there, not in the
capture). Off CUDA the module's own forward runs: there is no graph to replay.
"""

from __future__ import annotations

import torch
from transformers.utils import ModelOutput


def copy_tensors(value):
    """`value` with every tensor in it (nested tuples, lists, `ModelOutput`s) cloned; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, ModelOutput):
        return type(value)(**{key: copy_tensors(item) for key, item in value.items()})
    if isinstance(value, (tuple, list)):
        return type(value)(copy_tensors(item) for item in value)
    return value


class CudaGraphCapture:
    """What records and replays one shape: `capture(forward, static_input) -> (replay, static_output)` (the CUDA one;
    tests give a stand-in with the same contract: `replay()` rewrites `static_output` in place from `static_input`)."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.pool = None

    def capture(self, forward, static_input: torch.Tensor):
        side = torch.cuda.Stream(static_input.device)
        side.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                forward(static_input)
        torch.cuda.current_stream(static_input.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_output = forward(static_input)
        return graph.replay, static_output


class CudaGraphForward:
    """Replaces `module.forward` (one tensor argument) by graph replays, one graph per input shape, dtype and device.

    Args:
        module: a frozen module whose forward takes one tensor and makes no host synchronisation (module docstring).
        capture: how a shape is recorded (default `CudaGraphCapture()`); only CUDA inputs are captured unless
            `any_device` (the CPU tests' stand-in).
    """

    def __init__(self, module: torch.nn.Module, capture=None, any_device: bool = False):
        self.module = module
        self.own_forward = module.forward
        self.capture = capture or CudaGraphCapture()
        self.any_device = any_device
        # (shape, dtype, device, autocast) -> (replay, static input, static output)
        self.graphs: dict[tuple, tuple] = {}
        module.forward = self  # an instance attribute: `nn.Module.__call__` (and its hooks) calls it

    @property
    def captures(self) -> int:
        """Shapes recorded so far."""
        return len(self.graphs)

    def _trains(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.module.parameters())

    @torch.no_grad()
    def _replay(self, images: torch.Tensor):
        # an autocast around the call changes the recorded kernels' dtypes: part of what a graph was recorded for
        key = (tuple(images.shape), images.dtype, images.device, torch.is_autocast_enabled(images.device.type))
        if key not in self.graphs:
            static_input = images.clone()
            replay, static_output = self.capture.capture(self.own_forward, static_input)
            self.graphs[key] = (replay, static_input, static_output)
        replay, static_input, static_output = self.graphs[key]
        static_input.copy_(images)
        replay()
        return copy_tensors(static_output)

    def __call__(self, images: torch.Tensor, *args, **kwargs):
        if args or kwargs or self._trains() or not (self.any_device or images.device.type == "cuda"):
            return self.own_forward(images, *args, **kwargs)
        return self._replay(images)

    def remove(self) -> None:
        """The module's own forward again; the graphs (and their memory) are dropped."""
        if vars(self.module).get("forward") is self:
            del self.module.forward
        self.graphs.clear()


def graph_geometry_encoder(gap_model, capture=None, any_device: bool = False) -> CudaGraphForward | None:
    """`kernels.graph_geometry_encoder`: `gap_model`'s VGGT encoder replayed as CUDA graphs (`CudaGraphForward`);
    None for a model without geometry."""
    encoder = getattr(gap_model, "geometry_encoder", None)
    if encoder is None:
        return None
    if isinstance(vars(encoder).get("forward"), CudaGraphForward):
        return vars(encoder)["forward"]
    return CudaGraphForward(encoder, capture=capture, any_device=any_device)


def ungraph_geometry_encoder(gap_model) -> None:
    """Back to the encoder's own forward (`graph_geometry_encoder` undone; nothing to do when it was not applied)."""
    encoder = getattr(gap_model, "geometry_encoder", None)
    graphs = vars(encoder).get("forward") if encoder is not None else None
    if isinstance(graphs, CudaGraphForward):
        graphs.remove()
