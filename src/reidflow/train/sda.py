"""SDA translation training (Ge et al. 2020; docs/methods/sda.md): CycleGAN plus relation consistency.

Per iteration, on a P×K batch of labelled source images ``x_s`` and a random batch of target
images ``x_t`` (both augmented here, with torch's RNG, and normalized):

1. **Generators** (one Adam over ``G_st`` and ``G_ts``): LSGAN against both discriminators, cycle L1
   both ways (``cycle_weight``), identity L1 (``identity_weight``), and the relation-consistency
   loss between ``E_t(G_st(x_s))`` and ``E_s(x_s)`` hard-mined with the source labels
   (``relation_weight``; 0 gives plain CycleGAN). The discriminators only pass gradients through.
2. **Discriminators** (one Adam over ``D_s`` and ``D_t``): ``0.5 · (real + fake)`` LSGAN, the fakes
   drawn through two image pools.

Optional (ours, off by default): ``identity_warmup_iters`` first iterations of the budget train only
the generators, towards the identity on both domains (L1), so adversarial training starts from a
mapping that keeps the people's content instead of from noise. docs/methods/sda.md says why.

Encoders are frozen re-ID models (eval mode: the target encoder keeps its target-adapted BN
statistics). With ``relation.online`` the target encoder is trained jointly on its own optimizer:
by the relation loss and by CE + triplet on the translated images with their source labels.

Everything random is either torch's global RNG (augmentation; the engine checkpoints it), a pure
function of ``(seed, iteration)`` (the target batch) or the pools' own generators (checkpointed in
:meth:`SDAMethod.extra_state`), so a resumed run is exact on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from reidflow.config import StrictModel
from reidflow.errors import ConfigError
from reidflow.losses import (
    ImagePool,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan_loss,
    relation_consistency_loss,
)
from reidflow.train.engine import StepContext
from reidflow.train.pretrain import LossConfig, SupervisedLoss, loss_dtype

LOSS_KEYS = ("g_gan", "cycle", "identity", "relation", "d_s", "d_t", "encoder_ce", "encoder_triplet")


class SDALossConfig(StrictModel):
    """Weights of the generator objective (docs/methods/sda.md defaults) and the image pool size."""

    gan_weight: float = Field(1.0, ge=0)
    cycle_weight: float = Field(10.0, ge=0, description="cycle L1, both directions")
    identity_weight: float = Field(5.0, ge=0, description="identity L1 (0.5 x the cycle weight)")
    relation_weight: float = Field(1.0, ge=0, description="relation consistency; 0 = plain CycleGAN")
    pool_size: int = Field(50, ge=0, description="past fakes shown to the discriminators (0 = none)")


class RelationConfig(StrictModel):
    online: bool = Field(False, description="train the target encoder jointly (paper's online variant)")
    encoder_lr: float = Field(3.5e-5, gt=0, description="Adam lr of the target encoder when online")
    supervised: LossConfig = Field(
        default_factory=LossConfig, description="online: CE + triplet on translated images (source labels)"
    )


class GanScheduleConfig(StrictModel):
    """Constant learning rate, then linear decay to 0 (docs/methods/sda.md: 50 + 50 epochs)."""

    constant_epochs: float = Field(50, ge=0)
    decay_epochs: float = Field(50, ge=0)


class ConstantThenLinearLR(LRScheduler):
    """lr(t) = base × min(1, max(0, 1 - (t - constant_iters) / decay_iters)); t counts iterations."""

    def __init__(self, optimizer: Optimizer, constant_iters: int, decay_iters: int) -> None:
        self.constant_iters = int(constant_iters)
        self.decay_iters = int(decay_iters)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        if t < self.constant_iters:
            return 1.0
        if self.decay_iters <= 0:
            return 0.0
        return max(0.0, 1.0 - (t - self.constant_iters) / self.decay_iters)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [float(base) * f for base in self.base_lrs]


def build_gan_scheduler(optimizer: Optimizer, cfg: GanScheduleConfig, iters_per_epoch: int) -> LRScheduler:
    return ConstantThenLinearLR(
        optimizer, round(cfg.constant_epochs * iters_per_epoch), round(cfg.decay_epochs * iters_per_epoch)
    )


class EncoderInput(nn.Module):
    """A re-ID model fed SDA's images: converts from SDA's normalization and size to the model's.

    ``forward`` returns the un-normalized BN-neck features (eval mode) or the model's training dict.
    """

    def __init__(
        self,
        model: nn.Module,
        mean_in: tuple[float, ...],
        std_in: tuple[float, ...],
        mean_model: tuple[float, ...],
        std_model: tuple[float, ...],
        size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.model = model
        self.size = size
        mean_in_t, std_in_t = torch.tensor(mean_in), torch.tensor(std_in)
        mean_m, std_m = torch.tensor(mean_model), torch.tensor(std_model)
        # x_model = (x * std_in + mean_in - mean_m) / std_m = x * scale + shift
        self.register_buffer("scale", (std_in_t / std_m).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in_t - mean_m) / std_m).view(1, 3, 1, 1), persistent=False)
        self.identity = bool(torch.equal(mean_in_t, mean_m) and torch.equal(std_in_t, std_m))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Any:
        if not self.identity:
            x = x * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(x, labels) if self.model.training else self.model(x)


def set_requires_grad(module: nn.Module, flag: bool) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(flag)
    return module


class SDAMethod:
    """State: two generators, two discriminators, their optimizers and schedules, two image pools and
    (with a relation weight) the source and target encoders. See the module docstring."""

    def __init__(
        self,
        generators: dict[str, nn.Module],
        discriminators: dict[str, nn.Module],
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        g_scheduler: LRScheduler,
        d_scheduler: LRScheduler,
        loss: SDALossConfig,
        transform: nn.Module,
        target_batch: Callable[[int, torch.device], Tensor],
        *,
        source_encoder: nn.Module | None = None,
        target_encoder: nn.Module | None = None,
        relation: RelationConfig | None = None,
        encoder_optimizer: Optimizer | None = None,
        encoder_scheduler: LRScheduler | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        identity_warmup_iters: int = 0,
    ) -> None:
        if set(generators) != {"g_st", "g_ts"} or set(discriminators) != {"d_s", "d_t"}:
            raise ConfigError("SDAMethod: expects generators g_st, g_ts and discriminators d_s, d_t")
        self.relation = relation or RelationConfig()
        if loss.relation_weight > 0 and (source_encoder is None or target_encoder is None):
            raise ConfigError("SDAMethod: relation_weight > 0 needs a source and a target encoder")
        if self.relation.online and (
            encoder_optimizer is None or encoder_scheduler is None or not num_classes
        ):
            raise ConfigError(
                "SDAMethod: relation.online needs the encoder optimizer, scheduler and num_classes"
            )
        self.generators = generators
        self.discriminators = discriminators
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.g_scheduler, self.d_scheduler = g_scheduler, d_scheduler
        self.loss = loss
        self.transform = transform
        self.target_batch = target_batch
        self.encoders: dict[str, nn.Module] = {}
        if loss.relation_weight > 0:
            assert source_encoder is not None and target_encoder is not None
            self.encoders = {"source_encoder": source_encoder, "target_encoder": target_encoder}
            set_requires_grad(source_encoder, False).eval()
            set_requires_grad(target_encoder, self.relation.online).train(self.relation.online)
        self.encoder_optimizer = encoder_optimizer if self.relation.online else None
        self.encoder_scheduler = encoder_scheduler if self.relation.online else None
        self.supervised = (
            SupervisedLoss(self.relation.supervised, num_classes)
            if self.relation.online and num_classes
            else None
        )
        self.identity_warmup_iters = int(identity_warmup_iters)
        self.pools = {
            "fake_t": ImagePool(loss.pool_size, seed=seed * 2 + 1),
            "fake_s": ImagePool(loss.pool_size, seed=seed * 2 + 2),
        }

    def modules(self) -> dict[str, nn.Module]:
        return {**self.generators, **self.discriminators, **self.encoders}

    def optimizers(self) -> dict[str, Optimizer]:
        extra = {"target_encoder": self.encoder_optimizer} if self.encoder_optimizer is not None else {}
        return {"generators": self.g_optimizer, "discriminators": self.d_optimizer, **extra}

    def schedulers(self) -> dict[str, LRScheduler]:
        extra = {"target_encoder": self.encoder_scheduler} if self.encoder_scheduler is not None else {}
        return {"generators": self.g_scheduler, "discriminators": self.d_scheduler, **extra}

    def extra_state(self) -> dict[str, Any]:
        return {"pools": {name: pool.state_dict() for name, pool in self.pools.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name])

    def step(self, batch: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        self.transform.to(ctx.device)
        real_s = self.transform(batch["image"])
        real_t = self.transform(self.target_batch(ctx.iteration, ctx.device))
        labels = batch["pid"]
        if ctx.iteration < self.identity_warmup_iters:
            return self._identity_warmup_step(real_s, real_t, ctx)
        metrics, fakes = self._generator_step(real_s, real_t, labels, ctx)
        metrics.update(self._discriminator_step(real_s, real_t, fakes, ctx))
        return metrics

    def _identity_warmup_step(
        self, real_s: Tensor, real_t: Tensor, ctx: StepContext
    ) -> dict[str, Tensor | float]:
        """Both generators towards the identity on source and target images; the discriminators and
        encoders rest. The objective's terms are reported as 0 (not trained yet), the warm-up L1 apart."""
        both = torch.cat([real_s, real_t])
        with ctx.autocast():
            warm = identity_loss(loss_dtype(ctx.module("g_st")(both)), both) + identity_loss(
                loss_dtype(ctx.module("g_ts")(both)), both
            )
        params = [p for name in ("g_st", "g_ts") for p in ctx.unwrap(name).parameters()]
        ctx.backward_and_step({"warmup_identity": warm}, "generators", params=params)
        terms = ("g_gan", "cycle", "identity", "d_s", "d_t") + (("relation",) if self.encoders else ())
        if self.supervised is not None:
            terms += ("encoder_ce", "encoder_triplet")
        return {"warmup_identity": warm.detach(), **{k: 0.0 for k in terms}}

    def _generator_step(
        self, real_s: Tensor, real_t: Tensor, labels: Tensor, ctx: StepContext
    ) -> tuple[dict[str, Tensor | float], tuple[Tensor, Tensor]]:
        g_st, g_ts = ctx.module("g_st"), ctx.module("g_ts")
        d_s, d_t = ctx.unwrap("d_s"), ctx.unwrap("d_t")  # pass gradients through, never updated here
        cfg = self.loss
        terms: dict[str, Tensor] = {}
        with ctx.autocast():
            fake_t, fake_s = g_st(real_s), g_ts(real_t)
            rec_s, rec_t = g_ts(fake_t), g_st(fake_s)
            gan = lsgan_loss(loss_dtype(d_t(fake_t)), True) + lsgan_loss(loss_dtype(d_s(fake_s)), True)
            terms["g_gan"] = cfg.gan_weight * gan
            cycle = cycle_loss(loss_dtype(rec_s), real_s) + cycle_loss(loss_dtype(rec_t), real_t)
            terms["cycle"] = cfg.cycle_weight * cycle
            if cfg.identity_weight > 0:
                same = identity_loss(loss_dtype(g_st(real_t)), real_t) + identity_loss(
                    loss_dtype(g_ts(real_s)), real_s
                )
                terms["identity"] = cfg.identity_weight * same
        if cfg.relation_weight > 0:
            terms.update(self._relation_terms(fake_t, real_s, labels, ctx))
        names = ("generators", "target_encoder") if self.encoder_optimizer is not None else "generators"
        params = [p for name in ("g_st", "g_ts") for p in ctx.unwrap(name).parameters()]
        if self.encoder_optimizer is not None:
            params += list(ctx.unwrap("target_encoder").parameters())
        ctx.backward_and_step(terms, names, params=params)
        return {k: v.detach() for k, v in terms.items()}, (fake_t.detach(), fake_s.detach())

    def _relation_terms(
        self, fake_t: Tensor, real_s: Tensor, labels: Tensor, ctx: StepContext
    ) -> dict[str, Tensor]:
        """Encoder forwards under autocast; the distances and losses in float32 outside it."""
        encoder = ctx.module("target_encoder") if self.relation.online else ctx.unwrap("target_encoder")
        with ctx.autocast():
            with torch.no_grad():
                e2 = ctx.unwrap("source_encoder")(real_s)
            out = encoder(fake_t, labels) if self.relation.online else encoder(fake_t)
            # the encoder also learns the source identities on the translated images (not through G)
            supervised_out = encoder(fake_t.detach(), labels) if self.supervised is not None else None
        e1 = out["bn_features"] if isinstance(out, dict) else out
        relation = relation_consistency_loss(loss_dtype(e1), loss_dtype(e2), labels)
        terms = {"relation": self.loss.relation_weight * relation}
        if self.supervised is not None:
            sup, _ = self.supervised(supervised_out, labels)
            terms.update({f"encoder_{k}": v for k, v in sup.items()})
        return terms

    def _discriminator_step(
        self, real_s: Tensor, real_t: Tensor, fakes: tuple[Tensor, Tensor], ctx: StepContext
    ) -> dict[str, Tensor]:
        fake_t = self.pools["fake_t"].query(fakes[0])
        fake_s = self.pools["fake_s"].query(fakes[1])
        d_s, d_t = ctx.module("d_s"), ctx.module("d_t")
        with ctx.autocast():
            terms = {
                "d_t": discriminator_loss(loss_dtype(d_t(real_t)), loss_dtype(d_t(fake_t))),
                "d_s": discriminator_loss(loss_dtype(d_s(real_s)), loss_dtype(d_s(fake_s))),
            }
        ctx.backward_and_step(terms, "discriminators")
        return {k: v.detach() for k, v in terms.items()}
