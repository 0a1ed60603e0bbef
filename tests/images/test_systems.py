"""NIXFORGE_SYSTEMS and SystemsBuilder: one lock, a probe and a build per system, the index, failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from twisted.internet.defer import fail

from nixforge.errors import BuildFailed, NameUnknown
from nixforge.images.builder import ImageBuilder
from nixforge.images.flake_locks import FlakeLock
from nixforge.images.planner import BuildPlan, Planner
from nixforge.images.systems import SystemsBuilder, SystemsPlan
from nixforge.images.targets import target_for
from nixforge.nix.client import LineSink, NixAttributeMissing, NixError
from nixforge.oci import media_types as mt
from nixforge.oci.image_index import platform_for
from nixforge.oci.referrers import subject_digest
from nixforge.platforms import host_system, parse_systems
from tests.images.test_builder import FakeNix, locks_for, make_builder, run
from tests.oci.archive_builders import Member, docker_archive_members, sample_layers, tar_bytes

SYSTEMS = ("x86_64-linux", "aarch64-linux")


def archive(path: Path, architecture: str) -> str:
    """A docker-archive whose config says `architecture`."""
    members = docker_archive_members(sample_layers())
    manifest, config = members[0], members[1]
    data = json.loads(config.data)
    data["architecture"] = architecture
    body = json.dumps(data).encode()
    name = hashlib.sha256(body).hexdigest() + ".json"
    listing = json.loads(manifest.data)
    listing[0]["Config"] = name
    members[0] = Member("manifest.json", json.dumps(listing).encode())
    members[1] = Member(name, body)
    path.write_bytes(tar_bytes(members, gzip_outer=True))
    return str(path)


def two_system_nix(tmp_path: Path, arm_architecture: str = "arm64") -> FakeNix:
    return FakeNix({
        "packages.x86_64-linux.hello.image": archive(tmp_path / "amd64.tar.gz", "amd64"),
        "packages.aarch64-linux.hello.image": archive(tmp_path / "arm64.tar.gz", arm_architecture),
    })


def systems_for(builder: ImageBuilder, systems: tuple[str, ...], host: str = "x86_64-linux") -> SystemsBuilder:
    """A SystemsBuilder over the builder's Nix, as assemble_images makes one."""
    return SystemsBuilder(Planner(builder.nix, builder.clock, builder.timeout), builder, systems, host)


def lock_of(builder: ImageBuilder, flake: str = "path:/f", tag: str = "latest") -> FlakeLock:
    """The flake locked at `tag` (one `nix flake metadata`), as TagBuilds locks it before planning."""
    return run(locks_for(builder, flake).lock(tag))


def test_parse_systems_validates_and_defaults_to_the_host() -> None:
    assert parse_systems("") == (host_system(),)
    assert parse_systems("x86_64-linux, aarch64-linux") == SYSTEMS
    for bad in ("x86_64", "X86_64-linux", "x86_64-linux,x86_64-linux", "mips-linux", "x86_64-darwin",
                "x86_64-linux;rm"):
        with pytest.raises(ValueError):
            parse_systems(bad)


@pytest.mark.parametrize(
    "system, platform",
    [("x86_64-linux", ("linux", "amd64", None)), ("aarch64-linux", ("linux", "arm64", "v8")),
     ("armv7l-linux", ("linux", "arm", "v7")), ("armv6l-linux", ("linux", "arm", "v6")),
     ("i686-linux", ("linux", "386", None)), ("powerpc64le-linux", ("linux", "ppc64le", None)),
     ("s390x-linux", ("linux", "s390x", None)), ("riscv64-linux", ("linux", "riscv64", None))],
)
def test_platforms_of_nix_systems(system: str, platform: tuple[str, str, str | None]) -> None:
    found = platform_for(system)
    assert (found.os, found.architecture, found.variant) == platform


def test_the_host_alone_plans_and_builds_as_before(tmp_path: Path) -> None:
    nix = FakeNix({"hello.image": archive(tmp_path / "a.tar.gz", "amd64")})
    builder, _ = make_builder(nix, tmp_path)
    systems = systems_for(builder, ("x86_64-linux",))
    plan = run(systems.plan(target_for("hello"), lock_of(builder), "latest"))
    assert isinstance(plan, BuildPlan) and plan.system is None
    manifests = run(systems.build(plan))
    assert manifests.oci.media_type == mt.OCI_MANIFEST and not manifests.is_index
    assert nix.asked[:3] == ["metadata --refresh path:/f", "eval path:/f?locked=1#hello",
                             "build path:/f?locked=1#hello.image"]


