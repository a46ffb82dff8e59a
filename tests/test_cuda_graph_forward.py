"""The VGGT encoder replayed as CUDA graphs (training/cuda_graph_forward.py), proven on the CPU where no graph exists:
the wrapper's bookkeeping with a stand-in recorder that keeps a CUDA graph's contract (a replay rewrites the shape's
static outputs in place), and the two properties of VGGT's forward that a CUDA capture needs (no host synchronisation,
no tensor made on the host). The capture itself is measured by the GPU call (bench_train_arms.py
`sdpa_graph_towers_bucketed`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gap_mllm.host_syncs import HostSyncCounter
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.config import KernelConfig
from gap_mllm.training.cuda_graph_forward import graph_geometry_encoder, ungraph_geometry_encoder
from gap_mllm.training.kernels import GRAPH_OPTION, KernelUnavailableError, check_kernels, graph_distribution_problem


class RecordedReplay:
    """A CUDA graph's contract on the CPU: `capture` runs the forward once on the static input and keeps its outputs
    as the static buffers; each replay recomputes from the static input and writes the buffers in place."""

    def __init__(self):
        self.captured, self.replays = 0, 0

    def capture(self, forward, static_input):
        self.captured += 1
        static_output = forward(static_input)

        def replay():
            self.replays += 1
            fresh = tree_flatten(forward(static_input))[0]
            for buffer, value in zip(tree_flatten(static_output)[0], fresh, strict=True):
                if isinstance(buffer, torch.Tensor):
                    buffer.copy_(value)

        return replay, static_output


def encoder_images(encoder, samples: int, views: int, seed: int) -> torch.Tensor:
    patch = encoder.config.patch_size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(samples, views, 3, 4 * patch, 5 * patch, generator=generator)


def features(output) -> list[torch.Tensor]:
    return [t.clone() for t in output.layer_features]


def test_each_shape_is_recorded_once_and_every_call_returns_its_own_copy():
    model, _ = build_tiny_model()
    encoder = model.geometry_encoder.eval()
    first, second, other = (encoder_images(encoder, 2, 3, seed) for seed in (0, 1, 2))
    few_views = encoder_images(encoder, 1, 2, 3)
    with torch.no_grad():
        expected = {name: features(encoder(x)) for name, x in
                    (("first", first), ("second", second), ("other", other), ("few", few_views))}
    recorder = RecordedReplay()
    graphs = graph_geometry_encoder(model, capture=recorder, any_device=True)
    assert vars(encoder)["forward"] is graphs and graph_geometry_encoder(model) is graphs  # applied once
    with torch.no_grad():
        out_first = encoder(first)
        out_few = encoder(few_views)
        out_second = encoder(second)  # the first shape replayed: its static buffers now hold `second`'s features
        out_other = encoder(other)
    assert graphs.captures == recorder.captured == 2 and recorder.replays == 4
    for name, out in (("first", out_first), ("second", out_second), ("other", out_other), ("few", out_few)):
        assert all(torch.equal(a, b) for a, b in zip(out.layer_features, expected[name], strict=True)), name
    assert out_first.patch_grid == (4, 5)
    ungraph_geometry_encoder(model)
    assert "forward" not in vars(encoder) and not graphs.graphs


def test_the_training_forward_is_unchanged_and_a_trainable_encoder_is_never_replayed():
    model, processor = build_tiny_model()
    from PIL import Image

    images = [Image.new("RGB", (64, 48), (40 * i, 90, 160)) for i in range(2)]
    inputs = processor(images=[images], text=["Where is the chair?"], return_tensors="pt")
    labels = inputs["input_ids"].clone()
    model.train()

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    assert not any(n.startswith("model.geometry_encoder.") for n in plain_grads)  # frozen: no gradient
    recorder = RecordedReplay()
    graphs = graph_geometry_encoder(model, capture=recorder, any_device=True)
    loss, grads = loss_and_grads()
    assert graphs.captures == 1 and torch.equal(loss, plain_loss) and grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    assert recorder.replays == 1  # a capture records, it does not run: each call replays
    model.geometry_encoder.requires_grad_(True)  # a trainable encoder: its own forward, with gradient
    loss, grads = loss_and_grads()
    assert recorder.captured == 1 and recorder.replays == 1 and any(n.startswith("model.geometry_encoder.") for n in grads)


def test_vggts_forward_makes_no_host_synchronisation_and_no_host_tensor():
    """What a CUDA capture needs: no read of a device value on the host, no tensor built on the host and copied in.
    On the meta device a host-made tensor would show as a CPU tensor beside the meta ones."""
    model, _ = build_tiny_model()
    encoder = model.geometry_encoder.eval()
    images = encoder_images(encoder, 2, 3, 0)
    with torch.no_grad(), HostSyncCounter(where=True) as syncs:
        encoder(images)
    assert syncs.total == 0, syncs.places

    class HostTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.operations = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            tensors = tree_flatten((args, kwargs or {}, result))[0]
            if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tensors):
                self.operations.append(str(func))
            return result

    encoder.to("meta")
    images = images.to("meta")
    with torch.no_grad(), HostTensors() as host:
        output = encoder(images)
    assert output.layer_features[0].device.type == "meta" and host.operations == []


def test_the_switch_is_refused_where_it_cannot_run():
    recipe = SimpleNamespace(model=SimpleNamespace(attn_implementation=None), training={},
                             kernels=KernelConfig(graph_geometry_encoder=True))
    with pytest.raises(KernelUnavailableError, match=f"{GRAPH_OPTION}=true needs a CUDA device"):
        check_kernels(recipe, SimpleNamespace(device="cpu", reason="no GPU"))
    plain = SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=False)
    assert graph_distribution_problem(plain) is None
    assert graph_distribution_problem(SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=True)) == "FSDP"
    zero3 = SimpleNamespace(is_deepspeed_enabled=True, is_fsdp_enabled=False, accelerator=SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))))
    assert graph_distribution_problem(zero3) == "DeepSpeed ZeRO-3"
