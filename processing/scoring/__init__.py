"""The scores of the tasks' answers: pure functions and evaluators on numbers and answer texts, the ones the task
modules (gap_mllm.processing.tasks) score with. `gap_mllm.evaluation` runs them over a data split and exports the
user-facing ones.

    caption_metrics          Scan2Cap's CIDEr, BLEU, METEOR and ROUGE-L at the IoU gate of the proposal
    meteor                   the METEOR scorer (Java), sanitised text and a time limit
    reconstruction_metrics   accuracy / completion / overall of marker points, raw and after Umeyama Sim(3)
"""
