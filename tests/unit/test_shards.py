"""Shard writer, parquet index, dataset card and local opener on small real image folders."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from reidflow.data.index import ShardIndex, global_pids
from reidflow.data.opener import LocalOpener
from reidflow.data.sample import Sample
from reidflow.data.shards import sample_key, write_shards
from reidflow.errors import ArtifactError, DataError


def _smooth_image(rng: np.random.Generator, height: int = 48, width: int = 24) -> np.ndarray:
    """A smooth random colour image (compresses like a photo crop, not like noise)."""
    coarse = rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def make_raw(root: Path, count: int = 12, seed: int = 0, domain: str = "market1501") -> list[Sample]:
    """JPEGs in a Market-like layout, plus one PNG and one PNG misnamed ``.jpg``."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        split = "train" if i < count - 4 else ("query" if i < count - 2 else "gallery")
        folder = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}[split]
        pid, cam = i // 2 + 1, i % 3
        path = root / folder / f"{pid:04d}_c{cam + 1}s1_{i:06d}_01.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(_smooth_image(rng, 48 + 8 * (i % 2)))
        if i == 1:
            path = path.with_suffix(".png")
            image.save(path)
        elif i == 2:
            image.save(path, format="PNG")  # named .jpg, really a PNG
        else:
            image.save(path, format="JPEG", quality=90)
        samples.append(Sample(str(path.relative_to(root)), pid, cam, domain, split))
    return samples


@pytest.fixture()
def raw(tmp_path: Path) -> tuple[Path, list[Sample]]:
    root = tmp_path / "raw"
    return root, make_raw(root)


def _read_webdataset(dataset_dir: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in dataset_dir.glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}


def test_sample_key_replaces_separators_and_drops_extension() -> None:
    key = sample_key("market1501", "bounding_box_train/0002_c1s1_000451_03.jpg")
    assert key == "market1501_bounding_box_train_0002_c1s1_000451_03"
    assert sample_key("d", "a.b/c d+e.png") == "d_a_b_c_d_e"


def test_round_trip_through_webdataset_and_index(raw, tmp_path: Path) -> None:
    root, samples = raw
    result = write_shards(samples, tmp_path / "out", "market1501", root)
    streamed = _read_webdataset(result.dataset_dir)
    index = ShardIndex.load(result.dataset_dir)
    opener = LocalOpener(index.root)
    assert len(streamed) == len(index) == len(samples)
    by_key = {sample_key("market1501", s.path): s for s in samples}
    for i, key in enumerate(index.keys):
        sample = by_key[key]
        member = streamed[key]
        meta = json.loads(member["json"])
        assert (meta["pid"], meta["camid"], meta["domain"], meta["split"], meta["source"]) == (
            sample.pid,
            sample.camid,
            sample.domain,
            sample.split,
            sample.path,
        )
        stored = index.read_image_bytes(i, opener)
        assert stored == member["jpg"]
        assert hashlib.sha256(stored).hexdigest() == index.sha256[i]
        assert (index.pids[i], index.camids[i], index.splits[i]) == (sample.pid, sample.camid, sample.split)
        width, height = Image.open(io.BytesIO(stored)).size
        assert (index.widths[i], index.heights[i]) == (width, height) == (meta["width"], meta["height"])


def test_jpeg_bytes_untouched_and_png_converted_once(raw, tmp_path: Path) -> None:
    root, samples = raw
    result = write_shards(samples, tmp_path / "out", "market1501", root)
    index = ShardIndex.load(result.dataset_dir)
    opener = LocalOpener(index.root)
    rows = {r["source"]: r for r in index.table.to_pylist()}
    converted = sorted(s for s, r in rows.items() if r["converted_from"])
    assert converted == sorted([samples[1].path, samples[2].path])
    assert all(rows[s]["converted_from"] == "png" for s in converted)
    card = json.loads(result.card_json.read_text())
    assert sorted(c["source"] for c in card["converted"]) == converted
    for i, source in enumerate(index.table.column("source").to_pylist()):
        stored = index.read_image_bytes(i, opener)
        original = (root / source).read_bytes()
        if source in converted:
            assert stored[:2] == b"\xff\xd8" and stored != original
            decoded = np.asarray(Image.open(io.BytesIO(stored)), dtype=np.int16)
            expected = np.asarray(Image.open(root / source).convert("RGB"), dtype=np.int16)
            assert np.abs(decoded - expected).mean() < 3.0  # quality-95 JPEG of the same pixels
        else:
            assert stored == original


