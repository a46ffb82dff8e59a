"""Trainer of the encoder stages (stage 0): a module computes its loss parts, the GAP-MLLM is saved.

Stage 0 trains one frozen-later encoder of a GAP-MLLM on its own objective (`GeometryStageModel`: the
VGGT aggregator and its camera + depth heads; `VisionStageModel`: the Qwen ViT on SynthRooms semantics).
Both are `nn.Module`s around the whole `GapMllmForConditionalGeneration` whose forward returns an
`EncoderStageOutput` (`loss` + named unweighted `parts`). `EncoderStageTrainer` logs every part next to the
loss and saves the GAP-MLLM itself (a normal Hub folder with its processor), so the next stage loads it
with `from_pretrained` like any checkpoint.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import safetensors.torch
import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import ModelOutput

from .divergence import DivergenceGuard
from .log_lines import print_numbers


@dataclass
class EncoderStageOutput(ModelOutput):
    """loss `[]` (weighted sum) and `parts`: unweighted loss parts by name (each `[]`)."""

    loss: torch.Tensor | None = None
    parts: dict | None = None


STAGE_HEADS_WEIGHTS = "stage_heads.safetensors"


class EncoderStageModel(nn.Module):
    """Base of the stage-0 wrappers: holds the GAP-MLLM as `model` (so checkpoints keep its key names).

    `stage_heads()` returns the modules that exist only for the stage's objective (e.g. linear probes):
    they are checkpointed beside the model (`stage_heads.safetensors`) so a resumed run continues them,
    and are not part of the GAP-MLLM folder the next stage loads.
    """

    # read by Trainer after loading a checkpoint that lacks a key; a tied `lm_head.weight` (the mini LLM ties it,
    # so `save_pretrained` leaves it out) made resuming a stage-0 run of the mini model fail with AttributeError
    _keys_to_ignore_on_save = None

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def stage_heads(self) -> nn.Module | None:
        return None

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device


class EncoderStageTrainer(DivergenceGuard, Trainer):
    """`Trainer` for an `EncoderStageModel`: logs the loss parts, saves the inner GAP-MLLM + processor."""

    def __init__(self, model: EncoderStageModel, *args, **kwargs):
        if not isinstance(model, EncoderStageModel):
            raise TypeError("EncoderStageTrainer trains an EncoderStageModel (GeometryStageModel / VisionStageModel)")
        super().__init__(model, *args, **kwargs)
        print_numbers(self)  # loss lines with numbers, not quoted strings (log_lines.py)
        self._parts: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        prefix = "" if model.training else "eval_"
        for name, value in (outputs.parts or {}).items():
            self._parts[f"{prefix}{name}_loss"].append(float(value.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(key.startswith("eval_") for key in logs)
        for name in list(self._parts):
            if name.startswith("eval_") == is_eval and self._parts[name]:
                values = torch.tensor(self._parts[name], dtype=torch.float64)
                if self.args.world_size > 1:
                    stats = self.accelerator.reduce(torch.stack([values.sum(), torch.tensor(float(len(values)))]).to(self.args.device), "sum").cpu()
                    logs[name] = round(float(stats[0] / stats[1]), 6)
                else:
                    logs[name] = round(float(values.mean()), 6)
                self._parts[name].clear()
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        wrapper: EncoderStageModel = self.accelerator.unwrap_model(self.model)
        inner = None
        if state_dict is not None:  # gathered by FSDP / DeepSpeed: keys carry the wrapper's prefix
            inner = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
        wrapper.model.save_pretrained(output_dir, state_dict=inner, is_main_process=True)
        heads = wrapper.stage_heads()
        if heads is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
            safetensors.torch.save_file(state, os.path.join(output_dir, STAGE_HEADS_WEIGHTS), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        wrapper: EncoderStageModel = self.accelerator.unwrap_model(model if model is not None else self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.model)
        heads = wrapper.stage_heads()
        if heads is not None:
            heads.load_state_dict(safetensors.torch.load_file(os.path.join(resume_from_checkpoint, STAGE_HEADS_WEIGHTS), device="cpu"))
