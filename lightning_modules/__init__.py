"""visionflow compute: data preparation, models, Lightning modules and jobs.

Nothing in this package imports Dagster: every job here runs on its own from the
command line (`visionflow ...` or `python -m lightning_modules.train`), and the
Dagster code in `pipelines/` only launches it.
"""
