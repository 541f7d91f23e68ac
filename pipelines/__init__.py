"""The reidflow Kubeflow pipeline: build it from params.yaml, compile it, run it locally or submit it."""

from pipelines.reid_pipeline import ALL_STAGES, PipelinePlan, build_pipeline, plan_pipeline
from pipelines.runner import Auth, LocalRun, compile_pipeline, run_local, submit

__all__ = [
    "ALL_STAGES",
    "Auth",
    "LocalRun",
    "PipelinePlan",
    "build_pipeline",
    "compile_pipeline",
    "plan_pipeline",
    "run_local",
    "submit",
]
