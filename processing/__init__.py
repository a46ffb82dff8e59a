"""Multi-view 3D data: scene readers, `datasets` builders, synthetic scenes, frame sampling, targets.

Modules (import what you need; `datasets` is only imported by the builder modules):

    coordinates       camera <-> world, first-frame frame, Euler (scipy "zxy") <-> matrix, box corners
                      and rigid box transforms; every function states its convention
    scannet_layout    read / write ScanNet posed_images (jpg, depth png in mm, pose txt, intrinsics,
                      axis alignment)
    annotation_files  official annotation file names per task and split; a human turn's views and query
    box_angles        the orientations of a model's training boxes (its folder's box_angles.json), the check of a
                      box against them, and the angles of a box given by centre and size alone (its cameras' tilt)
    model_lineage     where a model folder's weights come from (its training record and config): a card's lineage
    held_out          the SynthRooms scenes a model trained on, and the warning when it is scored on them
    builders          `datasets.GeneratorBasedBuilder`s, one per task module of `tasks` (a task run in stages: one
                      per stage), named `<Task>Builder` (ReconstructionBuilder, DetectionBuilder,
                      GroundingStage1Builder, ...; `builder_for_task`), with the features and fields its module
                      declares
    features          the feature schemas every task shares and the building blocks of the others
    parquet_export    Parquet data files + dataset card for the Hub
    collator          GapMllmDataCollator (builder samples -> GapMllmProcessor inputs + labels)
    sampling          uniform and space-aware (Spatial-MLLM) frame sampling
    errors            DataError (names file and sample) and the skip counter
    synth             SynthRooms, the procedural scene generator with exact ground truth
    synth_cli         `gap-mllm synth --scenes N --out DIR`
    tasks             the package side of each task, one module per task, registered by name (`PackageTask`:
                      annotation file, dataset fields, scoring, lmms-eval task, card tag, plot, front-end answer)
    scoring           the scores of the tasks' answers, pure functions on numbers and texts that the task
                      modules score with (`gap_mllm.evaluation` exports the user-facing ones)
"""
