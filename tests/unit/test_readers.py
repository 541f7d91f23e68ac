"""Readers of the published layouts: labels from real trees, and precise errors for broken ones."""

from __future__ import annotations

import logging
import shutil

import pytest

from reidflow.data.readers import (
    READERS,
    ReaderOptionError,
    list_readers,
    read_dataset,
    read_dataset_report,
)
from reidflow.data.sample import SPLITS
from reidflow.errors import ConfigError, DatasetLayoutError
from tests.fixtures.layouts import (
    BUILDERS,
    CSV_HEADER,
    make_csv,
    make_cuhk02,
    make_cuhk03np,
    make_cuhksysu,
    make_dukemtmc,
    make_grid,
    make_ilids,
    make_market1501,
    make_msmt17,
    make_personx,
    make_prid2011,
    make_viper,
    write_image,
)


def by_split(samples, key):
    groups: dict[str, set] = {}
    for s in samples:
        groups.setdefault(s.split, set()).add(key(s))
    return groups


def counts(samples):
    result: dict[str, int] = {}
    for s in samples:
        result[s.split] = result.get(s.split, 0) + 1
    return result


# --- every reader on its own tree ---------------------------------------------------------------


def test_registry_lists_every_layout():
    assert list_readers() == sorted(BUILDERS)
    assert set(READERS) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("point_at", ["parent", "published"])
def test_reader_labels_match_the_layout(tmp_path, name, point_at):
    layout = BUILDERS[name](tmp_path / name)
    root = layout.root if point_at == "parent" else layout.published
    report = read_dataset_report(name, root, **layout.options)
    samples = report.samples

    assert counts(samples) == layout.counts()
    assert by_split(samples, lambda s: s.pid) == layout.pids()
    assert by_split(samples, lambda s: s.camid) == layout.camids()
    assert {s.path: (s.pid, s.camid, s.split) for s in samples} == layout.label_of()
    assert {s.domain for s in samples} == {name}
    assert report.skipped == []
    assert report.excluded == layout.excluded


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_output_is_sorted_and_deterministic(tmp_path, name):
    layout = BUILDERS[name](tmp_path / name)
    first = read_dataset(name, layout.root, **layout.options)
    second = read_dataset(name, layout.root, **layout.options)
    assert first == second
    assert [(SPLITS.index(s.split), s.path) for s in first] == sorted(
        (SPLITS.index(s.split), s.path) for s in first
    )


def test_domain_option_overrides_reader_name(tmp_path):
    layout = make_market1501(tmp_path / "synth")
    samples = read_dataset("market1501", layout.root, domain="synth_fog")
    assert {s.domain for s in samples} == {"synth_fog"}


def test_bad_domain_is_rejected(tmp_path):
    layout = make_market1501(tmp_path / "m")
    for bad in ("a.b", ""):
        with pytest.raises(ReaderOptionError, match=rf"option 'domain'.*found {bad!r}"):
            read_dataset("market1501", layout.root, domain=bad)


# --- Market family specifics --------------------------------------------------------------------


def test_market_junk_skipped_distractor_kept_with_raw_facts(tmp_path):
    layout = make_market1501(tmp_path / "m")
    report = read_dataset_report("market1501", layout.root)
    gallery = [s for s in report.samples if s.split == "gallery"]
    assert -1 not in {s.pid for s in report.samples}
    distractors = [s for s in gallery if s.pid == 0]
    assert len(distractors) == 1 and distractors[0].extra["distractor"] is True
    first_train = next(s for s in report.samples if s.path.endswith("0002_c1s1_000451_03.jpg"))
    assert first_train.extra == {"seq": 1, "frame": 451, "bbox": 3}
    assert report.excluded == 2


def test_market_distractor_outside_gallery_is_an_error(tmp_path):
    layout = make_market1501(tmp_path / "m")
    bad = layout.published / "bounding_box_train" / "0000_c1s1_000001_01.jpg"
    write_image(bad)
    with pytest.raises(DatasetLayoutError, match="distractor id 0000 only in the gallery") as err:
        read_dataset("market1501", layout.root)
    assert err.value.path == str(bad)


