"""scripts/image-inputs-digest, the stamp CI compares to decide whether to run ``make test-image``, and
docker/constraints-gpu.txt (the CUDA wheels of the GPU variant).

Deliberately NOT tested here: that the committed stamp equals the checkout's digest. That would fail on
every edit of the Dockerfile or the constraints before the image test had a chance to run; CI's
.ci/image-test runs the image test instead when they differ.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from tests.unit.test_dockerfile import DOCKERFILE, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "image-inputs-digest"
STAMP = "docker/image-inputs.sha256"
# every input the script must cover (the Makefile's image section is listed as Makefile[image])
EXPECTED = {
    ".ci/image-test",
    ".dockerignore",
    "constraints.txt",
    "docker/Dockerfile",
    "docker/constraints-gpu.txt",
    "pyproject.toml",
    "scripts/image-inputs-digest",
    "tests/unit/test_kfp_image.py",
}
# what the Dockerfile copies that is package source, not an input of the dependency layers: the
# ordinary test suite runs that code (README.md is pyproject's readme, copied for the package metadata)
PACKAGE_SOURCES = {"src", "components", "pipelines", "README.md"}
GPU_CONSTRAINTS = ROOT / "docker" / "constraints-gpu.txt"


def digest(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "image-inputs-digest"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sha, name = line.split("  ", 1)
            assert re.fullmatch(r"[0-9a-f]{64}", sha), line
            out[name] = sha
    return out


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The inputs (and the Makefile) in a temporary tree laid out like the repository."""
    for name in [*EXPECTED, "Makefile"]:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return tmp_path


def test_the_digest_is_deterministic_and_independent_of_the_checkout_path(copy: Path) -> None:
    first, second, here = digest(ROOT), digest(ROOT), digest(copy)
    assert first.returncode == second.returncode == here.returncode == 0, first.stderr + here.stderr
    assert first.stdout == second.stdout == here.stdout


def test_it_covers_the_listed_inputs() -> None:
    listed = rows(digest(ROOT).stdout)
    assert set(listed) == EXPECTED | {"Makefile[image]", "total"}


def test_every_file_the_dockerfile_copies_is_an_input_or_package_source() -> None:
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    copied = set()
    for stage in stages:
        for args in stage.args("COPY"):
            parts = args.split()
            if any(p.startswith("--from") for p in parts):
                continue
            paths = [p for p in parts if not p.startswith("--")]
            copied |= {p.rstrip("/") for p in paths[:-1]}
    assert copied - PACKAGE_SOURCES <= EXPECTED, "a file the image build copies is missing from INPUTS"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_changing_any_input_changes_the_digest_and_check_names_it(copy: Path, name: str) -> None:
    assert digest(copy, "--write").returncode == 0
    before = rows((copy / STAMP).read_text())
    assert digest(copy, "--check").returncode == 0
    with (copy / name).open("a") as f:
        f.write("\n# edited\n")
    after = rows(digest(copy).stdout)
    assert after["total"] != before["total"] and after[name] != before[name]
    assert {k for k in after if after[k] != before[k]} == {name, "total"}
    check = digest(copy, "--check")
    assert check.returncode == 1 and name in check.stdout


def test_only_the_image_section_of_the_makefile_counts(copy: Path) -> None:
    makefile = copy / "Makefile"
    base = rows(digest(copy).stdout)["total"]
    makefile.write_text("# a comment above every rule\n" + makefile.read_text())
    assert rows(digest(copy).stdout)["total"] == base
    makefile.write_text(makefile.read_text().replace("--network host", "--network host --pull=never"))
    assert rows(digest(copy).stdout)["total"] != base


def test_a_new_constraints_file_beside_the_dockerfile_is_an_input(copy: Path) -> None:
    base = rows(digest(copy).stdout)
    (copy / "docker" / "constraints-arm.txt").write_text("triton==3.7.1\n")
    after = rows(digest(copy).stdout)
    assert "docker/constraints-arm.txt" in after and after["total"] != base["total"]


