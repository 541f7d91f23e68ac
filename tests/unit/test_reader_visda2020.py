"""The VisDA-2020 reader on a tiny fake release: every split, strict errors, skips, and `reidflow shard`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from reidflow.data.index import ShardIndex
from reidflow.data.readers import read_dataset, read_dataset_report
from reidflow.data.readers.visda2020 import UNLABELLED_PID
from reidflow.errors import DatasetLayoutError
from reidflow.stages import shard as shard_stage
from tests.fixtures.layouts import VISDA_CAMID, make_visda2020, visda_list_line, write_image
from tests.helpers import reidflow


def labels(samples):
    return {s.path: (s.pid, s.camid, s.split) for s in samples}


def counts(samples):
    result: dict[str, int] = {}
    for s in samples:
        result[s.split] = result.get(s.split, 0) + 1
    return result


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


# --- every split ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lists_in", ["root", "validation"])
def test_target_part_unlabelled_train_and_labelled_validation(tmp_path, lists_in):
    layout = make_visda2020(tmp_path / "visda", lists_in=lists_in)
    report = read_dataset_report("visda2020", layout.root)
    samples = report.samples

    assert counts(samples) == {"train": 5, "query": 2, "gallery": 4} == layout.counts()
    assert labels(samples) == layout.label_of()
    train = [s for s in samples if s.split == "train"]
    assert {s.pid for s in train} == {UNLABELLED_PID} and all(s.extra == {"unlabelled": True} for s in train)
    assert sorted(s.camid for s in train) == [0, 1, 2, 3, 4]  # cameras 1, 2, 4, 5, 6
    assert {s.pid for s in samples if s.split == "query"} == {1, 77}
    assert {s.pid for s in samples if s.split == "gallery"} == {0, 1, 77}
    by_name = {Path(s.path).name: s for s in samples}
    assert by_name["0077_c5s1_003471_01.jpg"].extra == {"seq": 1, "frame": 3471, "bbox": 1, "index": 0}
    assert by_name["0000_c5s4_000469_01.jpg"].extra["distractor"] is True
    assert {s.domain for s in samples} == {"visda2020"}
    assert not any("target_test" in s.path or "personX" in s.path for s in samples)
    assert (report.skipped, report.excluded) == ([], 0)


def test_source_part_reads_personx_image_train(tmp_path):
    layout = make_visda2020(tmp_path / "visda", part="source")
    samples = read_dataset("visda2020", layout.published, part="source", domain="personx")
    assert labels(samples) == layout.label_of()
    assert counts(samples) == {"train": 4}
    assert {Path(s.path).name: s.camid for s in samples if s.pid == 2} == {
        "0002_c4s1_310.jpg": 1,
        "0002_c12s1_7.jpg": 5,
    }
    assert {s.domain for s in samples} == {"personx"}


def test_source_folder_option_reads_a_translated_copy(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    (layout.published / "personX").rename(layout.published / "personX_spgan")
    with pytest.raises(DatasetLayoutError, match=r"personX: expected a folder 'personX'.*personX_spgan"):
        read_dataset("visda2020", layout.root, part="source")
    samples = read_dataset("visda2020", layout.root, part="source", source_folder="personX_spgan")
    assert len(samples) == 4 and all("/personX_spgan/image_train/" in s.path for s in samples)


def test_labels_from_names_matches_the_lists(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    for name in ("index_validation_query.txt", "index_validation_gallery.txt"):
        (layout.published / name).unlink()
    with pytest.raises(DatasetLayoutError, match=r"index_validation_query\.txt.*labels_from='names'"):
        read_dataset("visda2020", layout.root)
    samples = read_dataset("visda2020", layout.root, labels_from="names")
    assert labels(samples) == layout.label_of()


def test_list_options_take_other_names_and_absolute_paths(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    elsewhere = tmp_path / "devkit" / "submit_val"
    elsewhere.mkdir(parents=True)
    (layout.published / "index_validation_query.txt").rename(elsewhere / "index_validation_query.txt")
    (layout.published / "index_validation_gallery.txt").rename(layout.published / "gallery.txt")
    (layout.published / "target_training" / "label_target_training.txt").rename(
        layout.published / "target_training" / "cams.txt"
    )
    samples = read_dataset(
        "visda2020",
        layout.root,
        query_list=str(elsewhere / "index_validation_query.txt"),
        gallery_list="gallery.txt",
        train_list="cams.txt",
    )
    assert labels(samples) == layout.label_of()


def test_train_list_with_a_third_column_and_crlf(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    train_list = layout.published / "target_training" / "label_target_training.txt"
    train_list.write_bytes(b"".join(f"{line} 0\r\n".encode() for line in train_list.read_text().splitlines()))
    assert labels(read_dataset("visda2020", layout.root)) == layout.label_of()


def test_junk_in_the_gallery_list_is_excluded(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    write_image(layout.published / "target_validation" / "image_gallery" / "-1_c1s1_000001_01.jpg")
    append(layout.published / "index_validation_gallery.txt", "-1_c1s1_000001_01.jpg 1 -1 0004")
    report = read_dataset_report("visda2020", layout.root)
    assert report.excluded == 1 and labels(report.samples) == layout.label_of()


# --- strict errors name the file, the line and what was expected ---------------------------------


@pytest.mark.parametrize(
    ("list_file", "line", "expected"),
    [
        ("train", "00001.jpg one", r"a line '<image> <camera>' like '00001\.jpg 1'.*found '00001\.jpg one'"),
        ("train", "00001.jpg 3", r"a camera number among 1, 2, 4, 5, 6; found 3 for '00001\.jpg'"),
        ("train", "../00001.jpg 1", r"an image file name inside image_train/"),
        ("train", "00001.jpg 1", r"each image listed once; found '00001\.jpg' already on line 1"),
        ("query", "0077_c5s1_003471_01.jpg 5", r"'<image> <camera> <person> <index>'"),
        ("query", "0001_c4s1_000918_03.jpg 5 001 0002", r"camera 4 and person 1 as in the image name"),
        ("query", "IMG_2041.jpg 1 001 0002", r"an image name like '0077_c5s1_003471_01\.jpg'"),
        ("query", "0001_c3s1_000918_03.jpg 3 001 0002", r"among c1, c2, c4, c5, c6; found c3"),
        ("query", "0000_c5s4_000469_01.jpg 5 000 0002", r"distractor id 0000 only in the gallery list"),
    ],
)
def test_bad_list_line_names_file_and_line(tmp_path, list_file, line, expected):
    layout = make_visda2020(tmp_path / "visda")
    path = {
        "train": layout.published / "target_training" / "label_target_training.txt",
        "query": layout.published / "index_validation_query.txt",
    }[list_file]
    line_no = len(path.read_text().splitlines()) + 1
    append(path, line)
    with pytest.raises(DatasetLayoutError, match=expected) as err:
        read_dataset("visda2020", layout.root)
    assert err.value.path == f"{path}:{line_no}"


def test_listed_image_missing_names_the_image_and_the_line(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    missing = layout.published / "target_validation" / "image_gallery" / "0001_c2s1_001166_01.jpg"
    missing.unlink()
    with pytest.raises(
        DatasetLayoutError, match=r"index_validation_gallery\.txt:3; found no such file"
    ) as err:
        read_dataset("visda2020", layout.root)
    assert err.value.path == str(missing)


def test_missing_folders_and_train_list(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    (layout.published / "target_training" / "label_target_training.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"label_target_training\.txt: expected a file") as err:
        read_dataset("visda2020", layout.root)
    assert "lines like '00001.jpg 1'" in str(err.value)
    empty = tmp_path / "empty"
    (empty / "somewhere").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"'challenge_datasets'.*'target_training'.*somewhere"):
        read_dataset("visda2020", empty)


# --- non-strict: skip and report ------------------------------------------------------------------


def test_non_strict_skips_bad_lines_and_reports_them(tmp_path, caplog):
    layout = make_visda2020(tmp_path / "visda")
    train_list = layout.published / "target_training" / "label_target_training.txt"
    query_list = layout.published / "index_validation_query.txt"
    append(train_list, "00099.jpg 3")
    write_image(layout.published / "target_validation" / "image_query" / "0002_c4s1_000918_04.jpg")
    append(query_list, visda_list_line("0002_c4s1_000918_04.jpg", 2).replace(" 4 ", " 5 "))
    with caplog.at_level(logging.WARNING, logger="reidflow.data.readers"):
        report = read_dataset_report("visda2020", layout.root, strict=False)
    assert [s.path for s in report.skipped] == [f"{train_list}:6", f"{query_list}:3"]
    assert "camera number among" in report.skipped[0].reason
    assert labels(report.samples) == layout.label_of()
    assert "skipped 2 file(s)" in caplog.text


def test_a_list_with_no_usable_line_is_an_error_even_when_not_strict(tmp_path):
    layout = make_visda2020(tmp_path / "visda")
    (layout.published / "index_validation_query.txt").write_text("garbage\n")
    with pytest.raises(DatasetLayoutError, match=r"index_validation_query\.txt: expected lines like"):
        read_dataset("visda2020", layout.root, strict=False)


# --- `reidflow shard` end to end ------------------------------------------------------------------


def test_reidflow_shard_of_the_release_gives_target_and_eval_shards(tmp_path):
    layout = make_visda2020(tmp_path / "raw")
    datasets = {
        "visda_target": {"reader": "visda2020", "root": str(layout.root), "role": "target"},
        "visda_personx": {
            "reader": "visda2020",
            "root": str(layout.root),
            "role": "source",
            "options": {"part": "source"},
        },
    }
    params = {"datasets": datasets, "shard": {}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "REIDFLOW_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    reidflow("shard", "-d", "visda_target", "--output", "shards/visda_target", cwd=tmp_path, env=env)

    index = ShardIndex.load(tmp_path / "shards" / "visda_target" / "visda_target")
    assert set(index.domains.tolist()) == {"visda_target"}
    train = index.filter(split="train")  # what `mmt` and `pretrain --section camera` read as the target
    assert len(train) == 5 and set(train.pids.tolist()) == {UNLABELLED_PID}
    assert train.camera_groups()[1] == [f"visda_target/c{c}" for c in sorted(VISDA_CAMID.values())]
    query, gallery = index.filter(split="query"), index.filter(split="gallery")  # the `evaluate` input
    assert sorted(query.pids.tolist()) == [1, 77] and sorted(gallery.pids.tolist()) == [0, 1, 1, 77]
    assert np.all(query.camids >= 0) and np.all(gallery.camids >= 0)
    card = json.loads((tmp_path / "shards/visda_target/visda_target/dataset_card.json").read_text())
    assert {s: card["splits"][s]["images"] for s in card["splits"]} == {"train": 5, "query": 2, "gallery": 4}

    # the source entry goes through the same stage; in-process to keep the test fast
    src = shard_stage.dataset_source(params, "visda_personx")
    shard_stage.run(shard_stage.ShardConfig(), "visda_personx", src, tmp_path / "shards" / "visda_personx")
    source = ShardIndex.load(tmp_path / "shards" / "visda_personx" / "visda_personx")
    assert set(source.splits.tolist()) == {"train"} and sorted(set(source.pids.tolist())) == [1, 2]
