"""The YAML schema of a synthetic domain, its presets and its loaders.

A domain is described entirely by data (a :class:`DomainSpec`), so a user can add a new style of
camera network by writing YAML, without code. Every loading error is a :class:`ConfigError` that
names the file and the dotted key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reidflow.errors import ConfigError

SYNTH_CARD_FORMAT = "reidflow.synth/1"
"""The ``format`` value of a ``synth_spec.yaml`` written next to a generated domain."""

PRESET_SUFFIX = ".yaml"
MAX_IMAGES_PER_IDENTITY_CAMERA = 1000

Channel = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[Channel, Channel, Channel]
PositiveFloat = Annotated[float, Field(gt=0)]
Texture = Literal["flat", "gradient", "noise", "stripes", "bricks"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(key: str, pair: tuple[int, int], minimum: int) -> None:
    low, high = pair
    if low < minimum:
        raise ValueError(f"{key}: minimum {low} must be >= {minimum}")
    if high < low:
        raise ValueError(f"{key}: [min, max] expected with min <= max, got [{low}, {high}]")


class ImageSize(_Strict):
    """Output crop size in pixels (Market-1501 crops are 128x64)."""

    height: Annotated[int, Field(ge=32, le=1024)] = 128
    width: Annotated[int, Field(ge=16, le=512)] = 64

    @model_validator(mode="after")
    def _portrait(self) -> ImageSize:
        if self.width > self.height:
            raise ValueError(
                f"image: a pedestrian crop is portrait, got width {self.width} > height {self.height}"
            )
        return self


class Background(_Strict):
    """The scene behind the pedestrians: colours (0-255 RGB) and a texture kind."""

    palette: Annotated[list[RGB], Field(min_length=1)]
    texture: Texture = "flat"


class Style(_Strict):
    """Image formation of a domain, applied in this order: gain, hue, saturation, contrast, brightness,
    blur, noise, JPEG."""

    gain: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0)
    brightness: Annotated[float, Field(gt=0, le=4)] = 1.0
    contrast: Annotated[float, Field(ge=0, le=4)] = 1.0
    saturation: Annotated[float, Field(ge=0, le=4)] = 1.0
    hue_shift: Annotated[float, Field(ge=-180, le=180)] = 0.0
    blur_sigma: Annotated[float, Field(ge=0, le=10)] = 0.0
    noise_std: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    jpeg_quality: Annotated[int, Field(ge=5, le=100)] = 95
    background: Background


class CameraVariation(_Strict):
    """How far each camera of the domain departs from the domain style (half-widths of uniform draws)."""

    gain_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    brightness_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    contrast_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    saturation_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    hue_jitter: Annotated[float, Field(ge=0, le=180)] = 0.0
    blur_jitter: Annotated[float, Field(ge=0, le=5)] = 0.0
    noise_jitter: Annotated[float, Field(ge=0, le=0.2)] = 0.0
    jpeg_quality_jitter: Annotated[int, Field(ge=0, le=90)] = 0


class ViewWeights(_Strict):
    """Relative frequency of the viewpoints (need not sum to 1)."""

    front: Annotated[float, Field(ge=0)] = 1.0
    back: Annotated[float, Field(ge=0)] = 1.0
    side: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _some_view(self) -> ViewWeights:
        if self.front + self.back + self.side <= 0:
            raise ValueError("scene.views: at least one of front, back, side must have a weight > 0")
        return self


class Scene(_Strict):
    """What happens in front of the camera, per image."""

    occlusion_probability: Annotated[float, Field(ge=0, le=1)] = 0.1
    misalignment: Annotated[float, Field(ge=0, le=0.3)] = 0.05
    pose_jitter: Annotated[float, Field(ge=0, le=2)] = 1.0
    illumination_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.05
    views: ViewWeights = ViewWeights()


class DomainSpec(_Strict):
    """One synthetic camera network: its size, its split and its look."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
    description: str = ""
    identities: Annotated[int, Field(ge=2, le=9999)]
    cameras: Annotated[int, Field(ge=2, le=99)]
    cameras_per_identity: tuple[int, int] = (2, 3)
    images_per_identity_camera: tuple[int, int] = (2, 6)
    query_per_camera: Annotated[int, Field(ge=1)] = 1
    train_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    distractors: Annotated[int, Field(ge=0, le=99999)] = 0
    image: ImageSize = ImageSize()
    style: Style
    camera_variation: CameraVariation = CameraVariation()
    scene: Scene = Scene()

    @model_validator(mode="after")
    def _consistent(self) -> DomainSpec:
        _check_range("cameras_per_identity", self.cameras_per_identity, minimum=2)
        if self.cameras_per_identity[1] > self.cameras:
            raise ValueError(
                f"cameras_per_identity: max {self.cameras_per_identity[1]} exceeds cameras {self.cameras}"
            )
        _check_range("images_per_identity_camera", self.images_per_identity_camera, minimum=1)
        if self.images_per_identity_camera[1] > MAX_IMAGES_PER_IDENTITY_CAMERA:
            raise ValueError(
                f"images_per_identity_camera: max {self.images_per_identity_camera[1]} exceeds "
                f"{MAX_IMAGES_PER_IDENTITY_CAMERA} (frame numbers must fit the 6-digit Market field)"
            )
        if self.train_fraction < 1 and self.images_per_identity_camera[0] <= self.query_per_camera:
            raise ValueError(
                "images_per_identity_camera: minimum must exceed query_per_camera "
                f"({self.query_per_camera}) so every test identity-camera keeps a gallery image"
            )
        n_train = train_identity_count(self)
        if 0 < self.train_fraction < 1 and (n_train == 0 or n_train == self.identities):
            raise ValueError(
                f"train_fraction: {self.train_fraction} of {self.identities} identities leaves "
                "an empty train or test split"
            )
        return self


