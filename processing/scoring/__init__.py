"""The scores of the tasks' answers: pure functions and evaluators on numbers and answer texts, the ones the task
modules (gap_mllm.processing.tasks) score with. `gap_mllm.evaluation` runs them over a data split and exports the
user-facing ones.

    reconstruction_metrics   accuracy / completion / overall of marker points, raw and after Umeyama Sim(3)
"""
