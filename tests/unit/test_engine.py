"""The training engine on a tiny CNN and random tensors: exact resume, guards, AMP, hooks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reidflow.errors import ConfigError, DataError
from reidflow.train import checkpoint as ckpt_io
from reidflow.train.engine import Engine, EngineConfig, StepContext, TrainingDiverged, seed_everything
from reidflow.train.hooks import Hook, MetricsHistoryHook, PeriodicEvalHook, RunInfo, StepInfo
from reidflow.train.optim import OptimizerConfig, SchedulerConfig, build_optimizer, build_scheduler

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# a tiny world: dataset, resumable batch sampler, a method


class TensorImages(Dataset):
    def __init__(self, n: int = 48, classes: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}


class TinyBatchSampler:
    """Permutation per epoch from (seed, epoch); ranks take disjoint slices of each global batch."""

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, short_by: int = 0
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self._skip = 0, 0
        self.short_by = short_by  # test hook: yield fewer batches than len() promises
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def skip(self, num_batches: int) -> None:
        self._skip = num_batches

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        start, self._skip = self._skip, 0
        per_rank = self.batch_size // self.world_size
        for b in range(start, len(self) - self.short_by):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Classifier:
    """A minimal method: CE with a random flip + noise augmentation drawn in step()."""

    def __init__(
        self, iters_per_epoch: int, nan_at: int | None = None, grad_nan_at: int | None = None
    ) -> None:
        self.model = TinyCNN()
        self.opt = build_optimizer(
            self.model, OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)
        )
        self.sched = build_scheduler(
            self.opt, SchedulerConfig(kind="multistep", warmup=1, milestones=[2]), iters_per_epoch
        )
        self.steps_done = 0
        self.epoch_starts: list[int] = []
        self.nan_at, self.grad_nan_at = nan_at, grad_nan_at
        self.seen_dtype: torch.dtype | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"main": self.sched}

    def extra_state(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_done = state["steps_done"]

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        self.epoch_starts.append(epoch)

    def step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        x, y = batch["image"], batch["label"]
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x) + 0.05 * torch.randn_like(x)
        with ctx.autocast():
            logits = ctx.module("model")(x)
        self.seen_dtype = logits.dtype
        ce = nn.functional.cross_entropy(logits.float(), y)
        terms = {"ce": ce}
        if self.nan_at == ctx.iteration:
            terms["bad"] = ce * float("nan")
        if self.grad_nan_at == ctx.iteration:
            terms["sqrt0"] = (ctx.unwrap("model").fc.weight.sum() * 0).sqrt()
        ctx.backward_and_step(terms, "main")
        self.steps_done += 1
        acc = (logits.argmax(1) == y).float().mean()
        return {"loss": ce, "acc": acc}


def make_loader(num_workers: int = 0, batch_size: int = 12, **sampler_kw: Any) -> DataLoader:
    data = TensorImages()
    sampler = TinyBatchSampler(len(data), batch_size, seed=3, **sampler_kw)
    return DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=num_workers,
        multiprocessing_context="fork" if num_workers else None,
    )


def new_method(loader: DataLoader, **kw: Any) -> Classifier:
    seed_everything(123)  # same initial weights for every run
    return Classifier(len(loader.batch_sampler), **kw)


def weights(method: Classifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.model.state_dict().items()}


def losses(history: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return [(r["iteration"], r["loss"], r["lr/main"]) for r in history]


def cfg(**kw: Any) -> EngineConfig:
    base = {"epochs": 3, "device": "cpu", "log_every": 100, "seed": 7}
    base.update(kw)
    return EngineConfig(**base)


# ------------------------------------------------------------------------------------------------
# exact resume


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_at", [6, 8])  # mid-epoch (6) and on an epoch boundary (8, 4 iters/epoch)
def test_interrupted_and_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, num_workers: int, stop_at: int
) -> None:
    loader = make_loader(num_workers)
    full = new_method(loader)
    full_result = Engine(full, loader, cfg(checkpoint_every=5), tmp_path / "a", default_hooks=False).fit()
    assert full_result.final_iteration == 12

    loader = make_loader(num_workers)
    first = new_method(loader)
    cut = Engine(
        first, loader, cfg(max_iters=stop_at, checkpoint_every=5), tmp_path / "b", default_hooks=False
    ).fit()
    assert cut.final_iteration == stop_at
    assert ckpt_io.latest_checkpoint(tmp_path / "b").name == ckpt_io.checkpoint_dir_name(stop_at)

    loader = make_loader(num_workers)
    resumed = new_method(loader)  # fresh process state: weights re-initialised, then overwritten
    torch.manual_seed(999)  # and a different global RNG state, which the checkpoint must replace
    rest = Engine(resumed, loader, cfg(checkpoint_every=5), tmp_path / "b", default_hooks=False).fit(
        resume=True
    )

    assert rest.start_iteration == stop_at and rest.final_iteration == 12
    # the history lives in the checkpoint: the resumed run's record is the whole run's
    assert losses(rest.history) == losses(full_result.history)
    assert losses(rest.history)[:stop_at] == losses(cut.history)
    for key, value in weights(full).items():
        assert torch.equal(value, weights(resumed)[key]), key
    assert resumed.steps_done == 12  # extra state restored, then advanced
    # on_epoch_start runs only for epochs that start fresh in this run
    assert resumed.epoch_starts == [e for e in range(3) if e * 4 >= stop_at]
    assert full.epoch_starts == [0, 1, 2]


def test_resume_without_checkpoint_starts_fresh_and_refuses_to_mix_runs(tmp_path: Path) -> None:
    loader = make_loader()
    result = Engine(new_method(loader), loader, cfg(max_iters=2), tmp_path, default_hooks=False).fit(
        resume=True
    )
    assert result.start_iteration == 0 and result.resumed_from is None
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Engine(new_method(loader), loader, cfg(max_iters=2), tmp_path, default_hooks=False).fit()
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        Engine(new_method(loader), loader, cfg(max_iters=2), None, default_hooks=False).fit(resume=True)


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    loader = make_loader()
    Engine(
        new_method(loader), loader, cfg(checkpoint_every=2, keep_last=2), tmp_path, default_hooks=False
    ).fit()
    names = [p.name for p in ckpt_io.list_checkpoints(tmp_path)]
    assert names == [ckpt_io.checkpoint_dir_name(10), ckpt_io.checkpoint_dir_name(12)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------
# NaN/Inf guard


def test_nan_loss_stops_with_named_term_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    loader = make_loader()
    method = new_method(loader, nan_at=5)
    engine = Engine(method, loader, cfg(checkpoint_every=5), tmp_path, default_hooks=False)
    with pytest.raises(TrainingDiverged, match=r"iteration 5: loss term 'bad'") as info:
        engine.fit()
    assert info.value.iteration == 5
    latest = ckpt_io.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == ckpt_io.checkpoint_dir_name(5)
    assert str(latest) in str(info.value)
    saved = ckpt_io.load_checkpoint(latest).module_states["model"]
    for key, value in method.model.named_parameters():  # the bad step updated no weight
        assert torch.equal(saved[key], value.detach()), key
    assert len(ckpt_io.list_checkpoints(tmp_path)) == 1


def test_nan_gradient_with_finite_loss_is_caught_before_the_update(tmp_path: Path) -> None:
    loader = make_loader()
    method = new_method(loader, grad_nan_at=2)
    engine = Engine(method, loader, cfg(checkpoint_every=2), tmp_path, default_hooks=False)
    with pytest.raises(TrainingDiverged, match="gradient norm of optimizer 'main'"):
        engine.fit()
    assert all(torch.isfinite(v).all() for v in weights(method).values() if v.is_floating_point())
    assert ckpt_io.latest_checkpoint(tmp_path).name == ckpt_io.checkpoint_dir_name(2)


# ------------------------------------------------------------------------------------------------
# gradient clipping, AMP, several optimizers


class OneLinear:
    """loss = sum(w * c): the gradient is exactly c, so clipping is easy to verify."""

    def __init__(self, c: torch.Tensor) -> None:
        self.lin = nn.Linear(c.numel(), 1, bias=False)
        self.c = c
        self.opt = torch.optim.SGD(self.lin.parameters(), lr=1.0)

    def modules(self) -> dict[str, nn.Module]:
        return {"lin": self.lin}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"sgd": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        loss = (ctx.module("lin").weight * self.c).sum()
        ctx.backward_and_step(loss, "sgd")
        return {"loss": loss}


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_gradient_clipping_by_norm_and_value(mode: str) -> None:
    c = torch.tensor([3.0, -4.0, 0.5, 0.0])
    method = OneLinear(c)
    before = method.lin.weight.detach().clone()
    loader = make_loader()
    result = Engine(
        method, loader, cfg(max_iters=1, grad_clip=0.1, grad_clip_mode=mode), None, default_hooks=False
    ).fit()
    delta = (before - method.lin.weight.detach()).flatten()  # lr 1: delta == clipped gradient
    if mode == "norm":
        torch.testing.assert_close(delta, c * (0.1 / c.norm()), rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(delta, c.clamp(-0.1, 0.1))
    assert result.history[0]["grad_norm/sgd"] == pytest.approx(float(c.norm()), rel=1e-5)


def test_bf16_autocast_on_cpu_and_fp16_refused() -> None:
    loader = make_loader()
    method = new_method(loader)
    result = Engine(method, loader, cfg(max_iters=3, amp="bf16"), None, default_hooks=False).fit()
    assert method.seen_dtype == torch.bfloat16
    assert all(np.isfinite(r["loss"]) for r in result.history)
    method = new_method(loader)
    Engine(method, loader, cfg(max_iters=1, amp="auto"), None, default_hooks=False).fit()
    assert method.seen_dtype == torch.float32  # auto is off on CPU
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        Engine(new_method(loader), loader, cfg(max_iters=1, amp="fp16"), None, default_hooks=False).fit()


class TwoPlayers:
    """GAN-shaped: one loss through both nets, each optimizer updates only its own net."""

    def __init__(self) -> None:
        self.gen, self.disc = nn.Linear(3, 3), nn.Linear(3, 1)
        self.opt_g = torch.optim.SGD(self.gen.parameters(), lr=0.1)
        self.opt_d = torch.optim.SGD(self.disc.parameters(), lr=0.1)

    def modules(self) -> dict[str, nn.Module]:
        return {"gen": self.gen, "disc": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        x = batch["image"].flatten(1)[:, :3]
        fake = ctx.module("gen")(x)
        loss_d = ctx.module("disc")(fake.detach()).mean()
        ctx.backward_and_step(loss_d, "d")
        loss_g = -ctx.module("disc")(fake).mean()
        ctx.backward_and_step(loss_g, "g", params=list(self.gen.parameters()))
        assert all(p.grad is None for p in self.disc.parameters())  # restricted backward
        return {"loss_d": loss_d, "loss_g": loss_g}


def test_two_optimizers_each_update_only_their_module() -> None:
    torch.manual_seed(0)
    method = TwoPlayers()
    loader = make_loader()
    gen0 = [p.detach().clone() for p in method.gen.parameters()]
    disc0 = [p.detach().clone() for p in method.disc.parameters()]
    result = Engine(method, loader, cfg(max_iters=2), None, default_hooks=False).fit()
    assert set(result.history[0]) >= {"loss_d", "loss_g", "grad_norm/d", "grad_norm/g", "lr/g", "lr/d"}
    assert all(not torch.equal(a, b) for a, b in zip(gen0, method.gen.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(disc0, method.disc.parameters()))


# ------------------------------------------------------------------------------------------------
# hooks and results


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps: list[StepInfo] = []
        self.run: RunInfo | None = None

    def before_train(self, run: RunInfo) -> None:
        self.events.append("before_train")
        self.run = run

    def after_step(self, step: StepInfo) -> None:
        self.events.append("step")
        self.steps.append(step)

    def after_epoch(self, epoch: int, step: StepInfo) -> None:
        self.events.append(f"epoch{epoch}")

    def after_train(self, result: Any) -> None:
        self.events.append("after_train")

    def on_error(self, error: BaseException) -> None:
        self.events.append("error")


def test_hooks_see_steps_lr_timing_samples_and_eval_runs_periodically(tmp_path: Path) -> None:
    loader = make_loader()
    method = new_method(loader)
    recorder = Recorder()
    eval_calls: list[tuple[int, bool]] = []

    def evaluate(iteration: int) -> dict[str, float]:
        method.model.eval()
        eval_calls.append((iteration, method.model.training))
        return {"map": iteration / 100}

    evaluator = PeriodicEvalHook(evaluate, every=5)
    result = Engine(method, loader, cfg(epochs=2), tmp_path, hooks=[recorder, evaluator]).fit()

    assert recorder.events == ["before_train"] + ["step"] * 4 + ["epoch0"] + ["step"] * 4 + [
        "epoch1",
        "after_train",
    ]
    assert recorder.run is not None and recorder.run.max_iters == 8 and recorder.run.iters_per_epoch == 4
    first = recorder.steps[0]
    assert first.iteration == 1 and first.batch_in_epoch == 0 and first.samples == 12
    assert first.lrs["main"] == pytest.approx(0.05 * 0.01)  # warm-up starts at 1% of the lr
    assert recorder.steps[-1].samples_total == 96 and recorder.steps[-1].is_last
    assert all(s.step_seconds > 0 for s in recorder.steps)
    assert [i for i, _ in eval_calls] == [5, 8]
    assert [r.metrics["map"] for r in evaluator.results] == [0.05, 0.08]
    assert method.model.training  # eval mode was undone
    assert result.samples == 96 and result.samples_per_s > 0 and result.wall_time_s > 0
    assert result.checkpoint == tmp_path / ckpt_io.checkpoint_dir_name(8)
    assert [r["iteration"] for r in result.history] == list(range(1, 9))
    history = MetricsHistoryHook()
    history.records = result.history
    saved = json.loads(history.save_json(tmp_path / "training_curve.json").read_text())
    assert saved["records"][0]["lr/main"] == pytest.approx(0.0005)


def test_on_error_hook_is_called() -> None:
    loader = make_loader()
    recorder = Recorder()
    with pytest.raises(TrainingDiverged):
        Engine(new_method(loader, nan_at=1), loader, cfg(), None, hooks=[recorder], default_hooks=False).fit()
    assert recorder.events == ["before_train", "step", "error"]


def test_iters_per_epoch_caps_the_epoch_and_max_iters_caps_the_run() -> None:
    loader = make_loader()
    result = Engine(
        new_method(loader), loader, cfg(epochs=3, iters_per_epoch=2), None, default_hooks=False
    ).fit()
    assert [(r["iteration"], r["epoch"]) for r in result.history] == [
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 1),
        (5, 2),
        (6, 2),
    ]
    assert loader.batch_sampler.epochs_seen == [0, 1, 2]
    result = Engine(new_method(loader), loader, cfg(epochs=3, max_iters=5), None, default_hooks=False).fit()
    assert result.final_iteration == 5
    assert cfg(epochs=3, iters_per_epoch=2).epoch_length(4) == 2 and cfg(epochs=3).total_iters(4) == 12
    assert cfg(epochs=None, max_iters=7).total_iters(4) == 7


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_configuration_and_inputs_give_clear_errors() -> None:
    with pytest.raises(ValidationError, match="epochs.*max_iters"):
        EngineConfig()
    with pytest.raises(ValidationError):
        EngineConfig(epochs=1, amp="fp8")
    with pytest.raises(ValidationError, match="extra"):
        EngineConfig(epochs=1, grad_clipp=1.0)
    with pytest.raises(DataError, match="yields 0 batches per epoch"):
        EngineConfig(epochs=1).epoch_length(0)
    data = TensorImages()
    plain = DataLoader(data, batch_size=4)
    with pytest.raises(ConfigError, match="batch_sampler.*set_epoch"):
        Engine(new_method(make_loader()), plain, cfg())
    with pytest.raises(ConfigError, match=r"lacks modules\(\), optimizers\(\), schedulers\(\), step\(\)"):
        Engine(object(), make_loader(), cfg())  # type: ignore[arg-type]
    short = make_loader(short_by=1)
    with pytest.raises(DataError, match="yielded 3 batches in epoch 0.*promised 4"):
        Engine(new_method(short), short, cfg(), None, default_hooks=False).fit()


def test_unknown_module_name_in_step_is_a_config_error() -> None:
    class Typo(Classifier):
        def step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
            ctx.module("modle")
            return {}

    loader = make_loader()
    seed_everything(0)
    with pytest.raises(ConfigError, match=r"no module named 'modle'.*\['model'\]"):
        Engine(Typo(4), loader, cfg(), None, default_hooks=False).fit()


# ------------------------------------------------------------------------------------------------
# progress helper (used by the ProgressHook and by other stages)


def test_progress_without_tty_logs_status_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reidflow.obs.progress import Progress, progress_enabled

    monkeypatch.setenv("CI", "true")
    assert progress_enabled() is False
    caplog.set_level("INFO", logger="reidflow.progress")
    with Progress(None, "shard demo", unit="img", log_every_s=0.0) as bar:
        report = bar.callback()
        report(3, 10)
        report(10, 10)
    assert bar.n == 10 and bar.total == 10 and bar.enabled is False
    lines = [r.getMessage() for r in caplog.records if r.name == "reidflow.progress"]
    assert lines[0].startswith("shard demo: 3/10 img (30.0%)")
    assert lines[-1].startswith("shard demo: 10/10 img (100.0%)")
    bar.update(0, loss=0.5)
    assert bar.status_line().endswith("loss=0.5")


def test_amp_off_written_unquoted_in_yaml_means_off():
    import yaml

    from reidflow.train.engine import EngineConfig

    cfg = EngineConfig.model_validate(yaml.safe_load("epochs: 1\namp: off\n"))
    assert cfg.amp == "off"