def train_identity_count(spec: DomainSpec) -> int:
    """Number of identities in the train split (the rest are query/gallery identities)."""
    return round(spec.train_fraction * spec.identities)


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<top level>"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def spec_from_mapping(data: Any, source: str = "<spec>") -> DomainSpec:
    """Validate a parsed YAML mapping. A ``synth_spec.yaml`` domain card is accepted too."""
    if isinstance(data, Mapping) and data.get("format") == SYNTH_CARD_FORMAT:
        if "spec" not in data:
            raise ConfigError(f"{source}: spec: missing in a {SYNTH_CARD_FORMAT} card")
        data = data["spec"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of domain keys, got {type(data).__name__}")
    try:
        return DomainSpec.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None


def load_spec(path: str | Path) -> DomainSpec:
    """Read and validate one domain YAML file (or the ``synth_spec.yaml`` of a generated domain)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read domain spec ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return spec_from_mapping(data, source=str(path))


def revalidate(spec: DomainSpec, source: str = "<spec>") -> DomainSpec:
    """Re-check a spec built with ``model_copy(update=...)``, which pydantic does not validate."""
    return spec_from_mapping(spec.model_dump(mode="python"), source=source)


def override_spec(spec: DomainSpec, updates: Mapping[str, Any]) -> DomainSpec:
    """Apply dotted-key overrides (``{"identities": 40, "style.noise_std": 0.1}``) and validate."""
    data = spec.model_dump(mode="python")
    for dotted, value in updates.items():
        node: Any = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[: depth + 1])} is not a section")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {dotted}: unknown key {parts[-1]!r}; expected one of {sorted(node)}")
        node[parts[-1]] = value
    return spec_from_mapping(data, source=f"overrides of {spec.name}")


def _preset_dir() -> Traversable:
    return resources.files("reidflow.data.synth").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the packaged domain presets, sorted."""
    return sorted(
        entry.name[: -len(PRESET_SUFFIX)]
        for entry in _preset_dir().iterdir()
        if entry.is_file() and entry.name.endswith(PRESET_SUFFIX)
    )


def load_preset(name: str) -> DomainSpec:
    """Load a packaged preset by name (see :func:`list_presets`)."""
    available = list_presets()
    if name not in available:
        raise ConfigError(f"synth preset {name!r}: unknown; expected one of {available}")
    entry = _preset_dir().joinpath(name + PRESET_SUFFIX)
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"preset {name}{PRESET_SUFFIX}: not valid YAML: {error}") from None
    return spec_from_mapping(data, source=f"preset {name}{PRESET_SUFFIX}")


def resolve_spec(name_or_path: str | Path) -> DomainSpec:
    """A preset name, or a path to a YAML file (anything with a suffix or a path separator)."""
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text
    if looks_like_path:
        return load_spec(text)
    return load_preset(text)


def spec_to_yaml_data(spec: DomainSpec) -> dict[str, Any]:
    """Plain data (lists, not tuples) that :func:`spec_from_mapping` reads back to an equal spec."""
    return spec.model_dump(mode="json")
