"""Generated domains: Market-1501 layout, split bookkeeping, byte determinism, atomic publication."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from reidflow.data.synth import (
    CARD_NAME,
    MARKET_NAME,
    SPLIT_FOLDERS,
    generate,
    generate_domain,
    load_preset,
    load_spec,
)
from reidflow.data.synth.spec import DomainSpec
from reidflow.errors import ArtifactError, ConfigError


def tiny(preset: str = "target_city", **update) -> DomainSpec:
    fields = {
        "identities": 10,
        "cameras": 4,
        "cameras_per_identity": (2, 3),
        "images_per_identity_camera": (2, 4),
        "distractors": 5,
    }
    fields.update(update)
    return load_preset(preset).model_copy(update=fields)


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_domain(tiny(), tmp_path_factory.mktemp("gen"), seed=7)


def parsed(root: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        rows[split] = []
        for path in sorted((root / folder).iterdir()):
            match = MARKET_NAME.match(path.name)
            assert match, f"not a Market name: {path.name}"
            rows[split].append({key: int(value) for key, value in match.groupdict().items()})
    return rows


def test_layout_is_market1501_with_a_card(domain: Path) -> None:
    assert domain.name == "target_city"
    assert sorted(p.name for p in domain.iterdir()) == sorted([*SPLIT_FOLDERS.values(), CARD_NAME])
    names = [p.name for p in domain.rglob("*.jpg")]
    assert names and all(MARKET_NAME.match(name) for name in names)
    assert len(set(names)) == len(names)
    assert all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in list(domain.rglob("*.jpg"))[:20])
    assert not list(domain.parent.glob("*.tmp-*"))


def test_card_documents_spec_seed_and_counts(domain: Path) -> None:
    card = yaml.safe_load((domain / CARD_NAME).read_text())
    assert card["seed"] == 7
    assert load_spec(domain / CARD_NAME) == tiny()
    for folder in SPLIT_FOLDERS.values():
        assert card["counts"][folder]["images"] == len(list((domain / folder).glob("*.jpg")))


def test_splits_follow_the_spec(domain: Path) -> None:
    spec = tiny()
    rows = parsed(domain)
    train_ids = {r["pid"] for r in rows["train"]}
    query_ids = {r["pid"] for r in rows["query"]}
    gallery_ids = {r["pid"] for r in rows["gallery"]} - {0}
    assert len(train_ids) == round(spec.train_fraction * spec.identities)
    assert query_ids == gallery_ids
    assert not train_ids & query_ids
    assert train_ids | query_ids == set(range(1, spec.identities + 1))
    assert sum(r["pid"] == 0 for r in rows["gallery"]) == spec.distractors
    assert all(r["pid"] != 0 for r in rows["train"] + rows["query"])
    assert all(1 <= r["cam"] <= spec.cameras for split in rows.values() for r in split)

    queries_per_id_cam: dict[tuple[int, int], int] = defaultdict(int)
    for r in rows["query"]:
        queries_per_id_cam[(r["pid"], r["cam"])] += 1
    assert set(queries_per_id_cam.values()) == {spec.query_per_camera}

    images_per_id_cam: dict[tuple[int, int], int] = defaultdict(int)
    cams_per_id: dict[int, set[int]] = defaultdict(set)
    for r in rows["train"] + rows["query"] + [r for r in rows["gallery"] if r["pid"] != 0]:
        images_per_id_cam[(r["pid"], r["cam"])] += 1
        cams_per_id[r["pid"]].add(r["cam"])
    low, high = spec.images_per_identity_camera
    assert all(low <= n <= high for n in images_per_id_cam.values())
    assert all(
        spec.cameras_per_identity[0] <= len(c) <= spec.cameras_per_identity[1] for c in cams_per_id.values()
    )
    # every query has a gallery match in another camera
    for r in rows["query"]:
        assert any(g["pid"] == r["pid"] and g["cam"] != r["cam"] for g in rows["gallery"])


def test_same_seed_same_bytes_for_any_worker_count(domain: Path, tmp_path: Path) -> None:
    again = generate_domain(tiny(), tmp_path / "one", seed=7, workers=1)
    parallel = generate_domain(tiny(), tmp_path / "two", seed=7, workers=2)
    expected = digests(domain)
    assert digests(again) == expected
    assert digests(parallel) == expected


def test_different_seed_gives_different_images(domain: Path, tmp_path: Path) -> None:
    other = generate_domain(tiny(), tmp_path, seed=8)
    ours, theirs = digests(domain), digests(other)
    assert not set(ours.values()) & set(theirs.values())


def test_existing_domain_is_not_overwritten_unless_asked(domain: Path) -> None:
    before = digests(domain)
    with pytest.raises(ArtifactError, match="already exists"):
        generate_domain(tiny(), domain.parent, seed=99)
    assert digests(domain) == before


def test_overwrite_replaces_the_domain(tmp_path: Path) -> None:
    first = generate_domain(tiny(identities=4, distractors=0), tmp_path, seed=1)
    second = generate_domain(tiny(identities=6, distractors=0), tmp_path, seed=1, overwrite=True)
    assert first == second
    assert yaml.safe_load((second / CARD_NAME).read_text())["spec"]["identities"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target_city"]


def test_interrupted_run_leaves_no_complete_looking_domain(tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done > 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        generate_domain(tiny(), tmp_path, seed=3, progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_progress_reaches_the_total_over_several_domains(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    specs = [tiny(identities=4, distractors=2), tiny("personx_like", identities=5, distractors=0)]
    paths = generate(specs, tmp_path, seed=0, progress=lambda done, total: calls.append((done, total)))
    assert [p.name for p in paths] == ["target_city", "personx_like"]
    total = sum(len(list(p.rglob("*.jpg"))) for p in paths)
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_bad_run_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names must be unique"):
        generate([tiny(), tiny()], tmp_path, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        generate_domain(tiny(), tmp_path, seed=-1)
    with pytest.raises(ConfigError, match="workers"):
        generate_domain(tiny(), tmp_path, seed=0, workers=0)
    with pytest.raises(ConfigError, match="cameras_per_identity"):
        generate_domain(tiny(cameras=2), tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ArtifactError, match="file: cannot create the output folder"):
        generate_domain(tiny(), not_a_folder, seed=0)
