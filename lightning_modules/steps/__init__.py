"""Compute steps other than training, as programs the launcher runs where the compute is.

    python -m lightning_modules.steps NAME SPEC.json

Each step reads a typed spec (steps/specs.py), does its work (evaluation, registration and promotion,
the transfer report) and reports like the training job: through Dagster Pipes when launched by Dagster
(VISIONFLOW_REPORTER=pipes: one materialization with its metadata, plus the asset checks), and into
OUT/step_result.json always. So on a cluster deployment these steps run in the training image, next to
the GPUs and the data, and the Dagster run worker only orchestrates.
"""
