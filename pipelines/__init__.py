"""visionflow orchestration: Dagster assets, resources, checks, jobs. Compute lives in `lightning_modules`."""
