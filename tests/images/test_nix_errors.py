"""Nix's failures as the registry's errors (`mapped`), and a failure naming its system (`for_system`)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import ensureDeferred

from nixforge.api.errors import error_response
from nixforge.errors import (
    BuildFailed,
    BuildTimedOut,
    ForgeError,
    ManifestUnknown,
    NameUnknown,
    NoBuilder,
    TooManyBuilds,
)
from nixforge.images.nix_errors import for_system, mapped
from nixforge.nix.client import NixAttributeMissing, NixError, NixNoBuilder, NixRefUnknown, NixTimeout

from .fakes import result_of


def raising(error: Exception) -> Any:
    async def step() -> None:
        raise error
    return step


def mapped_failure(error: Exception, tag: str = "latest") -> Any:
    return result_of(ensureDeferred(mapped(raising(error), "hello", "github:o/r", tag, 60.0)))


@pytest.mark.parametrize("error, tag, expected, detail", [
    (NixAttributeMissing("does not provide attribute"), "latest", NameUnknown,
     {"name": "hello", "flake": "github:o/r"}),
    (NixRefUnknown("cannot find Git revision", 1, ["git"]), "v9", ManifestUnknown,
     {"tag": "v9", "flake": "github:o/r"}),
    (NixRefUnknown("unable to download", 1, ["HTTP 503"]), "latest", BuildFailed,
     {"flake": "github:o/r", "log": ["HTTP 503"]}),
    (NixTimeout("killed", timeout=60.0, log_tail=["sleeping"]), "latest", BuildTimedOut,
     {"log": ["sleeping", "killed after the 60 s build timeout"]}),
    (NixError("builder failed", 1, ["deliberate"]), "latest", BuildFailed,
     {"error": "builder failed", "log": ["deliberate"]}),
])
def test_nix_failures_become_registry_errors(error: Exception, tag: str, expected: type, detail: dict) -> None:
    failure = mapped_failure(error, tag)
    assert failure.check(expected) and failure.value.detail == detail
    assert failure.value.__cause__ is error


def test_no_builder_is_503_unavailable_with_nix_s_refusal_and_retry_after() -> None:
    refusal = "error: unable to start any build; either increase '--max-jobs' or enable remote builds."
    failure = mapped_failure(NixNoBuilder(refusal, 1, ["evaluating"]))
    assert failure.check(NoBuilder) and not failure.check(BuildFailed)  # not remembered as a failed build
    assert failure.value.detail == {"error": refusal, "log": ["evaluating"]}
    response = error_response(failure.value)
    assert response is not None
    assert (response.status, response.code, response.headers) == (503, "UNAVAILABLE", {"Retry-After": "30"})
    assert "no builder" in response.message


def test_registry_errors_and_results_pass_through() -> None:
    busy = TooManyBuilds("busy", retry_after=3)
    assert mapped_failure(busy).value is busy

    async def answer() -> int:
        return 7

    assert result_of(ensureDeferred(mapped(answer, "hello", "github:o/r", "latest", 60.0))) == 7


def test_a_failure_for_a_system_names_it_and_leaves_the_original_alone() -> None:
    original = BuildFailed("nix build failed", {"log": ["x"]})

    async def failing() -> None:
        raise original

    failure = result_of(ensureDeferred(for_system("aarch64-linux", failing())))
    named = failure.value
    assert isinstance(named, BuildFailed) and named is not original
    assert named.message == "nix build failed (system aarch64-linux)" and str(named) == named.message
    assert named.detail == {"log": ["x"], "system": "aarch64-linux"}
    assert (original.message, original.detail) == ("nix build failed", {"log": ["x"]})


def test_without_a_system_the_error_is_untouched() -> None:
    original = NameUnknown("no such package", "plain detail")

    async def failing() -> None:
        raise original

    assert result_of(ensureDeferred(for_system(None, failing()))).value is original
    wrapped = result_of(ensureDeferred(for_system("x86_64-linux", failing()))).value
    assert isinstance(wrapped, ForgeError) and wrapped.detail == {"detail": "plain detail", "system": "x86_64-linux"}