def test_two_systems_lock_once_and_make_an_index_of_both(tmp_path: Path) -> None:
    nix = two_system_nix(tmp_path)
    builder, store = make_builder(nix, tmp_path)
    systems = systems_for(builder, SYSTEMS)
    plan = run(systems.plan(target_for("hello"), lock_of(builder), "latest"))
    assert isinstance(plan, SystemsPlan) and plan.locked == "path:/f?locked=1"
    assert [p.system for p in plan.plans] == list(SYSTEMS)
    index = run(systems.build(plan))
    assert [ask for ask in nix.asked if ask.startswith(("metadata", "eval"))] == [
        "metadata --refresh path:/f",
        "eval path:/f?locked=1#packages.x86_64-linux.hello",
        "eval path:/f?locked=1#packages.aarch64-linux.hello",
    ]
    assert "build path:/f?locked=1#packages.aarch64-linux.hello.image" in nix.asked
    oci, docker = json.loads(index.oci.body), json.loads(index.docker.body)
    assert (oci["mediaType"], docker["mediaType"]) == (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST)
    assert [m["platform"] for m in oci["manifests"]] == [platform_for(s).as_json() for s in SYSTEMS]
    assert [m["digest"] for m in oci["manifests"]] == [member.oci.digest for member in index.members]
    assert [m["digest"] for m in docker["manifests"]] == [member.docker.digest for member in index.members]
    for document in (index.oci, index.docker, *index.related()):
        assert store.read(document.digest) == document.body  # every document is a stored blob
    assert index.host_image() is index.members[0]
    # each member has its SBOM artifacts, one per form
    for member in index.members:
        assert {subject_digest(a) for a in member.referrers} == {member.oci.digest, member.docker.digest}
    # the same inputs give the same index bytes
    again = run(systems_for(make_builder(two_system_nix(tmp_path), tmp_path)[0], SYSTEMS).build(plan))
    assert again.oci.body == index.oci.body and again.docker.body == index.docker.body


def test_the_host_member_is_the_hosts_system_wherever_it_is_listed(tmp_path: Path) -> None:
    builder, _ = make_builder(two_system_nix(tmp_path), tmp_path)
    systems = systems_for(builder, ("aarch64-linux", "x86_64-linux"))
    index = run(systems.build(run(systems.plan(target_for("hello"), lock_of(builder), "latest"))))
    assert index.host == 1
    assert json.loads(index.oci.body)["manifests"][1]["digest"] == index.host_image().oci.digest


def test_an_image_whose_config_names_another_platform_fails_naming_its_system(tmp_path: Path) -> None:
    builder, _ = make_builder(two_system_nix(tmp_path, arm_architecture="amd64"), tmp_path)
    systems = systems_for(builder, SYSTEMS)
    failure = run(systems.build(run(systems.plan(target_for("hello"), lock_of(builder), "latest"))))
    assert failure.check(BuildFailed)
    assert "aarch64-linux" in failure.value.message
    assert failure.value.detail["system"] == "aarch64-linux"


def test_a_system_whose_build_fails_fails_the_tag_and_names_the_system(tmp_path: Path) -> None:
    class ArmFails(FakeNix):
        def build(self, installable: str, timeout: float | None = None, out_link: str | None = None,
                  lines: LineSink = None) -> Any:
            if "aarch64-linux" in installable:
                return fail(NixError("a 'aarch64-linux' with features {} is required", 1, ["log line"]))
            return super().build(installable, timeout, out_link, lines)

    nix = ArmFails(two_system_nix(tmp_path).outputs)
    builder, _ = make_builder(nix, tmp_path)
    systems = systems_for(builder, SYSTEMS)
    failure = run(systems.build(run(systems.plan(target_for("hello"), lock_of(builder), "latest"))))
    assert failure.check(BuildFailed)
    assert failure.value.message == "nix build failed (system aarch64-linux)"
    assert failure.value.detail["system"] == "aarch64-linux" and failure.value.detail["log"] == ["log line"]


def test_a_package_missing_for_one_system_is_unknown_naming_it(tmp_path: Path) -> None:
    class NoArm(FakeNix):
        def eval_json(self, installable: str, apply: str | None = None, timeout: float | None = None,
                      lines: LineSink = None) -> Any:
            if "aarch64-linux" in installable:
                return fail(NixAttributeMissing("flake does not provide attribute"))
            return super().eval_json(installable, apply, timeout, lines)

    builder, _ = make_builder(NoArm({}), tmp_path)
    systems = systems_for(builder, SYSTEMS)
    failure = run(systems.plan(target_for("hello"), lock_of(builder), "latest"))
    assert failure.check(NameUnknown) and failure.value.detail["system"] == "aarch64-linux"


def test_an_application_member_is_under_packages_of_its_system(tmp_path: Path) -> None:
    plan = BuildPlan(target_for("applications/app1/web"), "latest", "path:/f", "path:/f", {}, system="aarch64-linux")
    assert plan.describe("containers") == "packages.aarch64-linux.app1.containers"
    assert plan.installable("containers") == "path:/f#packages.aarch64-linux.app1.containers"
    assert evolve(plan, system=None).describe("containers") == "app1.containers"