def test_duplicate_keys_rejected_naming_both_paths(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_raw(root, count=4)
    first = root / "a" / "b.jpg"
    second = root / "a_b.jpg"
    first.parent.mkdir(parents=True)
    for path in (first, second):
        Image.new("RGB", (8, 16)).save(path)
    samples = [Sample("a/b.jpg", 1, 0, "d", "train"), Sample("a_b.jpg", 2, 0, "d", "train")]
    with pytest.raises(DataError, match="duplicate sample key") as info:
        write_shards(samples, tmp_path / "out", "d", root)
    assert str(first) in str(info.value) and str(second) in str(info.value)


def test_corrupt_image_names_file_and_leaves_nothing(raw, tmp_path: Path) -> None:
    root, samples = raw
    bad = root / samples[5].path
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    out = tmp_path / "out"
    with pytest.raises(DataError, match=str(bad)):
        write_shards(samples, out, "market1501", root, shard_max_bytes=10_240)
    assert list(out.iterdir()) == []


def test_skip_bad_lists_file_in_card(raw, tmp_path: Path) -> None:
    root, samples = raw
    (root / samples[3].path).write_bytes(b"not an image at all")
    result = write_shards(samples, tmp_path / "out", "market1501", root, skip_bad=True)
    assert result.num_samples == len(samples) - 1
    card = json.loads(result.card_json.read_text())
    assert [s["source"] for s in card["skipped"]] == [samples[3].path]
    assert samples[3].path in result.card_md.read_text()
    assert len(ShardIndex.load(result.dataset_dir)) == len(samples) - 1


def test_same_samples_give_byte_identical_output(raw, tmp_path: Path) -> None:
    root, samples = raw
    first = write_shards(samples, tmp_path / "one", "market1501", root, shard_max_bytes=10_240)
    second = write_shards(
        list(reversed(samples)), tmp_path / "two", "market1501", root, shard_max_bytes=10_240
    )
    names = sorted(p.name for p in first.dataset_dir.iterdir())
    assert names == sorted(p.name for p in second.dataset_dir.iterdir())
    for name in names:
        assert (first.dataset_dir / name).read_bytes() == (second.dataset_dir / name).read_bytes(), name
    with tarfile.open(first.dataset_dir / "train-000000.tar") as tar:
        member = tar.getmembers()[0]
        assert (member.mtime, member.uid, member.gid, member.uname) == (0, 0, 0, "reidflow")


def test_shard_size_limit_splits_into_several_shards(raw, tmp_path: Path) -> None:
    root, samples = raw
    limit = 10_240
    result = write_shards(samples, tmp_path / "out", "market1501", root, shard_max_bytes=limit)
    train_shards = [s for s in result.shards if s["path"].startswith("train-")]
    assert len(train_shards) >= 3
    assert [s["path"] for s in train_shards] == [f"train-{i:06d}.tar" for i in range(len(train_shards))]
    for shard in result.shards:
        path = result.dataset_dir / shard["path"]
        assert path.stat().st_size == shard["bytes"] <= limit
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
    assert sum(s["samples"] for s in result.shards) == len(samples)
    assert len(_read_webdataset(result.dataset_dir)) == len(samples)


def test_exception_mid_write_leaves_no_dataset_dir(raw, tmp_path: Path) -> None:
    root, samples = raw
    out = tmp_path / "out"

    def fail_late(done: int, total: int) -> None:
        if done == total - 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_shards(samples, out, "market1501", root, shard_max_bytes=10_240, progress=fail_late)
    assert list(out.iterdir()) == []


def test_existing_dataset_dir_needs_overwrite(raw, tmp_path: Path) -> None:
    root, samples = raw
    write_shards(samples[:6], tmp_path / "out", "market1501", root)
    with pytest.raises(ArtifactError, match="already exists"):
        write_shards(samples, tmp_path / "out", "market1501", root)
    result = write_shards(samples, tmp_path / "out", "market1501", root, overwrite=True)
    assert len(ShardIndex.load(result.dataset_dir)) == len(samples)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["market1501"]


def test_card_counts_and_colour_statistics(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    colours = {0: (255, 0, 0), 1: (0, 0, 255)}
    samples = []
    for i in range(6):
        cam = i % 2
        Image.new("RGB", (10, 20), colours[cam]).save(root / f"{i}.png")
        samples.append(Sample(f"{i}.png", pid=i // 3, camid=cam, domain="toy", split="train"))
    result = write_shards(samples, tmp_path / "out", "toy", root)
    card = json.loads(result.card_json.read_text())
    train = card["splits"]["train"]
    assert (train["images"], train["identities"], train["cameras"]) == (6, 2, 2)
    assert train["images_per_identity"] == {"min": 3, "median": 3.0, "max": 3}
    assert train["images_per_camera"] == {"toy/c0": 3, "toy/c1": 3}
    assert card["image_size_histogram"] == {"10x20": 6}
    red = card["colour"]["by_camera"]["toy/c0"]
    assert red["r"]["mean"] == pytest.approx(1.0) and red["b"]["mean"] == pytest.approx(0.0)
    assert red["saturation"]["mean"] == pytest.approx(1.0) and red["r"]["std"] == pytest.approx(0.0)
    assert red["brightness"]["mean"] == pytest.approx(0.299, abs=1e-4)
    assert card["colour"]["by_domain"]["toy"]["r"]["mean"] == pytest.approx(0.5)
    assert [s["path"] for s in card["shards"]] == ["train-000000.tar"]


def test_index_missing_column_is_named(raw, tmp_path: Path) -> None:
    root, samples = raw
    result = write_shards(samples, tmp_path / "out", "market1501", root)
    table = pq.read_table(result.index_path).drop_columns(["sha256"])
    pq.write_table(table, result.index_path)
    with pytest.raises(DataError, match=r"index\.parquet.*sha256"):
        ShardIndex.load(result.dataset_dir)
    with pytest.raises(DataError, match="index.parquet"):
        ShardIndex.load(tmp_path / "nowhere")


def test_index_filter_and_combined_datasets(tmp_path: Path) -> None:
    first = write_shards(make_raw(tmp_path / "a", seed=1), tmp_path / "out", "market1501", tmp_path / "a")
    second = write_shards(
        make_raw(tmp_path / "b", seed=2, domain="duke"), tmp_path / "out", "duke", tmp_path / "b"
    )
    index = ShardIndex.load([first.dataset_dir, second.dataset_dir])
    assert index.root == (tmp_path / "out").resolve()
    assert len(index) == 24 and index.domain_names == ["duke", "market1501"]
    opener = LocalOpener(index.root)
    for i in (0, 23):
        assert hashlib.sha256(index.read_image_bytes(i, opener)).hexdigest() == index.sha256[i]
    train_duke = index.filter(split="train", domain="duke")
    assert (
        len(train_duke) == 8 and set(train_duke.domains) == {"duke"} and set(train_duke.splits) == {"train"}
    )
    assert index.filter(split=["query", "gallery"]).splits.tolist().count("query") == 4
    with pytest.raises(DataError, match="no rows with split validation"):
        index.filter(split="validation")
    labels, mapping = index.global_pids()
    assert len(mapping) == len(set(zip(index.domains.tolist(), index.pids.tolist())))
    same_pid = (
        (index.pids == 1) & (index.domains == "duke"),
        (index.pids == 1) & (index.domains == "market1501"),
    )
    assert set(labels[same_pid[0]]) == {mapping["duke_1"]} and set(labels[same_pid[1]]) == {
        mapping["market1501_1"]
    }
    assert mapping["duke_1"] != mapping["market1501_1"]
    assert sorted(mapping.values()) == list(range(len(mapping)))


def test_global_pids_rejects_mismatched_arrays() -> None:
    labels, mapping = global_pids(["a", "b", "a"], [7, 7, 3])
    assert labels.tolist() == [1, 2, 0] and mapping == {"a_3": 0, "a_7": 1, "b_7": 2}
    with pytest.raises(DataError, match="equal length"):
        global_pids(["a"], [1, 2])


def test_local_opener_errors_and_fork_safety(raw, tmp_path: Path) -> None:
    root, samples = raw
    result = write_shards(samples, tmp_path / "out", "market1501", root)
    opener = LocalOpener(result.dataset_dir)
    size = (result.dataset_dir / "train-000000.tar").stat().st_size
    with pytest.raises(DataError, match="expected 100 bytes"):
        opener.read_range("train-000000.tar", size - 10, 100)
    with pytest.raises(DataError, match="inside"):
        opener.read_range("../../etc/passwd", 0, 1)
    with pytest.raises(DataError, match="cannot open"):
        opener.read_range("missing.tar", 0, 1)
    head = opener.read_range("train-000000.tar", 0, 512)
    with opener.open("train-000000.tar") as stream:
        assert stream.read(512) == head
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's descriptor table entries
        ok = opener.read_range("train-000000.tar", 0, 512) == head and opener._pid == os.getpid()
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1"
    assert opener.read_range("train-000000.tar", 0, 512) == head
