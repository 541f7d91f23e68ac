"""Stage ``sda``: learn to restyle labelled source images as the target (train), then restyle them (translate).

``reidflow sda train``: inputs ``source`` (labelled shards, one or more), ``target`` (unlabelled
target shards: its train split is the style to learn), and with ``loss.relation_weight > 0`` the
frozen encoders ``source_model`` (a ``pretrain`` model on the raw sources) and ``target_model`` (a
``pretrain`` model with BN adapted to the target). Output: a generator artifact (both generators
and discriminators as safetensors, ``generator.json`` to rebuild them, the training curve and
``samples.png``: source | translated | the target image of the nearest colour statistics).

``reidflow sda translate``: inputs ``generator`` and ``source``. Output: shards of the translated
images with the source's keys, identities, cameras and splits, their index and dataset card rebuilt
by the shard writer; lineage names both the generator and the source shards.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from reidflow.config import StrictModel, params_digest
from reidflow.data.index import ShardIndex
from reidflow.data.loader import IndexedImageDataset
from reidflow.data.opener import LocalOpener
from reidflow.data.sample import Sample
from reidflow.data.sampling import IdentityBatchSampler
from reidflow.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, build_train_transform
from reidflow.errors import ArtifactError, ConfigError, DataError
from reidflow.models.sda import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    check_generator_size,
    check_patch_size,
)
from reidflow.stages.evaluate import dataset_dirs
from reidflow.stages.trained_model import final_losses, save_training_curve
from reidflow.stages.training import (
    Fitted,
    TrainingStageConfig,
    distributed_run,
    epoch_length,
    fit,
    open_sources,
    training_rows,
)
from reidflow.store.artifacts import InputArtifact, open_input, write_artifact
from reidflow.store.lineage import RunContext, now_iso
from reidflow.train import distributed as ddp
from reidflow.train.engine import EngineConfig, seed_everything
from reidflow.train.optim import OptimizerConfig, build_optimizer
from reidflow.train.pretrain import TargetBatches
from reidflow.train.sda import (
    LOSS_KEYS,
    EncoderInput,
    GanScheduleConfig,
    RelationConfig,
    SDALossConfig,
    SDAMethod,
    build_gan_scheduler,
)

log = logging.getLogger(__name__)

GENERATOR_META = "generator.json"
GENERATOR_SCHEMA = "reidflow.sda_generator/1"
NETWORKS = ("g_st", "g_ts", "d_s", "d_t")
SAMPLES_FILE = "samples.png"


def _sda_transforms() -> dict[str, Any]:
    """docs/methods/sda.md: 384x128 images with flip, pad 10 + random crop."""
    return {"height": 384, "width": 128, "flip_p": 0.5, "pad": 10, "erasing_p": 0.0, "jitter_p": 0.0}


class SourceBatchConfig(StrictModel):
    P: int = Field(8, ge=2, description="source identities per batch (the relation loss needs negatives)")
    K: int = Field(4, ge=1, description="images per identity")


class TranslateConfig(StrictModel):
    batch_size: int = Field(64, ge=1)
    jpeg_quality: int = Field(95, ge=1, le=100)


class SDAConfig(TrainingStageConfig):
    """The shared training fields plus the GAN recipe (docs/methods/sda.md defaults)."""

    section: ClassVar[str] = "sda"

    transforms: dict[str, Any] = Field(default_factory=_sda_transforms)
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(epochs=100, iters_per_epoch=200))
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    sampler: SourceBatchConfig = Field(default_factory=SourceBatchConfig)
    target_batch_size: int = Field(32, ge=1, description="random target images per iteration")
    identity_warmup_iters: int = Field(
        0,
        ge=0,
        description="ours, 0 = the reference: the first N iterations of the budget train only the "
        "generators, towards the identity (docs/methods/sda.md)",
    )
    loss: SDALossConfig = Field(default_factory=SDALossConfig)
    relation: RelationConfig = Field(default_factory=RelationConfig)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0)
    )
    schedule: GanScheduleConfig = Field(default_factory=GanScheduleConfig)
    samples: int = Field(8, ge=1, description="rows of the sample grid")
    translate: TranslateConfig = Field(default_factory=TranslateConfig)

    @model_validator(mode="after")
    def _sizes_fit(self) -> SDAConfig:
        t = self.transform_config()
        check_generator_size(self.generator.n_down, t.height, t.width, "sda.generator.n_down")
        check_patch_size(self.discriminator.n_layers, t.height, t.width, "sda.discriminator.n_layers")
        if self.relation.online and self.loss.relation_weight == 0:
            raise ValueError(
                "relation.online trains the target encoder by the relation loss; set loss.relation_weight > 0"
            )
        return self


# ------------------------------------------------------------------------------------------- train


def train(
    cfg: SDAConfig,
    sources: list[str],
    target: str | None,
    output: str | Path,
    source_model: str | None = None,
    target_model: str | None = None,
    ctx: RunContext | None = None,
    resume: bool = False,
    hooks: tuple[Any, ...] = (),
) -> Path:
    """Train the translation and write the generator artifact (rank 0 under torchrun)."""
    return distributed_run(
        lambda started: _train(
            cfg, sources, target, output, source_model, target_model, ctx, resume, hooks, started
        )
    )


def _train(
    cfg: SDAConfig,
    sources: list[str],
    target: str | None,
    output: str | Path,
    source_model: str | None,
    target_model: str | None,
    ctx: RunContext | None,
    resume: bool,
    hooks: tuple[Any, ...],
    started: str,
) -> Path:
    source_inputs, source_dirs = open_sources("sda train", sources)
    if not target:
        raise ConfigError("sda train: expected --input target=URI (target shards whose style is learnt)")
    target_input = open_input("target", target)
    target_rows = _target_rows(target_input)
    train_rows = training_rows(source_dirs, cfg.combine_all)
    labels, label_map = train_rows.global_pids()
    if len(label_map) < 2:
        raise DataError(
            f"sda train: the source training split has {len(label_map)} identities; need at least 2"
        )
    tcfg = cfg.transform_config()
    encoders, encoder_inputs = _encoders(cfg, source_model, target_model, tcfg, len(label_map))
    seed_everything(cfg.seed)  # the random initialization is part of the run
    generators = {name: build_generator(cfg.generator, tcfg.mean, tcfg.std) for name in ("g_st", "g_ts")}
    discriminators = {name: build_discriminator(cfg.discriminator) for name in ("d_s", "d_t")}
    dataset = IndexedImageDataset(
        train_rows, LocalOpener(train_rows.root), tcfg.height, tcfg.width, labels=labels
    )
    dist = ddp.current()
    sampler = IdentityBatchSampler(
        labels, cfg.sampler.P, cfg.sampler.K, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size
    )
    iters_per_epoch = epoch_length(cfg, sampler)
    g_opt = build_optimizer(_named(generators), cfg.optimizer)
    d_opt = build_optimizer(_named(discriminators), cfg.optimizer)
    target_images = IndexedImageDataset(
        target_rows, LocalOpener(target_rows.root), tcfg.height, tcfg.width, labels=np.zeros(len(target_rows))
    )
    target_seed = cfg.seed + 7919 * dist.rank  # every process draws its own target images
    target_batches = TargetBatches(
        target_images.__getitem__, len(target_images), cfg.target_batch_size, target_seed
    )
    online = cfg.relation.online and cfg.loss.relation_weight > 0
    e_opt = (
        build_optimizer(encoders["target_encoder"], OptimizerConfig(name="adam", lr=cfg.relation.encoder_lr))
        if online
        else None
    )
    method = SDAMethod(
        generators,
        discriminators,
        g_opt,
        d_opt,
        build_gan_scheduler(g_opt, cfg.schedule, iters_per_epoch),
        build_gan_scheduler(d_opt, cfg.schedule, iters_per_epoch),
        cfg.loss,
        build_train_transform(tcfg),
        target_batches.batch,
        source_encoder=encoders.get("source_encoder"),
        target_encoder=encoders.get("target_encoder"),
        relation=cfg.relation,
        encoder_optimizer=e_opt,
        encoder_scheduler=build_gan_scheduler(e_opt, cfg.schedule, iters_per_epoch) if e_opt else None,
        num_classes=len(label_map),
        seed=cfg.seed,
        identity_warmup_iters=cfg.identity_warmup_iters,
    )
    log.info(
        "sda: %d source images (%d identities), %d target images, relation weight %g (%s)",
        len(train_rows),
        len(label_map),
        len(target_rows),
        cfg.loss.relation_weight,
        "online" if online else "offline",
    )

    def write(fitted: Fitted) -> None:
        inputs = [*source_inputs, target_input, *encoder_inputs]
        nets = {**generators, **discriminators}
        _write_generator(cfg, nets, fitted, output, inputs, ctx, started, dataset, target_images, train_rows)

    return fit("sda", cfg, method, dataset, sampler, output, write=write, resume=resume, hooks=hooks)


def _named(modules: dict[str, nn.Module]) -> list[tuple[str, nn.Parameter]]:
    return [
        (f"{name}.{pname}", p) for name, module in modules.items() for pname, p in module.named_parameters()
    ]


def _target_rows(target: InputArtifact) -> ShardIndex:
    index = ShardIndex.load(dataset_dirs(target))
    rows = np.flatnonzero(index.splits == "train")
    if len(rows) == 0:
        raise DataError(
            f"input 'target': {target.uri} holds no train-split images to learn the target style from"
        )
    return index.take(rows)


def load_encoder(name: str, uri: str) -> tuple[InputArtifact, nn.Module, dict[str, Any]]:
    """A re-ID model artifact as a frozen encoder; anything else is a one-line error naming the input."""
    from reidflow.models.artifact import load_model_artifact

    art = open_input(name, uri)
    try:
        model, meta = load_model_artifact(art.path)
    except ArtifactError as exc:
        raise ArtifactError(f"input {name!r}: {uri} is not a re-ID model artifact ({exc})") from None
    if meta.get("labels", "identity") != "identity":
        raise ArtifactError(
            f"input {name!r}: {uri} is a {meta.get('labels')} model; expected a re-ID (identity) model"
        )
    return art, model, meta


def _encoders(
    cfg: SDAConfig,
    source_model: str | None,
    target_model: str | None,
    tcfg: TransformConfig,
    num_identities: int,
) -> tuple[dict[str, nn.Module], list[InputArtifact]]:
    if cfg.loss.relation_weight == 0:
        return {}, []  # plain CycleGAN: no encoders
    missing = [n for n, uri in (("source_model", source_model), ("target_model", target_model)) if not uri]
    if missing:
        raise ConfigError(
            f"sda train: loss.relation_weight={cfg.loss.relation_weight} needs --input {missing[0]}=URI "
            "(a re-ID model artifact); set sda.loss.relation_weight=0 for plain CycleGAN"
        )
    encoders: dict[str, nn.Module] = {}
    inputs = []
    for key, name, uri in (
        ("source_encoder", "source_model", source_model),
        ("target_encoder", "target_model", target_model),
    ):
        assert uri is not None
        art, model, meta = load_encoder(name, uri)
        if key == "target_encoder" and cfg.relation.online:
            classes = int(meta["model"].get("num_classes", 0))
            if classes != num_identities:
                raise ConfigError(
                    f"sda.relation.online: input {name!r} ({uri}) classifies {classes} identities but the sources "
                    f"have {num_identities}; train it on the same sources"
                )
        norm = meta.get("normalize", {})
        size = (int(meta["input"]["height"]), int(meta["input"]["width"]))
        mean = tuple(norm.get("mean", IMAGENET_MEAN))
        std = tuple(norm.get("std", IMAGENET_STD))
        encoders[key] = EncoderInput(model, tcfg.mean, tcfg.std, mean, std, size)
        inputs.append(art)
    return encoders, inputs


def _write_generator(
    cfg: SDAConfig,
    nets: dict[str, nn.Module],
    fitted: Fitted,
    output: str | Path,
    inputs: list[InputArtifact],
    ctx: RunContext | None,
    started: str,
    source_images: IndexedImageDataset,
    target_images: IndexedImageDataset,
    source_rows: ShardIndex,
) -> None:
    tcfg = cfg.transform_config()
    resolved = {"mode": "train", **cfg.model_dump(mode="json")}
    with write_artifact(
        output,
        kind="generator",
        stage="sda",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=cfg.seed,
        inputs=inputs,
        ctx=ctx,
        started=started,
    ) as art:
        art.device = fitted.device
        for name, module in nets.items():
            state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
            save_file(state, str(art.path / f"{name}.safetensors"))
        meta = {
            "schema": GENERATOR_SCHEMA,
            "generator": cfg.generator.model_dump(mode="json"),
            "discriminator": cfg.discriminator.model_dump(mode="json"),
            "input": {"height": tcfg.height, "width": tcfg.width},
            "normalize": {"mean": list(tcfg.mean), "std": list(tcfg.std)},
            "direction": {"g_st": "source -> target", "g_ts": "target -> source"},
            "source_domains": sorted(set(source_rows.domains.tolist())),
            "target_domains": sorted(set(target_images.index.domains.tolist())),
            "relation_weight": cfg.loss.relation_weight,
            "online": cfg.relation.online,
        }
        (art.path / GENERATOR_META).write_text(json.dumps(meta, indent=2) + "\n")
        history = fitted.result.history
        save_training_curve(art.path, history, LOSS_KEYS, "lr/generators")
        save_sample_grid(
            art.path / SAMPLES_FILE, nets["g_st"], source_images, target_images, tcfg, cfg.samples, cfg.seed
        )
        result = fitted.result
        art.timing = {
            "images_per_s": round(result.samples_per_s, 2),
            "wall_time_s": round(result.wall_time_s, 1),
        }
        art.metrics = {
            "train": {"iterations": result.final_iteration, "final": final_losses(history, LOSS_KEYS)}
        }


def _to_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Normalized N×3×H×W -> N×H×W×3 uint8."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    pixels = ((x.float() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _normalize(images: torch.Tensor, tcfg: TransformConfig) -> torch.Tensor:
    from reidflow.data.transforms import Normalize, to_float_batch

    return Normalize(tcfg.mean, tcfg.std).to(images.device)(to_float_batch(images, tcfg.height, tcfg.width))


def _colour_stats(pixels: np.ndarray) -> np.ndarray:
    """Per image: mean and std of R, G, B in [0, 1] (what the dataset card compares)."""
    x = pixels.reshape(len(pixels), -1, 3).astype(np.float64) / 255.0
    return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1)


@torch.no_grad()
def save_sample_grid(
    path: Path,
    generator: nn.Module,
    source_images: IndexedImageDataset,
    target_images: IndexedImageDataset,
    tcfg: TransformConfig,
    rows: int,
    seed: int,
    candidates: int = 256,
) -> None:
    """PNG grid, one row per source image: source | translated | the target image whose colour
    statistics are nearest to the translation's (out of up to ``candidates`` target images)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(source_images), min(rows, len(source_images)), replace=False)
    device = next(generator.parameters()).device
    source = torch.stack([source_images[int(i)]["image"] for i in picks]).to(device)
    translated = _to_uint8(generator(_normalize(source, tcfg)), tcfg.mean, tcfg.std)
    pool_rows = rng.choice(len(target_images), min(candidates, len(target_images)), replace=False)
    pool = np.stack([target_images[int(i)]["image"].permute(1, 2, 0).numpy() for i in pool_rows])
    distance = np.linalg.norm(_colour_stats(translated)[:, None] - _colour_stats(pool)[None], axis=2)
    nearest = pool[distance.argmin(axis=1)]
    raw = source.permute(0, 2, 3, 1).cpu().numpy()
    gap = np.full((raw.shape[1], 4, 3), 255, dtype=np.uint8)
    lines = [np.concatenate([raw[i], gap, translated[i], gap, nearest[i]], axis=1) for i in range(len(picks))]
    Image.fromarray(np.concatenate(lines, axis=0)).save(path, format="PNG")