def test_a_missing_input_is_an_error_not_a_change(copy: Path) -> None:
    (copy / "pyproject.toml").unlink()
    result = digest(copy, "--check")
    assert result.returncode == 2 and "pyproject.toml" in result.stderr


def test_no_stamp_counts_as_changed(copy: Path) -> None:
    result = digest(copy, "--check")
    assert result.returncode == 1 and "docker/Dockerfile" in result.stdout


def test_make_test_image_writes_the_stamp_after_the_test_and_ci_runs_the_check() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest-image:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert "pytest" in recipe[0] and "test_kfp_image.py" in recipe[0]
    assert recipe[-1].strip().endswith("scripts/image-inputs-digest --write")
    assert ".ci/image-test" in (ROOT / ".ci" / "run").read_text().split()
    image_test = (ROOT / ".ci" / "image-test").read_text()
    assert "scripts/image-inputs-digest --check" in image_test and "make test-image" in image_test
    assert "DEBIAN_FRONTEND=noninteractive" in image_test and "podman" in image_test
    stamp = (ROOT / STAMP).read_text()
    assert "total" in rows(stamp), "commit the stamp that make test-image writes"


def gpu_pins() -> dict[str, str]:
    pins = {}
    for line in GPU_CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([a-z0-9][a-z0-9._-]*)==([0-9][0-9a-z.+!-]*)", line)
        assert match, f"constraints-gpu.txt: not a plain == pin: {line!r}"
        pins[match[1]] = match[2]
    return pins


def test_gpu_constraints_pin_torch_2_13_0_cuda_wheels() -> None:
    pins = gpu_pins()
    assert "--hash" not in GPU_CONSTRAINTS.read_text().replace("No --hash lines", "")
    assert all(name.startswith(("nvidia-", "cuda-", "triton")) for name in pins)
    # torch 2.13.0's own Requires-Dist pins (Linux) and what its cuda-toolkit extras bring
    exact = {
        "nvidia-cudnn-cu13": "9.20.0.48",
        "nvidia-cusparselt-cu13": "0.8.1",
        "nvidia-nccl-cu13": "2.29.7",
        "nvidia-nvshmem-cu13": "3.4.5",
        "triton": "3.7.1",
        "cuda-toolkit": "13.0.3",
    }
    for name, version in exact.items():
        assert Version(pins[name]) == Version(version), name
    extras = {"cublas", "cuda-runtime", "cuda-nvrtc", "cuda-cupti", "cufft", "cufile", "curand"}
    extras |= {"cusolver", "cusparse", "nvjitlink", "nvtx"}
    assert {f"nvidia-{e}" for e in extras} <= set(pins)
    assert "cuda-bindings" in pins
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_the_gpu_variant_takes_torch_from_the_index_the_pins_come_from() -> None:
    preamble, stages = parse_dockerfile(DOCKERFILE.read_text())
    base = dict(rest.partition("=")[::2] for _, rest in preamble)["BASE_IMAGE"]
    builder = next(s for s in stages if s.name == "builder")
    index = next(a for a in builder.args("ARG") if a.startswith("TORCH_INDEX_URL="))
    assert index == "TORCH_INDEX_URL=https://pypi.org/simple"
    assert any(c.endswith("constraints-gpu.txt ./constraints-gpu.txt") for c in builder.args("COPY"))
    installs = [part for run in builder.args("RUN") for part in run.split("&&") if "pip install" in part]
    assert installs and all("-c constraints-gpu.txt" in cmd for cmd in installs)
    # the base's CUDA (nvidia/cuda:MAJOR.MINOR.x-...) is the one the pinned wheels are built for
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.", base)
    assert cuda, base
    toolkit = Version(gpu_pins()["cuda-toolkit"])
    assert (toolkit.major, toolkit.minor) == (int(cuda[1]), int(cuda[2]))
