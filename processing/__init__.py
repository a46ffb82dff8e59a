"""Multi-view 3D data: scene readers, `datasets` builders, synthetic scenes, frame sampling, targets.

Modules (import what you need; `datasets` is only imported by the builder modules):

    coordinates       camera <-> world, first-frame frame, Euler (scipy "zxy") <-> matrix, box corners
                      and rigid box transforms; every function states its convention
    scannet_layout    read / write ScanNet posed_images (jpg, depth png in mm, pose txt, intrinsics,
                      axis alignment)
    annotation_files  official annotation file names per task and split
    prompts           task prompts in the annotation-file layout (`<image>` per view), from the task
                      registry gap_mllm.tasks_gap_mllm (official wording where public, ours marked)
    builders          `datasets.GeneratorBasedBuilder`s: ReconstructionBuilder, DetectionBuilder,
                      GroundingStage1Builder, GroundingStage2Builder, CaptioningBuilder, SpatialQABuilder
    features          the typed feature schemas of those builders
    parquet_export    Parquet data files + dataset card for the Hub
    collator          GapMllmDataCollator (builder samples -> GapMllmProcessor inputs + labels)
    sampling          uniform and space-aware (Spatial-MLLM) frame sampling
    errors            DataError (names file and sample) and the skip counter
    synth             SynthRooms, the procedural scene generator with exact ground truth
    synth_cli         `gap-mllm synth --scenes N --out DIR`
"""
