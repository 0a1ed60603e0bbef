"""The SPDX SBOM of a closure: valid by spdx-tools' own validator, complete, and deterministic."""

from __future__ import annotations

import json

import pytest
from spdx_tools.spdx.model import RelationshipType
from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from nixforge.nix.commands import StorePathInfo
from nixforge.oci.nar_hash import nar_hash_hex
from nixforge.oci.sbom import PackageFacts, created_at, spdx_id, spdx_sbom, split_name

TOP = "/nix/store/28gjjngwmzc10xby5f8czyia49mvxbr5-hello-2.12.1"
LIB = "/nix/store/d8d0368lzr7lvkwaimkr5rjbdbw4628m-glibc-2.38-27"
DATA = "/nix/store/ac5ggnhlq3cf8rbrwl1dlr5j0y3jcbp9-tzdata"
# The same hash as Nix 2.8 prints it (SRI), as older Nix did (base32), and in hex.
SRI = "sha256-1SY5fb0LaUX68LbumnmyKNJ13pxx6oSBAiRPfOrhylQ="
BASE32 = "sha256:0m6aw7m7qkr40a0q9skikkg7bli8n9wrmvmny3x4as8bpmykj9nm"
HEX = "d526397dbd0b6945faf0b6ee9a79b228d275de9c71ea848102244f7ceae1ca54"
CLOSURE = [
    StorePathInfo(TOP, 100, (TOP, LIB, DATA), SRI),
    StorePathInfo(LIB, 2000, (LIB,), "sha256-HQSV/PgXO9v7Qj5uQt71RduDHcAQxi0aEJPTEw2BpFQ="),
    StorePathInfo(DATA, 30, (), BASE32),
]
FACTS = PackageFacts(pname="hello", version="2.12.1", licenses=("GPL-3.0-or-later",), homepage="https://gnu.org/hello")


def parsed(document: bytes) -> object:
    return JsonLikeDictParser().parse(json.loads(document))


def test_nar_hashes_in_every_form_become_the_same_hex() -> None:
    assert nar_hash_hex(SRI) == nar_hash_hex(BASE32) == nar_hash_hex("sha256:" + HEX) == HEX


@pytest.mark.parametrize("bad", ["md5:abc", "sha256-AAAA", "sha256:" + "e" * 52, "sha256:zz", "sha512-" + "A" * 88])
def test_malformed_nar_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        nar_hash_hex(bad)


@pytest.mark.parametrize(
    "path, name, version",
    [(TOP, "hello", "2.12.1"), (LIB, "glibc", "2.38-27"), (DATA, "tzdata", None),
     ("/nix/store/ac5ggnhlq3cf8rbrwl1dlr5j0y3jcbp9-shared-lib", "shared-lib", None),
     ("/nix/store/ac5ggnhlq3cf8rbrwl1dlr5j0y3jcbp9-python3.11-attrs-23.1.0", "python3.11-attrs", "23.1.0")],
)
def test_store_path_names_split_as_nix_splits_them(path: str, name: str, version: str | None) -> None:
    assert split_name(path) == (name, version)


def test_the_document_is_valid_and_lists_every_path_hash_and_reference() -> None:
    document_bytes = spdx_sbom(CLOSURE, TOP, FACTS, "hello", created_at(1700000000))
    document = parsed(document_bytes)
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"
    assert document.creation_info.created.isoformat() == "2023-11-14T22:13:20"
    packages = {package.spdx_id: package for package in document.packages}
    assert set(packages) == {spdx_id(info.path) for info in CLOSURE}
    for info in CLOSURE:
        package = packages[spdx_id(info.path)]
        assert package.file_name == info.path
        [checksum] = package.checksums
        assert (checksum.algorithm.name, checksum.value) == ("SHA256", nar_hash_hex(info.nar_hash))
    top = packages[spdx_id(TOP)]
    assert (top.name, top.version, top.homepage) == ("hello", "2.12.1", "https://gnu.org/hello")
    assert str(top.license_declared) == "GPL-3.0-or-later"
    assert str(packages[spdx_id(LIB)].license_declared) == "NOASSERTION"
    relations = {(r.spdx_element_id, r.relationship_type, r.related_spdx_element_id) for r in document.relationships}
    expected = {("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, spdx_id(TOP))}
    expected |= {(spdx_id(TOP), RelationshipType.DEPENDS_ON, spdx_id(ref)) for ref in (LIB, DATA)}
    assert relations == expected  # self-references are not dependencies


def test_same_closure_same_bytes_and_a_content_derived_namespace() -> None:
    first = spdx_sbom(CLOSURE, TOP, FACTS, "hello", created_at(1700000000))
    assert spdx_sbom(list(reversed(CLOSURE)), TOP, FACTS, "hello", created_at(1700000000)) == first
    changed = [CLOSURE[0], CLOSURE[1], StorePathInfo(DATA, 30, (), "sha256:" + "1" * 64)]
    other = spdx_sbom(changed, TOP, FACTS, "hello", created_at(1700000000))
    assert other != first
    assert json.loads(other)["documentNamespace"] != json.loads(first)["documentNamespace"]


def test_no_revision_date_is_the_epoch_and_unknown_licenses_say_noassertion() -> None:
    facts = PackageFacts(licenses=("NotAnSpdxLicense",))
    document = parsed(spdx_sbom(CLOSURE, TOP, facts, "hello", created_at(None)))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.created.isoformat() == "1970-01-01T00:00:00"
    top = next(package for package in document.packages if package.spdx_id == spdx_id(TOP))
    assert (top.name, top.version, str(top.license_declared)) == ("hello", "2.12.1", "NOASSERTION")


def test_a_package_outside_its_closure_is_refused() -> None:
    with pytest.raises(ValueError):
        spdx_sbom(CLOSURE[1:], TOP, FACTS, "hello", created_at(0))
