"""The repository's research pipelines: code that trains, compares and reports on models of this package and writes
the repository's results, run from the repository root (`python -m lab.mini`). Not installed: setup.py installs
the product (`gap_mllm`), which never imports this folder; the lab imports whatever the package installs."""
