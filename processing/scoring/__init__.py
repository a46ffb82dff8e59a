"""The scores of the tasks' answers: pure functions and evaluators on numbers and answer texts, the ones the task
modules (gap_mllm.processing.tasks) score with. `gap_mllm.evaluation` runs them over a data split and exports the
user-facing ones.

    box_iou                  the exact IoU of oriented 3D boxes (float64, no pytorch3d), the box checks
    caption_metrics          Scan2Cap's CIDEr, BLEU, METEOR and ROUGE-L at the IoU gate of the proposal
    category_lists           the detection splits' category lists (cate8, cate20, cate31), clean and official
    detection_metrics        the official greedy matching, precision / recall / F1 / AP per category and split
    detection_parsing        detection answers read tolerantly or the official way, and literal reading
    grounding_metrics        a grounding box's world IoU with its truth, Acc@0.25 / Acc@0.5 / mIoU, unscored reasons
    meteor                   the METEOR scorer (Java), sanitised text and a time limit
    reconstruction_metrics   accuracy / completion / overall of marker points, raw and after Umeyama Sim(3)
    reported_scores          how a task's held-out score is reported from a results file (`PackageTask.reported_score`)
"""
