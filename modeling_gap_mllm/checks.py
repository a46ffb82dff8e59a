"""The checks the installed package adds around its own copy of the model folder's classes.

Each turns what would be an obscure failure (or a long wait) into an error that names the input: config sizes and
memory, checkpoints on loading, forward inputs, generate's token ids and context, a reused scene's model, the
processor's arguments. The role files call them through `configuration_gap_mllm.installed_package_module`; a model
folder loaded with `trust_remote_code` runs as transformers runs it. Never copied into a model folder.
"""

# ---- configuration sizes and memory


# ---- loading: missing weights and damaged checkpoints


# ---- forward inputs


# ---- generate: token ids and context


# ---- scene reuse: the model that encoded a scene


# ---- processor arguments
