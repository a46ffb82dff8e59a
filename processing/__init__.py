"""Multi-view 3D data: scene readers, `datasets` builders, synthetic scenes, frame sampling, targets."""
