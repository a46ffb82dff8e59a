"""GAP-MLLM-Mini's research pipeline, run from the repository root as `python -m lab.mini` (`make mini`,
`make mini-ablation`): SynthRooms data, stages 0-2 of every arm, evaluation on the test split and on scenes of fresh
seeds, the results table (mini/RESULTS.md), the paper's claims in miniature, and the export of the shipped folder
(mini/gap-mllm-mini). The Mini itself (its config, tokenizer and `default_model_path()`) is installed with the
package as `gap_mllm.mini`; see mini/README.md."""
