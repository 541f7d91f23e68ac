"""Writing generated domains to disk in the Market-1501 layout, atomically and reproducibly.

Work is split by identity: every identity's looks and crops come from its own random streams, so
the bytes on disk are the same whether one process or several render them, and in whatever order
chunks finish.
"""

from __future__ import annotations

import functools
import multiprocessing
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml

from reidflow.data.synth.identity import sample_identity
from reidflow.data.synth.plan import DISTRACTOR_PID, SPLIT_FOLDERS, IdentityPlan, plan_domain, split_counts
from reidflow.data.synth.scene import Camera, build_cameras, render_jpeg
from reidflow.data.synth.seeds import Stream, stream
from reidflow.data.synth.spec import SYNTH_CARD_FORMAT, DomainSpec, revalidate, spec_to_yaml_data
from reidflow.errors import ArtifactError, ConfigError

GENERATOR_VERSION = 1
"""Bump when a change to the drawing code changes the pixels a (spec, seed) pair produces."""
CARD_NAME = "synth_spec.yaml"
CHUNKS_PER_WORKER = 8

Progress = Callable[[int, int], None]


@functools.lru_cache(maxsize=8)
def _cameras(spec_json: str, seed: int) -> list[Camera]:
    return build_cameras(DomainSpec.model_validate_json(spec_json), seed)


def _render_plans(spec_json: str, seed: int, plans: Sequence[IdentityPlan], root: str) -> int:
    """Render and write every crop of ``plans`` under ``root``; returns the number of files written."""
    spec = DomainSpec.model_validate_json(spec_json)
    cameras = _cameras(spec_json, seed)
    written = 0
    for plan in plans:
        distractor = plan.pid == DISTRACTOR_PID
        looks = stream(
            seed, spec.name, Stream.DISTRACTOR_IDENTITY if distractor else Stream.IDENTITY, plan.index
        )
        render_rng = stream(
            seed, spec.name, Stream.DISTRACTOR_RENDER if distractor else Stream.RENDER, plan.index
        )
        person = sample_identity(looks)
        for shot in plan.shots:
            data = render_jpeg(person, cameras[shot.camera], spec, render_rng)
            Path(root, shot.relpath).write_bytes(data)
            written += 1
    return written


def _check_run_arguments(seed: int, workers: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synth seed: expected an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"synth workers: expected an integer >= 1, got {workers!r}")


def _card(spec: DomainSpec, seed: int, plans: list[IdentityPlan]) -> str:
    card = {
        "format": SYNTH_CARD_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "layout": "market1501",
        "counts": split_counts(plans),
        "spec": spec_to_yaml_data(spec),
    }
    return yaml.safe_dump(card, sort_keys=False, default_flow_style=None, width=110)


@dataclass(frozen=True)
class _Job:
    """One domain being generated: its spec, its plan and the temporary folder it renders into."""

    spec: DomainSpec
    plans: list[IdentityPlan]
    tmp: Path
    final: Path

    def chunks(self, workers: int) -> list[tuple[str, list[IdentityPlan], str]]:
        spec_json = self.spec.model_dump_json()
        size = max(1, len(self.plans) // (workers * CHUNKS_PER_WORKER))
        return [(spec_json, self.plans[i : i + size], str(self.tmp)) for i in range(0, len(self.plans), size)]


def _render_jobs(jobs: list[_Job], seed: int, workers: int, progress: Callable[[int], None]) -> None:
    tasks = [task for job in jobs for task in job.chunks(workers)]
    if workers == 1:
        for spec_json, plans, root in tasks:
            progress(_render_plans(spec_json, seed, plans, root))
        return
    # spawn, not fork: the caller may hold threads (a progress bar, torch) that fork would copy mid-lock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(_render_plans, spec_json, seed, plans, root) for spec_json, plans, root in tasks
        ]
        for future in as_completed(futures):
            progress(future.result())


def _existing_domain_error(final: Path) -> ArtifactError:
    return ArtifactError(f"{final}: synthetic domain already exists; remove it or pass overwrite=True")


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    if not final.exists():
        tmp.rename(final)
        return
    if not overwrite:
        raise _existing_domain_error(final)
    trash = Path(tempfile.mkdtemp(prefix=f"{final.name}.old-", dir=final.parent))
    final.rename(trash / final.name)
    tmp.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def _prepare_output(out_root: Path, specs: list[DomainSpec], overwrite: bool) -> None:
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ArtifactError(
            f"{out_root}: cannot create the output folder ({error.strerror or error})"
        ) from None
    for spec in specs:
        if (out_root / spec.name).exists() and not overwrite:
            raise _existing_domain_error(out_root / spec.name)


def generate_domain(
    spec: DomainSpec,
    out_root: str | Path,
    seed: int,
    workers: int = 1,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``<out_root>/<spec.name>/`` in the Market-1501 layout and return that path.

    ``progress(n_done, n_total)`` is called as crops are written. The same (spec, seed) gives the
    same bytes for any ``workers``.
    """
    return generate([spec], out_root, seed, workers, progress, overwrite=overwrite)[0]


def generate(
    specs: Sequence[DomainSpec],
    out_root: str | Path,
    seed: int,
    workers: int = 1,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Generate several domains (names must differ) with one seed and one pool of workers.

    Each domain is rendered into ``<out_root>/<name>.tmp-*`` and renamed to ``<name>`` once all
    domains are rendered; on any error no new domain folder appears. ``progress`` counts crops
    over all domains.
    """
    _check_run_arguments(seed, workers)
    checked = [revalidate(spec, source=f"synth spec {getattr(spec, 'name', '?')}") for spec in specs]
    names = [spec.name for spec in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"synth domains: names must be unique, repeated: {duplicates}")
    root = Path(out_root)
    _prepare_output(root, checked, overwrite)
    plans = [plan_domain(spec, seed) for spec in checked]
    total = sum(len(plan.shots) for domain_plans in plans for plan in domain_plans)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    jobs: list[_Job] = []
    try:
        for spec, domain_plans in zip(checked, plans, strict=True):
            tmp = Path(tempfile.mkdtemp(prefix=f"{spec.name}.tmp-", dir=root))
            jobs.append(_Job(spec, domain_plans, tmp, root / spec.name))
            for folder in SPLIT_FOLDERS.values():
                (tmp / folder).mkdir()
        _render_jobs(jobs, seed, workers, advance)
        for job in jobs:
            # the card is written last: a folder with a card holds every image
            (job.tmp / CARD_NAME).write_text(_card(job.spec, seed, job.plans), encoding="utf-8")
            _publish(job.tmp, job.final, overwrite)
    except BaseException:
        for job in jobs:
            shutil.rmtree(job.tmp, ignore_errors=True)
        raise
    return [job.final for job in jobs]
