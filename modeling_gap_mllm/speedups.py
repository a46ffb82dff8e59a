"""The speed paths the installed package adds around its own copy of the model folder's classes.

Batch-wide Qwen3-VL vision and M-RoPE paths, the engine embeddings serving uses, and the static-cache pool that keeps
compiled decoding's CUDA graphs at fixed addresses across calls. Each gives the same outputs as the stock path its
exactness test compares it with. The role files reach them through `configuration_gap_mllm.installed_package_module`;
a model folder loaded with `trust_remote_code` runs transformers' own paths. Never copied into a model folder.
"""

# ---- batched Qwen3-VL


# ---- engine embeddings


# ---- static-cache pool of compiled decoding
