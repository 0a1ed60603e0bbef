"""ReadinessCheck: the data dir probe and `nix --version`, cached, joined while running, scrubbed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock

from nixforge.errors import StoreUnavailable
from nixforge.readiness import NOT_CHECKED, ReadinessCheck, ReadinessService


def in_caller(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


class FakeNix:
    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[Deferred[str]] = []
        self.error: Exception | None = None

    def version(self) -> Deferred[str]:
        self.calls += 1
        if self.error is not None:
            return fail(self.error)
        waiting: Deferred[str] = Deferred()
        self.pending.append(waiting)
        return waiting


def test_ready_when_writable_and_nix_runs(tmp_path: Path) -> None:
    nix = FakeNix()
    check = ReadinessCheck(str(tmp_path), in_caller, nix.version)
    assert check.current is NOT_CHECKED and not check.current.ready
    done = check.check()
    assert check.check() is done  # joined, no second process
    assert nix.calls == 1
    nix.pending[0].callback("nix (Nix) 2.8.0")
    assert check.current.ready
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_problems_are_reported_and_scrubbed(tmp_path: Path) -> None:
    nix = FakeNix()
    nix.error = OSError(2, "No such file or directory: /home/secret/bin/nix")
    check = ReadinessCheck(str(tmp_path / "missing"), in_caller, nix.version)
    check.check()
    state = check.current
    assert state.checked and not state.ready
    assert [problem.split(":")[0] for problem in state.problems] == ["data dir not writable", "nix does not run"]
    assert "/home/secret" not in " ".join(state.problems)


def test_recovers_on_the_next_check(tmp_path: Path) -> None:
    nix = FakeNix()
    nix.error = RuntimeError("nix --version failed")
    check = ReadinessCheck(str(tmp_path), in_caller, nix.version)
    check.check()
    assert not check.current.ready
    nix.error = None
    check.check()
    nix.pending[0].callback("nix (Nix) 2.8.0")
    assert check.current.ready


def test_the_service_checks_on_its_timer(tmp_path: Path) -> None:
    nix = FakeNix()
    nix.error = RuntimeError("down")
    clock = Clock()
    service = ReadinessService(ReadinessCheck(str(tmp_path), lambda f, *a: succeed(f(*a)), nix.version), 30, clock)
    service.startService()
    assert nix.calls == 1
    clock.advance(29)
    assert nix.calls == 1
    clock.advance(1)
    assert nix.calls == 2
    service.stopService()


def test_an_unreachable_store_is_named_and_recovery_needs_no_restart(tmp_path: Path) -> None:
    nix = FakeNix()
    down = [True]

    def probe() -> None:
        if down[0]:
            raise StoreUnavailable("the object store is unreachable; retry")

    check = ReadinessCheck(str(tmp_path), in_caller, nix.version, store_probe=probe, store_name="s3://bucket")
    check.check()
    nix.pending[0].callback("nix (Nix) 2.8.0")
    assert check.current.problems == ("store s3://bucket unreachable: the object store is unreachable; retry",)
    down[0] = False
    check.check()
    nix.pending[1].callback("nix (Nix) 2.8.0")
    assert check.current.ready