def test_duke_camera_out_of_range(tmp_path):
    layout = make_dukemtmc(tmp_path / "d")
    bad = layout.published / "query" / "0001_c9_f0057703.jpg"
    write_image(bad)
    with pytest.raises(DatasetLayoutError, match=r"camera number c1\.\.c8.*c9"):
        read_dataset("dukemtmc", layout.root)


def test_cuhk03np_variants_read_their_own_folders(tmp_path):
    layout = make_cuhk03np(tmp_path / "c")
    labeled = read_dataset("cuhk03np", layout.root, variant="labeled")
    detected = read_dataset("cuhk03np", layout.root, variant="detected")
    assert counts(labeled) == {"train": 1, "query": 1, "gallery": 1}
    assert len(detected) == 6
    assert all("/detected/" in s.path and s.extra["variant"] == "detected" for s in detected)


def test_cuhk03np_missing_variant_folder(tmp_path):
    layout = make_cuhk03np(tmp_path / "c")
    shutil.rmtree(layout.published / "labeled")
    with pytest.raises(DatasetLayoutError, match=r"a folder 'labeled'.*found folders: \['detected'\]"):
        read_dataset("cuhk03np", layout.root, variant="labeled")


# --- MSMT17 -------------------------------------------------------------------------------------


def test_msmt17_v2_and_raw_facts(tmp_path):
    layout = make_msmt17(tmp_path / "msmt", version="v2")
    samples = read_dataset("msmt17", layout.root)  # version detected from the folders
    assert counts(samples) == layout.counts()
    s = next(s for s in samples if s.path.endswith("0000_001_05_0303noon_0017_2.jpg"))
    assert (s.camid, s.extra) == (4, {"date": "0303", "daytime": "noon", "frame": 17})
    assert "mask_train_v2" in s.path


def test_msmt17_val_left_out_when_not_merged(tmp_path):
    layout = make_msmt17(tmp_path / "msmt")
    report = read_dataset_report("msmt17", layout.root, merge_val=False)
    assert counts(report.samples)["train"] == layout.counts()["train"] - 1
    assert report.excluded == 1
    assert 2 not in {s.pid for s in report.samples}


def test_msmt17_missing_list_file(tmp_path):
    layout = make_msmt17(tmp_path / "msmt")
    (layout.published / "list_gallery.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"list_gallery\.txt: expected a file 'list_gallery\.txt'"):
        read_dataset("msmt17", layout.root)


def test_msmt17_bad_line_names_file_and_line(tmp_path):
    layout = make_msmt17(tmp_path / "msmt")
    list_path = layout.published / "list_query.txt"
    list_path.write_text(list_path.read_text() + "0000/0000_000_02_0302noon_0311_0.jpg zero\n")
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset("msmt17", layout.root)
    assert err.value.path == f"{list_path}:2"
    assert "<relpath> <pid>" in str(err.value) and "zero" in str(err.value)


def test_msmt17_listed_image_missing(tmp_path):
    layout = make_msmt17(tmp_path / "msmt")
    missing = layout.published / "test" / "0000" / "0000_000_02_0302noon_0311_0.jpg"
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=r"list_query\.txt:1; found no such file") as err:
        read_dataset("msmt17", layout.root)
    assert err.value.path == str(missing)


def test_msmt17_two_versions_need_a_choice(tmp_path):
    make_msmt17(tmp_path / "msmt", version="v1")
    make_msmt17(tmp_path / "msmt", version="v2")
    with pytest.raises(DatasetLayoutError, match="version='v1' or 'v2'"):
        read_dataset("msmt17", tmp_path / "msmt")
    assert all("MSMT17_V2" in s.path for s in read_dataset("msmt17", tmp_path / "msmt", version="v2"))


