"""The training job's parts, each small: the run folder, the checks before training, the Trainer, MLflow
tracking (one callback), and the result. `lightning_modules/train.py` (the program) puts them together:
build -> fit -> report."""