# --------------------------------------------------------------------------------------- translate


def load_generator(
    name: str, uri: str, device: str | torch.device = "cpu"
) -> tuple[InputArtifact, nn.Module, dict[str, Any]]:
    """The source -> target generator of an ``sda train`` artifact (safetensors + generator.json)."""
    art = open_input(name, uri)
    meta_path = art.path / GENERATOR_META
    weights = art.path / "g_st.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise ArtifactError(
            f"input {name!r}: {uri} is not an SDA generator artifact (expected {GENERATOR_META} and g_st.safetensors)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("schema") != GENERATOR_SCHEMA:
        raise ArtifactError(
            f"input {name!r}: {meta_path} has schema {meta.get('schema')!r}, expected {GENERATOR_SCHEMA}"
        )
    cfg = GeneratorConfig.model_validate(meta["generator"])
    generator = build_generator(cfg, tuple(meta["normalize"]["mean"]), tuple(meta["normalize"]["std"]))
    try:
        generator.load_state_dict(load_file(str(weights), device="cpu"))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"input {name!r}: {weights} does not fit {GENERATOR_META}: {detail}") from None
    return art, generator.to(device).eval(), meta


def translate(
    cfg: SDAConfig,
    generator: str | None,
    sources: list[str],
    output: str | Path,
    ctx: RunContext | None = None,
) -> Path:
    """Translate every image of the source shards with the generator; write shards with the same keys."""
    from reidflow.train.runtime import resolve_device

    started = now_iso()
    if not generator:
        raise ConfigError("sda translate: expected --input generator=URI (an `sda train` artifact)")
    device = resolve_device(cfg.engine.device)
    gen_input, g_st, meta = load_generator("generator", generator, device)
    tcfg = cfg.transform_config()
    size = (int(meta["input"]["height"]), int(meta["input"]["width"]))
    if (
        size != (tcfg.height, tcfg.width)
        or tuple(meta["normalize"]["mean"]) != tuple(tcfg.mean)
        or tuple(meta["normalize"]["std"]) != tuple(tcfg.std)
    ):
        raise ConfigError(
            f"input 'generator': {generator} was trained on {size[0]}x{size[1]} images normalized with "
            f"{meta['normalize']}; sda.transforms asks for {tcfg.height}x{tcfg.width} with mean {list(tcfg.mean)}, "
            f"std {list(tcfg.std)}"
        )
    source_inputs, source_dirs = open_sources("sda translate", sources)
    resolved = {"mode": "translate", **cfg.model_dump(mode="json")}
    with write_artifact(
        output,
        kind="shards",
        stage="sda",
        params=resolved,
        params_digest=params_digest(resolved),
        seed=cfg.seed,
        inputs=[gen_input, *source_inputs],
        ctx=ctx,
        started=started,
    ) as art:
        art.device = device.type
        per_dataset = {}
        generator_s, total_s, images = 0.0, 0.0, 0
        for ddir in source_dirs:
            tic = time.perf_counter()
            stats = translate_dataset(ddir, art.path, g_st, tcfg, cfg.translate)
            total_s += time.perf_counter() - tic
            generator_s += stats.pop("generator_s")
            images += stats["images"]
            per_dataset[ddir.name] = stats
        art.timing = {
            "images_per_s": round(images / max(total_s, 1e-9), 2),
            "generator_images_per_s": round(images / max(generator_s, 1e-9), 2),
        }
        art.metrics = {"images": images, "datasets": per_dataset}
    return Path(str(output))