# --- CUHK02 -------------------------------------------------------------------------------------


def test_cuhk02_ids_unique_across_psets_and_test_split(tmp_path):
    layout = make_cuhk02(tmp_path / "cuhk02")
    train = read_dataset("cuhk02", layout.root)
    assert len({s.pid for s in train}) == 10  # local ids 1 and 2 in each of five sets
    assert {s.camid for s in train} == set(range(10))
    assert {s.extra["pset"] for s in train if s.pid == 30002} == {"P3"}
    test = read_dataset("cuhk02", layout.root, split="test")
    assert {s.split for s in test if s.camid % 2 == 0} == {"query"}
    assert {s.split for s in test if s.camid % 2 == 1} == {"gallery"}


def test_cuhk02_missing_pset(tmp_path):
    layout = make_cuhk02(tmp_path / "cuhk02")
    shutil.rmtree(layout.published / "P5")
    with pytest.raises(
        DatasetLayoutError, match=r"Dataset/P5: expected a folder 'P5'.*found folders: \['P1'"
    ):
        read_dataset("cuhk02", layout.root)


# --- small DG test sets -------------------------------------------------------------------------


def test_viper_unpaired_identity_is_an_error(tmp_path):
    layout = make_viper(tmp_path / "viper")
    write_image(layout.published / "cam_a" / "007_0.bmp")
    with pytest.raises(DatasetLayoutError, match=r"both cam_a and cam_b; found ids only in cam_a: \[7\]"):
        read_dataset("viper", layout.root)


def test_prid_distractors_and_excluded_cam_a_persons(tmp_path):
    layout = make_prid2011(tmp_path / "prid")
    report = read_dataset_report("prid2011", layout.root)
    gallery = [s for s in report.samples if s.split == "gallery"]
    assert {s.pid for s in gallery if s.extra["distractor"]} == {201, 749}
    assert {s.pid for s in report.samples if s.split == "query"} == {1, 2, 200}
    assert report.excluded == 2


def test_grid_distractors_and_probe_zero_is_an_error(tmp_path):
    layout = make_grid(tmp_path / "grid")
    samples = read_dataset("grid", layout.root)
    assert sum(s.extra["distractor"] for s in samples) == 2
    assert samples[0].extra["name_fields"] == [25004, 107, 32, 106, 221]
    write_image(layout.published / "probe" / "0000_1_25000_1_1_1_1.jpeg")
    with pytest.raises(DatasetLayoutError, match="distractor id 0000 only in the gallery"):
        read_dataset("grid", layout.root)


def test_ilids_first_image_is_query_and_order_kept(tmp_path):
    layout = make_ilids(tmp_path / "ilids")
    samples = read_dataset("ilids", layout.root)
    person1 = sorted((s.extra["order"], s.extra["image"], s.split) for s in samples if s.pid == 1)
    assert person1 == [(0, 1, "query"), (1, 2, "gallery"), (2, 4, "gallery")]
    assert [s.split for s in samples if s.pid == 3] == ["gallery"]


# --- generic CSV --------------------------------------------------------------------------------


def test_csv_domain_column_overrides(tmp_path):
    rows = ["images/a/0001_x.jpg,1,0,train,lab_a", "images/b/0010_x.jpg,10,3,query,"]
    layout = make_csv(tmp_path / "t", rows=rows, header=CSV_HEADER + ",domain")
    samples = read_dataset("csv", layout.root, domain="mine")
    assert [(s.domain, s.camid, s.extra["line"]) for s in samples] == [("lab_a", 0, 2), ("mine", 3, 3)]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("images/a/0001_x.jpg,one,0,train", "pid an integer >= 0"),
        ("images/a/0001_x.jpg,1,-1,train", "camid a 0-based integer"),
        ("images/a/0001_x.jpg,1,0,val", "split one of"),
        ("images/a/missing.jpg,1,0,train", "an existing image"),
        ("../outside.jpg,1,0,train", "a relative image path inside"),
        ("images/a/notes.txt,1,0,train", "an image file ending in"),
        ("images/a/0001_x.jpg,1,0,train,extra", "cells per row"),
    ],
)
def test_csv_bad_row_names_line(tmp_path, row, expected):
    good = "images/a/0002_x.png,2,1,train"
    layout = make_csv(tmp_path / "t", rows=[good, row])
    with pytest.raises(DatasetLayoutError, match=expected) as err:
        read_dataset("csv", layout.root)
    assert err.value.path == f"{layout.published / 'samples.csv'}:3"


