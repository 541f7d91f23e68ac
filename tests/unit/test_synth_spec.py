"""Domain specs: presets, YAML loading, validation messages, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reidflow.data.synth import DomainSpec, list_presets, load_preset, load_spec, override_spec, resolve_spec
from reidflow.data.synth.spec import revalidate, spec_to_yaml_data
from reidflow.errors import ConfigError

SOURCE_PRESETS = {"mall_warm", "night_station", "foggy_campus", "fluoro_office"}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def base_data() -> dict:
    return spec_to_yaml_data(load_preset("personx_like"))


def test_presets_include_four_sources_a_clean_source_and_a_target() -> None:
    names = set(list_presets())
    assert SOURCE_PRESETS | {"personx_like", "target_city"} <= names


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_with_modest_default_size(name: str) -> None:
    spec = load_preset(name)
    assert spec.name == name
    assert 150 <= spec.identities <= 300
    assert 4 <= spec.cameras <= 6
    assert spec.cameras_per_identity[0] >= 2


def test_clean_preset_has_no_noise_or_blur() -> None:
    style = load_preset("personx_like").style
    assert style.noise_std == 0 and style.blur_sigma == 0 and style.background.texture == "flat"


def test_resolve_spec_takes_a_preset_name_or_a_path(tmp_path: Path, base_data: dict) -> None:
    base_data["name"] = "my_domain"
    path = write_yaml(tmp_path / "mine.yaml", base_data)
    assert resolve_spec("mall_warm").name == "mall_warm"
    assert resolve_spec(str(path)).name == "my_domain"
    assert resolve_spec(path) == load_spec(path)


def test_unknown_preset_names_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="no_such_domain.*mall_warm"):
        load_preset("no_such_domain")


def test_unknown_key_is_rejected_naming_file_and_key(tmp_path: Path, base_data: dict) -> None:
    base_data["style"]["sharpness"] = 2.0
    path = write_yaml(tmp_path / "typo.yaml", base_data)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    assert str(path) in str(caught.value)
    assert "style.sharpness" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("cameras_per_identity", [1, 3], "cameras_per_identity"),
        ("cameras_per_identity", [2, 9], "cameras_per_identity"),
        ("images_per_identity_camera", [4, 2], "images_per_identity_camera"),
        ("images_per_identity_camera", [1, 3], "images_per_identity_camera"),
        ("identities", 0, "identities"),
        ("name", "Bad Name!", "name"),
        ("train_fraction", 1.5, "train_fraction"),
    ],
)
def test_invalid_values_name_the_key_and_the_file(
    tmp_path: Path, base_data: dict, key: str, value, named: str
) -> None:
    base_data[key] = value
    path = write_yaml(tmp_path / "bad.yaml", base_data)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and named in message


def test_invalid_nested_values_name_the_dotted_key(tmp_path: Path, base_data: dict) -> None:
    base_data["style"]["background"]["texture"] = "marble"
    base_data["style"]["background"]["palette"] = [[10, 20, 300]]
    path = write_yaml(tmp_path / "bad.yaml", base_data)
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "style.background.texture" in message
    assert "style.background.palette.0.2" in message


def test_broken_yaml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_spec(broken)
    with pytest.raises(ConfigError, match="absent.yaml: cannot read"):
        load_spec(tmp_path / "absent.yaml")
    listing = write_yaml(tmp_path / "list.yaml", {"name": "x"})
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_spec(listing)


def test_missing_required_key_is_named(tmp_path: Path, base_data: dict) -> None:
    del base_data["style"]
    path = write_yaml(tmp_path / "nostyle.yaml", base_data)
    with pytest.raises(ConfigError, match=r"nostyle.yaml: style: Field required"):
        load_spec(path)


def test_model_copy_override_works_and_is_revalidated() -> None:
    spec = load_preset("mall_warm")
    smaller = spec.model_copy(update={"identities": 40})
    assert smaller.identities == 40 and smaller.style == spec.style
    assert revalidate(smaller) == smaller
    with pytest.raises(ConfigError, match="cameras_per_identity"):
        revalidate(spec.model_copy(update={"cameras": 2}))


def test_dotted_overrides_are_validated() -> None:
    spec = override_spec(
        load_preset("mall_warm"), {"identities": 12, "style.noise_std": 0.2, "scene.views.side": 0}
    )
    assert (spec.identities, spec.style.noise_std, spec.scene.views.side) == (12, 0.2, 0)
    with pytest.raises(ConfigError, match="override style.nois_std: unknown key"):
        override_spec(spec, {"style.nois_std": 0.1})
    with pytest.raises(ConfigError, match="overrides of mall_warm: identities: .*greater than or equal to 2"):
        override_spec(spec, {"identities": 1})
    with pytest.raises(ConfigError, match="identities is not a section"):
        override_spec(spec, {"identities.x": 1})


def test_yaml_round_trip_gives_an_equal_spec(tmp_path: Path) -> None:
    for name in list_presets():
        spec = load_preset(name)
        path = write_yaml(tmp_path / f"{name}.yaml", spec_to_yaml_data(spec))
        assert load_spec(path) == spec
        assert isinstance(load_spec(path), DomainSpec)
