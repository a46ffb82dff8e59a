"""The `gap-mllm` command line. Lives outside the Hub folder's import graph."""
