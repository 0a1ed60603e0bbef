"""Repository names map to flake attributes; tags map to git refs of the flake."""

import pytest

from nixforge.errors import ManifestUnknown, NameUnknown
from nixforge.images.targets import BuildTarget, attribute_path, flake_ref_for, is_immutable, target_for


@pytest.mark.parametrize("name, target", [
    ("hello", BuildTarget("hello", "package", "hello")),
    ("packages/geos-github", BuildTarget("packages/geos-github", "package", "geos-github")),
    ("applications/web-app/web", BuildTarget("applications/web-app/web", "application", "web-app", "web.tar.gz")),
    ("pkgs.offen", BuildTarget("pkgs.offen", "package", "pkgs.offen")),
    ("packages/python3.11", BuildTarget("packages/python3.11", "package", "python3.11")),
    # Nix is asked, and its one probe tells that the flake's `packages` attrset is no package.
    ("packages/packages", BuildTarget("packages/packages", "package", "packages")),
])
def test_names_map_to_attributes(name: str, target: BuildTarget) -> None:
    assert target_for(name) == target


@pytest.mark.parametrize("name, path, image_path", [
    ("hello", "hello", "hello.image"),
    ("pkgs.offen", '"pkgs.offen"', '"pkgs.offen".image'),
    ("apps.my-app.container", '"apps.my-app.container"', '"apps.my-app.container".image'),
])
def test_dotted_names_are_quoted_attribute_names(name: str, path: str, image_path: str) -> None:
    target = target_for(name)
    assert (target.path(), target.path("image")) == (path, image_path)


def test_one_application_image_is_an_entry_of_its_containers() -> None:
    target = target_for("applications/my.app/web.v2")
    assert target.entry_path() == '"my.app".containers.entries."web.v2.tar.gz"'
    assert target.path("containers") == '"my.app".containers'


@pytest.mark.parametrize("name", ['a"b', "a.b\\", "a b", "${x}", "", "a..b", ".a", 'x".image."y'])
def test_attribute_paths_refuse_names_that_could_carry_quotes(name: str) -> None:
    with pytest.raises(ValueError):
        attribute_path("ok", name)


@pytest.mark.parametrize("name", ["a/b", "packages/a/b", "applications/app", "library/hello",
                                  "packages", "applications"])
def test_other_names_are_unknown(name: str) -> None:
    with pytest.raises(NameUnknown):
        target_for(name)


@pytest.mark.parametrize("flake, tag, ref", [
    ("github:o/r", "latest", "github:o/r"),
    ("github:o/r", "v1.2", "github:o/r/v1.2"),
    ("github:o/r/main", "dev", "github:o/r/dev"),
    ("github:o/r?dir=sub", "v1", "github:o/r/v1?dir=sub"),
    ("gitlab:o/r", "main", "gitlab:o/r/main"),
    ("git+https://example.org/r.git", "main", "git+https://example.org/r.git?ref=main"),
    ("git+https://example.org/r.git?ref=x", "a" * 40, "git+https://example.org/r.git?rev=" + "a" * 40),
    ("path:/srv/flake", "latest", "path:/srv/flake"),
])
def test_tags_map_to_flake_refs(flake: str, tag: str, ref: str) -> None:
    assert flake_ref_for(flake, tag) == ref


def test_only_latest_exists_for_other_flakes() -> None:
    with pytest.raises(ManifestUnknown):
        flake_ref_for("path:/srv/flake", "v1")


def test_commit_tags_are_immutable() -> None:
    assert is_immutable("0123456789abcdef0123456789abcdef01234567")
    assert not is_immutable("latest")
    assert not is_immutable("0123456")
