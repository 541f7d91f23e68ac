"""Training: the one engine, its checkpoints, DDP helpers, optimizers/schedules and hooks.

Methods (pretrain, metabin, sda, mmt, camera) live in sibling modules and implement
:class:`reidflow.train.engine.Method`.
"""

from reidflow.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from reidflow.train.distributed import DistInfo, distributed_session, init_distributed, shutdown_distributed
from reidflow.train.engine import (
    Engine,
    EngineConfig,
    Method,
    StepContext,
    TrainingDiverged,
    TrainResult,
    seed_everything,
)
from reidflow.train.hooks import (
    Hook,
    LoggingHook,
    MetricsHistoryHook,
    PeriodicEvalHook,
    ProgressHook,
    RunInfo,
    StepInfo,
)
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler

__all__ = [
    "DistInfo",
    "Engine",
    "EngineConfig",
    "Hook",
    "LoggingHook",
    "Method",
    "MetricsHistoryHook",
    "OptimizerConfig",
    "PeriodicEvalHook",
    "ProgressHook",
    "RunInfo",
    "SchedulerConfig",
    "StepContext",
    "StepInfo",
    "TrainResult",
    "TrainingDiverged",
    "build_optimizer",
    "build_scheduler",
    "distributed_session",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "shutdown_distributed",
]
