"""The reidflow Kubeflow pipelines (the main one and the VisDA-2020 chain): build one from params.yaml,
compile it, run it locally or submit it."""

from pipelines.reid_pipeline import ALL_STAGES, PipelinePlan, build_pipeline, plan_pipeline
from pipelines.runner import Auth, LocalRun, compile_pipeline, run_local, submit
from pipelines.visda_pipeline import VisdaPlan, build_visda_pipeline, plan_visda_pipeline

__all__ = [
    "ALL_STAGES",
    "Auth",
    "LocalRun",
    "PipelinePlan",
    "VisdaPlan",
    "build_pipeline",
    "build_visda_pipeline",
    "compile_pipeline",
    "plan_pipeline",
    "plan_visda_pipeline",
    "run_local",
    "submit",
]
