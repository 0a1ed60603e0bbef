"""Fixtures for end-to-end tests: the fixture flake, real `twistd -n nixforge` processes, podman."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import (
    BUSYBOX,
    FIXTURE_FLAKES,
    ForgeFactory,
    ForgeProcess,
    Podman,
    aardvark_pids,
    prepare_flake,
    require_tool,
)


@pytest.fixture(scope="session", autouse=True)
def e2e_tools() -> None:
    """Fail (never skip) every e2e test when Nix, skopeo or the static busybox are missing."""
    require_tool("nix")
    require_tool("skopeo")
    if not BUSYBOX.exists():
        pytest.fail(f"{BUSYBOX} is missing: apt-get install busybox-static (scripts/setup.sh)", pytrace=False)


@pytest.fixture(scope="session")
def nonce() -> str:
    """A per-session nonce: fixture derivations that must really build (slow, chatty, fresh) use it."""
    return secrets.token_hex(6)


@pytest.fixture(scope="session")
def flake_dir(tmp_path_factory: pytest.TempPathFactory, nonce: str) -> Path:
    """A copy of tests/fixtures/flakes/forge with ./busybox and ./nonce, outside any git tree."""
    return prepare_flake(FIXTURE_FLAKES / "forge", tmp_path_factory.mktemp("flake") / "forge", nonce)


@pytest.fixture(scope="session")
def flake_ref(flake_dir: Path) -> str:
    """`path:<flake copy>`."""
    return f"path:{flake_dir}"


@pytest.fixture
def forge_factory(tmp_path: Path, flake_ref: str) -> Iterator[ForgeFactory]:
    """Start registries (`name` keeps their directories apart); all are stopped at teardown."""
    started: list[ForgeProcess] = []

    def start(name: str = "forge", *, flake: str | None = None, data_dir: Path | None = None,
              **options: object) -> ForgeProcess:
        forge = ForgeProcess(
            flake_ref=flake or flake_ref,
            data_dir=data_dir or tmp_path / name / "data",
            work_dir=tmp_path / name,
            **options,  # type: ignore[arg-type]
        )
        started.append(forge)
        return forge.start()

    yield start
    for forge in started:
        forge.stop()


@pytest.fixture
def forge(forge_factory: ForgeFactory) -> ForgeProcess:
    """A registry of its own for one test, at LOG_LEVEL=DEBUG, on a fresh data dir."""
    return forge_factory()


@pytest.fixture(scope="module")
def shared_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[ForgeProcess]:
    """One registry for the read-only tests of a module (images built once, pulled many times)."""
    work_dir = tmp_path_factory.mktemp("shared-forge")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir).start()
    yield forge
    forge.stop()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman on private storage; containers, images and new aardvark-dns processes removed afterwards."""
    require_tool("podman")
    require_tool("runc")
    before = aardvark_pids()
    client = Podman(tmp_path / "podman")
    yield client
    client.cleanup(before)
