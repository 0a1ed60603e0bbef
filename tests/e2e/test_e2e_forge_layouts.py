"""Pulls from flakes shaped like the real forges (imincik/nix-forge and ngi-nix/forge), with stock Nix settings."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    FIXTURE_FLAKES,
    NIX_RUN,
    OCI_ACCEPT,
    ForgeFactory,
    ForgeProcess,
    Podman,
    prepare_flake,
    run_tool,
)


def flake_copy(tmp_path_factory: pytest.TempPathFactory, layout: str, nonce: str) -> str:
    """`path:` of a fresh copy of tests/fixtures/flakes/<layout>."""
    return f"path:{prepare_flake(FIXTURE_FLAKES / layout, tmp_path_factory.mktemp('flake') / layout, nonce)}"


@pytest.fixture(scope="module")
def nix_forge_flake(tmp_path_factory: pytest.TempPathFactory, nonce: str) -> str:
    return flake_copy(tmp_path_factory, "nix-forge", nonce)


@pytest.fixture(scope="module")
def ngi_forge_flake(tmp_path_factory: pytest.TempPathFactory, nonce: str) -> str:
    return flake_copy(tmp_path_factory, "ngi-forge", nonce)


def module_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str, name: str) -> ForgeProcess:
    work_dir = tmp_path_factory.mktemp(name)
    return ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir).start()


@pytest.fixture(scope="module")
def nix_forge(tmp_path_factory: pytest.TempPathFactory, nix_forge_flake: str) -> Iterator[ForgeProcess]:
    """A registry (DEBUG log) serving the nix-forge-shaped flake."""
    forge = module_forge(tmp_path_factory, nix_forge_flake, "nix-forge-registry")
    yield forge
    forge.stop()


@pytest.fixture(scope="module")
def ngi_forge(tmp_path_factory: pytest.TempPathFactory, ngi_forge_flake: str) -> Iterator[ForgeProcess]:
    """A registry (DEBUG log) serving the ngi-forge-shaped flake."""
    forge = module_forge(tmp_path_factory, ngi_forge_flake, "ngi-forge-registry")
    yield forge
    forge.stop()


def nix_run_count(forge: ForgeProcess) -> int:
    """How many nix commands the registry has started so far (its log read up to now)."""
    forge.sync_log()
    return len(forge.matching_lines(NIX_RUN))


def nix_runs_since(forge: ForgeProcess, before: int) -> list[str]:
    """The nix command lines the registry started after its first `before` ones."""
    forge.sync_log()
    return [line.split("running ", 1)[1] for line in forge.matching_lines(NIX_RUN)[before:]]


def probes_and_builds(runs: list[str]) -> list[str]:
    """The kinds of `runs` (eval, build, path-info) past the shared lock and catalog, each run at most once."""
    locks = [run for run in runs if run.split()[1] == "flake"]
    catalogs = [run for run in runs if run.split()[1] == "eval" and run.endswith("#packages.x86_64-linux")]
    assert len(locks) <= 1 and len(catalogs) <= 1, runs
    return [run.split()[1] for run in runs if run not in locks and run not in catalogs]


def config_of(forge: ForgeProcess, reference: str) -> dict:
    """`skopeo inspect --config` of an image on the registry."""
    argv = ["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{forge.registry}/{reference}"]
    return json.loads(run_tool(argv).stdout)


def not_found(forge: ForgeProcess, name: str) -> dict:
    """The one OCI error of a pull of `name:latest`, which must be a 404."""
    response = forge.get(f"/v2/{name}/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 404, (response.status, response.body, forge.log_tail())
    (error,) = response.json()["errors"]
    return error


# -- the Nix settings nixforge brings itself ------------------------------------------------------


def test_nix_runs_with_no_experimental_feature_configured(nix_forge: ForgeProcess) -> None:
    """The registry's NIX_CONFIG turns nothing on; nixforge's own argv turns on what it needs."""
    assert re.search(r"experimental-features\s*=\s*$", nix_forge.environment()["NIX_CONFIG"], re.MULTILINE)
    before = nix_run_count(nix_forge)
    nix_forge.manifest("hello")
    runs = nix_runs_since(nix_forge, before)
    # The image, then the package it wraps (already built as its input) and its closure, for the SBOM.
    assert probes_and_builds(runs) == ["eval", "build", "build", "path-info"], runs
    for run in runs:
        assert "--extra-experimental-features nix-command flakes" in run
        assert "--accept-flake-config" in run  # the default: the flake's nixConfig is trusted


def test_accept_flake_config_can_be_turned_off(forge_factory: ForgeFactory, nix_forge_flake: str) -> None:
    forge = forge_factory("no-flake-config", flake=nix_forge_flake, extra_args=["--accept-flake-config", "false"])
    forge.manifest("hello")
    runs = nix_runs_since(forge, 0)
    assert runs and not any("--accept-flake-config" in run for run in runs), runs


# -- imincik/nix-forge: packages/<pkg>.image, <app>.containers -----------------------------------------


def test_a_package_image_is_served_and_runs(nix_forge: ForgeProcess, podman: Podman) -> None:
    image = f"{nix_forge.registry}/hello:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "Hello from a nix-forge package image\n"
    assert nix_forge.manifest("packages/hello").status == 200


def test_a_package_without_image_is_assembled_from_its_closure(nix_forge: ForgeProcess) -> None:
    config = config_of(nix_forge, "greet:latest")
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-greet/bin/greet", config["config"]["Entrypoint"][0])


def test_one_application_image_builds_alone_while_its_sibling_fails(
    nix_forge: ForgeProcess, podman: Podman, tmp_path: Path
) -> None:
    """`shop.containers` has `entries`: a pull of web builds only its entry; broken is never built."""
    before = nix_run_count(nix_forge)
    source = f"docker://{nix_forge.registry}/applications/shop/web:latest"
    run_tool(["skopeo", "copy", "--src-tls-verify=false", source, f"oci:{tmp_path / 'layout'}:web"])
    builds = [run for run in nix_runs_since(nix_forge, before) if run.split()[1] == "build"]
    assert len(builds) == 1 and builds[0].endswith('#shop.containers.entries."web.tar.gz"'), builds
    assert "deliberate sibling failure" not in nix_forge.log_text()
    image = f"{nix_forge.registry}/applications/shop/web:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "web of the nix-forge shop\n"


def test_the_failing_sibling_is_a_500_with_its_reason_in_the_info_log(
    forge_factory: ForgeFactory, nix_forge_flake: str
) -> None:
    forge = forge_factory("info-log", flake=nix_forge_flake, log_level="INFO")
    response = forge.get("/v2/applications/shop/broken/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 500, (response.status, response.body)
    forge.sync_log()  # the log is a pipe read by a thread: wait until it caught up
    log = forge.log_text()
    # At INFO, not only "500 UNKNOWN": the failure, Nix's error and the builder's last lines.
    assert re.search(r"#info\] build failed applications/shop/broken:latest: nix build failed", log), log
    assert "deliberate sibling failure" in log
    assert "#debug]" not in log


def test_containers_without_entries_are_built_whole_and_the_file_picked(nix_forge: ForgeProcess) -> None:
    before = nix_run_count(nix_forge)
    config = config_of(nix_forge, "applications/legacy/api:latest")
    assert config["config"]["Cmd"][0].endswith("-api/bin/api")
    builds = [run for run in nix_runs_since(nix_forge, before) if run.split()[1] == "build"]
    assert len(builds) == 1 and builds[0].endswith("#legacy.containers"), builds
    error = not_found(nix_forge, "applications/legacy/nope")
    assert (error["code"], error["message"]) == ("NAME_UNKNOWN", "the application has no such container image")
    remembered = nix_run_count(nix_forge)
    assert not_found(nix_forge, "applications/legacy/nope")["code"] == "NAME_UNKNOWN"
    assert nix_run_count(nix_forge) == remembered


def test_an_image_the_entries_do_not_list_is_unknown_without_a_build(nix_forge: ForgeProcess) -> None:
    before = nix_run_count(nix_forge)
    error = not_found(nix_forge, "applications/shop/nope")
    assert error["code"] == "NAME_UNKNOWN"
    assert error["detail"]["images"] == ["broken.tar.gz", "web.tar.gz"]
    # The catalog lists the application's entries: no probe, no build.
    assert probes_and_builds(nix_runs_since(nix_forge, before)) == []


def test_an_application_without_containers_says_so(nix_forge: ForgeProcess) -> None:
    error = not_found(nix_forge, "applications/nocontainers/web")
    assert error["code"] == "NAME_UNKNOWN"
    assert "has no containers" in error["message"]


def test_an_image_file_linked_out_of_the_store_is_refused(nix_forge: ForgeProcess) -> None:
    response = nix_forge.get("/v2/applications/escape/web/manifests/latest", {"Accept": OCI_ACCEPT})
    assert response.status == 500, (response.status, response.body)
    (error,) = response.json()["errors"]
    assert "outside the Nix store" in error["message"]
    # Nothing was stored: the catalog lists the flake's `escape` package, never the refused image.
    assert "applications/escape/web" not in nix_forge.get("/v2/_catalog").json()["repositories"]


def test_a_made_up_application_is_remembered_as_missing(nix_forge: ForgeProcess) -> None:
    before = nix_run_count(nix_forge)
    for _ in range(3):
        assert not_found(nix_forge, "applications/made-up/web")["code"] == "NAME_UNKNOWN"
    # Not in the catalog: no probe at all (at most the shared lock and catalog, if nothing needed them before).
    assert probes_and_builds(nix_runs_since(nix_forge, before)) == []


# -- ngi-nix/forge: flat names with dots -------------------------------------------------------------


def test_a_flat_dotted_package_is_built_from_its_closure_and_runs(ngi_forge: ForgeProcess, podman: Podman) -> None:
    before = nix_run_count(ngi_forge)
    image = f"{ngi_forge.registry}/pkgs.hello:latest"
    podman("pull", "--tls-verify=false", image)
    assert podman.run_image(image) == "Hello from pkgs.hello of an ngi forge\n"
    runs = nix_runs_since(ngi_forge, before)
    assert any(run.split()[1] == "build" and run.endswith('#"pkgs.hello"') for run in runs), runs
    assert ngi_forge.manifest("packages/pkgs.hello").status == 200


def test_an_app_bundle_is_served_from_its_closure(ngi_forge: ForgeProcess) -> None:
    config = config_of(ngi_forge, "apps.hello:latest")
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-hello-app/bin/hello", config["config"]["Entrypoint"][0])


def test_a_dotted_name_is_one_attribute_never_a_path(ngi_forge: ForgeProcess) -> None:
    # `pkgs.nothing` is looked up as the one attribute "pkgs.nothing", not as pkgs → nothing.
    assert not_found(ngi_forge, "pkgs.nothing")["code"] == "NAME_UNKNOWN"
    assert not_found(ngi_forge, "pkgs")["code"] == "NAME_UNKNOWN"


def test_the_catalog_lists_dotted_names_as_they_are_pulled(ngi_forge: ForgeProcess) -> None:
    listed = ngi_forge.get("/v2/_catalog").json()["repositories"]
    assert {"apps.hello", "apps.hello.container", "pkgs.hello"} <= set(listed)
    assert set(listed) <= {"apps.hello", "apps.hello.container", "pkgs.hello", "packages/pkgs.hello"}


def test_the_catalog_lists_the_images_of_containers_with_entries(nix_forge: ForgeProcess) -> None:
    """Only shop's containers carry `entries`: its two images are listed; legacy's and escape's are not."""
    listed = set(nix_forge.get("/v2/_catalog").json()["repositories"])
    flake = {"hello", "greet", "shop", "legacy", "nocontainers", "escape",
             "applications/shop/web", "applications/shop/broken"}
    assert flake <= listed
    assert {name for name in listed - flake if not name.startswith(("packages/", "applications/legacy/",
                                                                      "applications/escape/",
                                                                      "applications/nocontainers/"))} == set()