def test_csv_duplicate_row(tmp_path):
    row = "images/a/0001_x.jpg,1,0,train"
    layout = make_csv(tmp_path / "t", rows=[row, row])
    with pytest.raises(DatasetLayoutError, match="each image listed once.*already on line 2"):
        read_dataset("csv", layout.root)


def test_csv_bad_header_and_missing_table(tmp_path):
    layout = make_csv(tmp_path / "t", header="file,pid,camid,split")
    with pytest.raises(DatasetLayoutError, match=r"samples\.csv:1: expected a header with columns"):
        read_dataset("csv", layout.root)
    with pytest.raises(DatasetLayoutError, match=r"labels\.csv: expected a file 'labels\.csv'"):
        read_dataset("csv", layout.root, table="labels.csv")


def test_csv_non_strict_skips_bad_rows(tmp_path):
    layout = make_csv(tmp_path / "t", rows=["images/a/0001_x.jpg,1,0,train", "images/a/0002_x.png,x,1,train"])
    report = read_dataset_report("csv", layout.root, strict=False)
    assert len(report.samples) == 1
    assert [s.path for s in report.skipped] == [f"{layout.published / 'samples.csv'}:3"]


# --- the common error cases ---------------------------------------------------------------------


def test_missing_top_folder_names_path_and_expected_folder(tmp_path):
    (tmp_path / "grid" / "GRID_v2").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset("grid", tmp_path / "grid")
    message = str(err.value)
    assert err.value.path == str(tmp_path / "grid")
    assert "'underground_reid'" in message and "'probe'" in message and "folders: ['GRID_v2']" in message


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected an existing dataset folder; found nothing"):
        read_dataset("viper", tmp_path / "nope")


def test_missing_split_folder_lists_what_is_there(tmp_path):
    layout = make_market1501(tmp_path / "m")
    shutil.rmtree(layout.published / "bounding_box_test")
    (layout.published / "bounding_box_train").rename(layout.published / "train")
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset("market1501", layout.root)
    assert str(err.value) == (
        f"{layout.published / 'bounding_box_train'}: expected a folder 'bounding_box_train' with files like "
        "0002_c1s1_000451_03.jpg; found folders: ['query', 'train']"
    )


def test_unexpected_image_name_is_an_error_unless_not_strict(tmp_path, caplog):
    layout = make_market1501(tmp_path / "m")
    stray = layout.published / "query" / "IMG_2041.jpg"
    write_image(stray)
    with pytest.raises(DatasetLayoutError) as err:
        read_dataset("market1501", layout.root)
    assert err.value.path == str(stray)
    assert "a file name like 0002_c1s1_000451_03.jpg" in str(err.value) and "'IMG_2041.jpg'" in str(err.value)

    with caplog.at_level(logging.WARNING, logger="reidflow.data.readers"):
        report = read_dataset_report("market1501", layout.root, strict=False)
    assert [s.path for s in report.skipped] == [str(stray)]
    assert counts(report.samples) == layout.counts()
    assert "skipped 1 file(s)" in caplog.text


def test_empty_split_is_an_error_even_when_not_strict(tmp_path):
    layout = make_viper(tmp_path / "viper")
    for image in (layout.published / "cam_b").glob("*.bmp"):
        image.unlink()
    for strict in (True, False):
        with pytest.raises(
            DatasetLayoutError, match="cam_b: expected image files like 000_45.bmp; found no image"
        ):
            read_dataset("viper", layout.root, strict=strict)


