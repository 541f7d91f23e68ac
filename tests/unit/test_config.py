from pathlib import Path

import pytest
from pydantic import Field

from reidflow.config import StrictModel, apply_override, load_params, params_digest, section
from reidflow.errors import ConfigError


class Demo(StrictModel):
    lr: float = Field(0.1, gt=0)
    epochs: int = 3
    names: list[str] = Field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    p = write(tmp_path, "train:\n  lr: 0.5\n  names: [a, b]\n")
    params = load_params(p, ["train.epochs=7", "train.names.1=c"])
    cfg = section(params, "train", Demo, source=str(p))
    assert cfg.epochs == 7 and cfg.lr == 0.5 and cfg.names == ["a", "c"]


def test_unknown_key_names_file_and_dotted_key(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        section(load_params(p), "train", Demo, source=str(p))
    assert str(p) in str(err.value) and "train.lrr" in str(err.value)


def test_bad_value_names_key_and_value(tmp_path):
    p = write(tmp_path, "train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"train\.lr.*greater than 0.*-1"):
        section(load_params(p), "train", Demo, source=str(p))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1, 2\n"))


def test_override_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override({}, "train.lr")
    with pytest.raises(ConfigError, match="is a value, not a mapping"):
        apply_override({"train": {"lr": 1}}, "train.lr.x=2")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"a": [1]}, "a.3=2")


def test_params_digest_is_order_independent():
    assert params_digest({"a": 1, "b": [1, 2]}) == params_digest({"b": [1, 2], "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})


# ------------------------------------------------------------------------------------------------
# untrusted YAML is parsed within bounds, with one-line errors


ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]
    + ["train:", "  names: *i"]
)


def test_alias_bomb_is_refused_quickly(tmp_path):
    import time

    p = write(tmp_path, ALIAS_BOMB + "\n")
    t0 = time.perf_counter()
    with pytest.raises(
        ConfigError, match="refusing YAML more than .* values once aliases are expanded"
    ) as err:
        section(load_params(p), "train", Demo, source=str(p))
    assert time.perf_counter() - t0 < 5 and "\n" not in str(err.value) and str(p) in str(err.value)


def test_many_aliases_and_deep_nesting_and_size_are_bounded(tmp_path):
    from reidflow import config

    many = "a: &a 1\nb: [" + ", ".join(["*a"] * (config.MAX_YAML_ALIASES + 1)) + "]\n"
    with pytest.raises(ConfigError, match="more than .* aliases"):
        load_params(write(tmp_path, many))
    with pytest.raises(ConfigError, match="nested deeper than") as err:
        load_params(write(tmp_path, "a: " + "[" * 50_000 + "]" * 50_000 + "\n"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="nested deeper than"):
        apply_override({}, "train.names=" + "[" * 5000 + "]" * 5000)
    big = tmp_path / "big.yaml"
    big.write_text("a: '" + "x" * (config.MAX_YAML_BYTES + 1) + "'\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_params(big)
    fine = "a: &a {lr: 0.5}\ntrain: *a\n"  # ordinary anchors still work
    assert section(load_params(write(tmp_path, fine)), "train", Demo).lr == 0.5


def test_non_utf8_params_and_validation_errors_are_one_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_bytes(b"train:\n  lr: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text") as err:
        load_params(p)
    assert str(p) in str(err.value)
    p = write(tmp_path, "train:\n  lr: -1\n  epochs: x\n  bogus: 1\n")
    with pytest.raises(ConfigError) as err:
        section(load_params(p), "train", Demo, source=str(p))
    text = str(err.value)
    assert "\n" not in text and "train.lr" in text and "train.epochs" in text and "train.bogus" in text