def translate_dataset(
    ddir: Path, out_dir: Path, generator: nn.Module, tcfg: TransformConfig, cfg: TranslateConfig
) -> dict[str, Any]:
    """Translate one dataset directory into ``out_dir/<dataset>`` through the shard writer."""
    from reidflow.data.shards import write_shards

    index = ShardIndex.load(ddir)
    images = IndexedImageDataset(index, LocalOpener(index.root), tcfg.height, tcfg.width, labels=index.pids)
    sources = index.table.column("source").to_pylist()
    device = next(generator.parameters()).device
    generator_s = 0.0
    with tempfile.TemporaryDirectory(prefix=f"reidflow-sda-{ddir.name}-") as tmp:
        root = Path(tmp)
        samples = []
        for start in range(0, len(index), cfg.batch_size):
            rows = range(start, min(start + cfg.batch_size, len(index)))
            batch = torch.stack([images[i]["image"] for i in rows]).to(device)
            tic = time.perf_counter()
            with torch.no_grad():
                out = generator(_normalize(batch, tcfg))
            generator_s += time.perf_counter() - tic
            for i, pixels in zip(rows, _to_uint8(out, tcfg.mean, tcfg.std), strict=True):
                file = root / sources[i]  # the original relative path: the shard writer derives the same key
                file.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=cfg.jpeg_quality)
                file.write_bytes(buffer.getvalue())
                samples.append(
                    Sample(
                        path=sources[i],
                        pid=int(index.pids[i]),
                        camid=int(index.camids[i]),
                        domain=str(index.domains[i]),
                        split=str(index.splits[i]),
                    )
                )
        result = write_shards(samples, out_dir, dataset=ddir.name, root=root)
    written = ShardIndex.load(result.dataset_dir)
    if sorted(written.keys) != sorted(index.keys):
        missing = sorted(set(index.keys) - set(written.keys))[:3]
        raise DataError(
            f"sda translate: {ddir.name}: translated keys differ from the source keys (e.g. {missing})"
        )
    return {"images": len(index), "shards": len(result.shards), "generator_s": generator_s}
