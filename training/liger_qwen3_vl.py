"""Liger's RMSNorm, RoPE and SwiGLU kernels in Qwen3-VL's text model, put in place from Liger's building blocks.

Why not Liger's own `apply_liger_kernel_to_qwen3_vl`: in liger-kernel 0.8.5 it imports its fused-loss forward for
Qwen3-VL first, whatever is asked, and that module needs `Qwen3VLCausalLMOutputWithPast`, which transformers 5.23 no
longer defines, so every call fails with an ImportError (seen on the first GPU run of `kernels.liger_language_model`).
It also leaves Qwen3-VL's MLP as it is (its `swiglu` argument is unused). This module takes the three public pieces
the patcher itself uses (`LigerRMSNorm`, `liger_rotary_pos_emb`, `LigerSwiGLUMLP`) and puts them where the patcher
would, plus the MLP:

- RMSNorm: every RMSNorm of the text model (each layer's input and post-attention norms, the q/k norms, the final
  norm) is replaced by a `LigerRMSNorm` holding the same weight `Parameter` (Qwen3's casting: "llama", offset 0), so
  state-dict names, the optimizer's parameters and LoRA's targets stay what they are.
- RoPE: Qwen3-VL's module function `apply_rotary_pos_emb` becomes Liger's. It is a module global of transformers'
  modeling file, so every Qwen3-VL text model of the process uses it from then on (as with Liger's own patcher); the
  vision tower's RoPE is left alone (frozen tower).
- SwiGLU: each decoder layer's MLP computes `down(silu(gate(x)) * up(x))` with Liger's fused kernel, its Linear
  layers untouched.

Liger's kernels are Triton, so they run on CUDA only; the CPU tests put plain-torch stand-ins of the three pieces in
place and check that the patched model computes what the unpatched one does.
"""

from __future__ import annotations

from types import MethodType

from torch import nn

# Qwen3's RMSNorm multiplies by the weight (no 1 + w offset) and casts like Llama: Liger's "llama" mode
QWEN3_RMS_NORM = {"offset": 0.0, "casting_mode": "llama", "in_place": True}
SWIGLU_ACTIVATIONS = ("silu", "swish")


def text_norms(text_model) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every RMSNorm of `text_model` (a `Qwen3VLTextModel`): per layer input, post-attention,
    q and k norms, then the final norm."""
    places = []
    for layer in text_model.layers:
        places += [(layer, "input_layernorm"), (layer, "post_attention_layernorm")]
        attention = layer.self_attn
        places += [(attention, name) for name in ("q_norm", "k_norm") if getattr(attention, name, None) is not None]
    return places + [(text_model, "norm")]


def liger_norm_like(norm: nn.Module, rms_norm_class) -> nn.Module:
    """A `rms_norm_class` (Liger's `LigerRMSNorm`) computing what `norm` computes, sharing its weight `Parameter`."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    liger = rms_norm_class(norm.weight.shape[0], eps=eps, **QWEN3_RMS_NORM)
    liger.weight = norm.weight  # the same Parameter: the optimizer, LoRA and the state dict see no change
    return liger


def apply_liger_to_qwen3_vl_text(text_model) -> dict[str, int]:
    """Liger's RMSNorm, RoPE and SwiGLU in `text_model` (module docstring). Returns how many of each were put in place
    ({"rms_norm": n, "swiglu": n, "rope": 1}); raises ImportError naming liger-kernel when its pieces do not import,
    and ValueError when an MLP's activation is not SiLU (Liger's SwiGLU computes SiLU only)."""
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
        from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    except ImportError as error:
        raise ImportError(f"kernels.liger_language_model: liger-kernel's RMSNorm, RoPE or SwiGLU does not import "
                          f"({error})") from error
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    activation = getattr(text_model.config, "hidden_act", None)
    if activation not in SWIGLU_ACTIVATIONS:
        raise ValueError(f"kernels.liger_language_model: the text model's MLP activation is {activation!r}; Liger's "
                         f"SwiGLU computes {' / '.join(SWIGLU_ACTIVATIONS)} only: set kernels.liger_language_model: "
                         "false")
    norms = text_norms(text_model)
    for parent, name in norms:
        setattr(parent, name, liger_norm_like(getattr(parent, name), LigerRMSNorm))
    for layer in text_model.layers:
        layer.mlp.forward = MethodType(LigerSwiGLUMLP.forward, layer.mlp)
    modeling_qwen3_vl.apply_rotary_pos_emb = liger_rotary_pos_emb
    return {"rms_norm": len(norms), "swiglu": len(text_model.layers), "rope": 1}


__all__ = ["QWEN3_RMS_NORM", "apply_liger_to_qwen3_vl_text", "liger_norm_like", "text_norms"]