def test_unknown_option_and_bad_value(tmp_path):
    layout = make_cuhk03np(tmp_path / "c")
    with pytest.raises(ReaderOptionError) as err:
        read_dataset("cuhk03np", layout.root, varaint="detected")
    assert isinstance(err.value, DatasetLayoutError) and isinstance(err.value, ConfigError)
    assert "['domain', 'strict', 'variant']" in str(err.value) and "varaint" in str(err.value)
    with pytest.raises(ReaderOptionError, match=r"\['labeled', 'detected'\]; found 'both'"):
        read_dataset("cuhk03np", layout.root, variant="both")
    with pytest.raises(ReaderOptionError, match="option 'strict'"):
        read_dataset("cuhk03np", layout.root, strict=1)


def test_unknown_reader_lists_known_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset reader 'market'.*'market1501'"):
        read_dataset("market", tmp_path)


def test_market_two_digit_cameras_of_synthetic_domains_and_c0_rejected(tmp_path):
    layout = make_market1501(tmp_path / "synth")
    write_image(layout.published / "bounding_box_test" / "0003_c12s1_000001_01.jpg")
    samples = read_dataset("market1501", layout.root, domain="night_station")
    assert [s.camid for s in samples if s.path.endswith("0003_c12s1_000001_01.jpg")] == [11]
    write_image(layout.published / "query" / "0003_c0s1_000002_01.jpg")
    with pytest.raises(DatasetLayoutError, match=r"camera number c1\.\.c99; found c0"):
        read_dataset("market1501", layout.root)


# --- real name shapes that differ from the Market pattern ---------------------------------------


@pytest.mark.parametrize("wrapper", ["subset1", ""])
@pytest.mark.parametrize("point_at", ["parent", "top", "published"])
def test_personx_release_cameras_and_subset_wrapper(tmp_path, wrapper, point_at):
    layout = make_personx(tmp_path / "personx", wrapper=wrapper)
    root = {"parent": layout.root, "top": layout.root / "PersonX", "published": layout.published}[point_at]
    samples = read_dataset("personx", root)
    assert {s.path: (s.pid, s.camid, s.split) for s in samples} == layout.label_of()
    two_digit = [s for s in samples if "_c10s1_" in s.path or "_c12s1_" in s.path]
    assert sorted(s.camid for s in two_digit) == [3, 5]
    assert {s.camid for s in samples} == set(range(6))


@pytest.mark.parametrize("camera", ["c1", "c5", "c13"])
def test_personx_camera_outside_the_six_is_named(tmp_path, camera):
    layout = make_personx(tmp_path / "personx")
    stray = layout.published / "query" / f"0401_{camera}s1_000041.jpg"
    write_image(stray)
    with pytest.raises(DatasetLayoutError, match=rf"among c3, c4, c8, c10, c11, c12; found {camera} in"):
        read_dataset("personx", layout.root)
    report = read_dataset_report("personx", layout.root, strict=False)
    assert [s.path for s in report.skipped] == [str(stray)]


def test_cuhksysu_real_crop_names_keep_scene_and_crop_number(tmp_path):
    layout = make_cuhksysu(tmp_path / "sysu")
    samples = {s.path.rsplit("/", 1)[-1]: s for s in read_dataset("cuhksysu", layout.root)}
    assert samples["p11422_s16929_1.jpg"].pid == 11422
    assert samples["p11422_s16929_1.jpg"].extra == {"scene": 16929, "crop": 1}
    assert samples["p1_s25_12.jpg"].extra == {"scene": 25, "crop": 12}
    assert samples["p11006_s15299.jpg"].extra == {"scene": 15299}
    write_image(layout.published / "cropped_images" / "p11422_s16929_x.jpg")
    with pytest.raises(DatasetLayoutError, match=r"a file name like p11422_s16929_1\.jpg"):
        read_dataset("cuhksysu", layout.root)
