"""Op jobs: versioning new data from the UI.

Drop new files into data/, run `version_data` (dvc add + push): data.dvc gets a new md5, and the
`new_data_version` sensor starts retraining. DVC writes run in the pool "dvc" (limit 1), so two
of them never overlap (the library's file lock serializes writers outside Dagster too).
"""

import dagster as dg

from pipelines.resources import DvcResource


@dg.op(pool="dvc", description="dvc add data/ and dvc push to the configured remote")
def dvc_add_and_push(context: dg.OpExecutionContext, dvc: DvcResource) -> str:
    before = dvc.data_version()
    version = dvc.add_and_push()
    context.log.info(f"data version {before} -> {version}" if before != version else f"data unchanged ({version})")
    context.add_output_metadata({"data_version": version, "changed": before != version})
    return version


@dg.job(description="Version the files now in data/ with DVC (add + push); a new md5 triggers retraining.")
def version_data():
    dvc_add_and_push()
