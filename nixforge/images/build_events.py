"""What a build tells whoever watches: started, phase, log line, finished (an observer TagBuilds calls).

Log lines reach the observer through a `lines` callable that TagBuilds hands to the builder, which
hands it to every Nix command of the build.
"""

from __future__ import annotations

from attrs import define, frozen
from zope.interface import Interface, implementer

PHASES = ("plan", "queued", "build")
OUTCOMES = ("success", "failure", "timeout")


@frozen
class BuildStart:
    """A build that starts: its id, image, and the revision it was locked to."""

    id: str
    name: str
    tag: str
    locked: str
    revision: str | None
    started: float
    plan_seconds: float


class IBuildObserver(Interface):
    """Told about every build the image service runs; called on the reactor thread, must not block."""

    def build_started(start: BuildStart) -> None:
        """A build was planned (in `plan_seconds`) and now waits for a build slot (phase `queued`)."""

    def build_phase(build_id: str, phase: str, at: float) -> None:
        """The build entered `phase` (`build`: it holds a build slot) at time `at`."""

    def build_line(build_id: str, line: str) -> None:
        """One line of the build's log (not yet scrubbed)."""

    def build_finished(build_id: str, outcome: str, finished: float, error: str | None) -> None:
        """The build ended: `success`, `failure` or `timeout`, with the error message when it failed."""


@implementer(IBuildObserver)
class NoBuildObserver:
    """Nobody is watching."""

    def build_started(self, start: BuildStart) -> None:
        """Ignore."""

    def build_phase(self, build_id: str, phase: str, at: float) -> None:
        """Ignore."""

    def build_line(self, build_id: str, line: str) -> None:
        """Ignore."""

    def build_finished(self, build_id: str, outcome: str, finished: float, error: str | None) -> None:
        """Ignore."""


@implementer(IBuildObserver)
@define(eq=False)
class BuildObservers:
    """Tell several observers, in order."""

    observers: tuple[object, ...]

    def build_started(self, start: BuildStart) -> None:
        """Tell each."""
        for observer in self.observers:
            observer.build_started(start)  # type: ignore[attr-defined]

    def build_phase(self, build_id: str, phase: str, at: float) -> None:
        """Tell each."""
        for observer in self.observers:
            observer.build_phase(build_id, phase, at)  # type: ignore[attr-defined]

    def build_line(self, build_id: str, line: str) -> None:
        """Tell each."""
        for observer in self.observers:
            observer.build_line(build_id, line)  # type: ignore[attr-defined]

    def build_finished(self, build_id: str, outcome: str, finished: float, error: str | None) -> None:
        """Tell each."""
        for observer in self.observers:
            observer.build_finished(build_id, outcome, finished, error)  # type: ignore[attr-defined]
