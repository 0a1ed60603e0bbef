"""NixClient: build, evaluate and query closures with the nix CLI, without blocking the reactor."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from nixforge.nix.commands import (
    NixSettings,
    OutputInvalid,
    StorePathInfo,
    build_argv,
    eval_argv,
    metadata_argv,
    parse_build_output,
    parse_eval_output,
    parse_metadata_output,
    parse_path_info,
    path_info_argv,
)
from nixforge.nix.log_lines import NixLog, killed_tail
from nixforge.nix.process import (
    DEFAULT_KILL_GRACE,
    ProcessResult,
    RunningProcess,
    Signaller,
    find_setsid,
    spawn,
)

__all__ = [
    "NixAttributeMissing",
    "NixClient",
    "NixError",
    "NixNoBuilder",
    "NixRefUnknown",
    "NixTimeout",
    "StorePathInfo",
    "classify_failure",
]

log = Logger(namespace="nixforge.nix")

T = TypeVar("T")
LineSink = Callable[[str], None] | None


class NixError(Exception):
    """Nix failed; `log_tail` holds the last lines of its log."""

    def __init__(self, message: str, exit_code: int | None = None, log_tail: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.log_tail = list(log_tail)


class NixAttributeMissing(NixError):
    """The flake does not provide the attribute."""


class NixRefUnknown(NixError):
    """The flake ref (or its git ref) cannot be fetched or does not exist."""


class NixNoBuilder(NixError):
    """Nix could start no build: `max-jobs` is 0 and no remote builder (`builders`) can take it."""


class NixTimeout(NixError):
    """Nix ran longer than `timeout` seconds and was killed."""

    def __init__(
        self, message: str, timeout: float, exit_code: int | None = None, log_tail: Iterable[str] = ()
    ) -> None:
        super().__init__(message, exit_code, log_tail)
        self.timeout = timeout


_SHOW_TRACE_HINT = "(use '--show-trace'"
_BUILD_FAILED = re.compile(
    r"builder for '[^']*' failed|build of '[^']*' failed|cannot build derivation|"
    r"dependenc(?:y|ies) (?:couldn't|could not) be built|failed due to signal",
    re.IGNORECASE,
)
# Nix 2.8's worker, when `max-jobs = 0` and no machine of `builders` fits ("either increase '--max-jobs'
# or enable remote builds", or "remote machines may not have all required system features").
_NO_BUILDER = re.compile(r"unable to start any build", re.IGNORECASE)
_ATTRIBUTE_MISSING = re.compile(r"does not provide attribute", re.IGNORECASE)
_REF_UNKNOWN = re.compile(
    r"unable to download|cannot find git revision|does not exist|getting status of|cannot fetch|"
    r"program 'git' failed|couldn't find remote ref|unknown revision|cannot find flake|"
    r"does not contain a '/flake\.nix' file|does not appear to be a git repository|HTTP error 404",
    re.IGNORECASE,
)


def classify_failure(exit_code: int | None, errors: Sequence[str], log_tail: Sequence[str]) -> NixError:
    """Turn the error messages of a failed nix run into the matching NixError subclass.

    Only nix's own words count: quoted builder output (`> ...` lines) never decides the class.
    """
    lines = [line for line in errors if not line.lstrip().startswith(_SHOW_TRACE_HINT)]
    message = "\n".join(lines) or f"nix failed (exit code {exit_code})"
    own_words = "\n".join(line for line in lines if not line.lstrip().startswith(">"))
    kind: type[NixError] = NixError
    if _NO_BUILDER.search(own_words):
        kind = NixNoBuilder
    elif _BUILD_FAILED.search(own_words):
        kind = NixError
    elif _ATTRIBUTE_MISSING.search(own_words):
        kind = NixAttributeMissing
    elif _REF_UNKNOWN.search(own_words):
        kind = NixRefUnknown
    return kind(message, exit_code, log_tail)


@define(eq=False)
class NixClient:
    """Runs nix commands as child processes; each returns a Deferred and can time out or be stopped."""

    reactor: Any
    timeout: float
    nix_binary: str = "nix"
    options: tuple[tuple[str, str], ...] = ()
    accept_flake_config: bool = False
    log_tail_lines: int = 40
    kill_grace: float = DEFAULT_KILL_GRACE
    env: dict[str, str] = field(factory=dict)
    setsid: str | None = field(factory=find_setsid)
    signaller: Signaller = field(factory=Signaller)
    _running: set[RunningProcess] = field(factory=set, init=False)

    @property
    def settings(self) -> NixSettings:
        """The flags every command of this client carries."""
        return NixSettings(self.options, self.accept_flake_config)

    # Every command takes an optional `timeout` (seconds) overriding the client's, so a caller can
    # give several commands one shared deadline, and an optional `lines`: a callable that gets each
    # human line of the command's log as it arrives (a build's live log).

    def build(
        self, installable: str, timeout: float | None = None, out_link: str | None = None, lines: LineSink = None
    ) -> Deferred[list[str]]:
        """Build `installable`; fire with its output store paths ("out" first).

        With `out_link`, Nix leaves GC roots there (`out_link`, `out_link-<output>`); the caller
        removes them.
        """
        argv = build_argv(self.nix_binary, installable, self.settings, out_link)
        return self._run(argv, parse_build_output, timeout, lines)

    def eval_json(
        self, installable: str, apply: str | None = None, timeout: float | None = None, lines: LineSink = None
    ) -> Deferred[object]:
        """Evaluate `installable` (through `apply` if given); fire with the decoded JSON value."""
        argv = eval_argv(self.nix_binary, installable, apply, self.settings)
        return self._run(argv, parse_eval_output, timeout, lines)

    def closure(self, path: str, timeout: float | None = None, lines: LineSink = None) -> Deferred[list[StorePathInfo]]:
        """Fire with every store path of the closure of `path`, with sizes and references."""
        return self._run(path_info_argv(self.nix_binary, path, self.settings), parse_path_info, timeout, lines)

    def path_info(self, path: str, timeout: float | None = None) -> Deferred[StorePathInfo]:
        """Fire with what Nix knows of the one store path `path` (hash, size, references, deriver)."""
        argv = path_info_argv(self.nix_binary, path, self.settings, recursive=False)
        return self._run(argv, lambda out: parse_path_info(out)[0], timeout)

    def metadata(
        self, flake_ref: str, timeout: float | None = None, refresh: bool = False, lines: LineSink = None
    ) -> Deferred[dict[str, object]]:
        """Fetch and lock `flake_ref`; fire with `nix flake metadata --json` (locked `url`, `revision`).

        `refresh` fetches again what Nix downloaded before (`--refresh`), whatever its tarball-ttl.
        """
        argv = metadata_argv(self.nix_binary, flake_ref, self.settings, refresh)
        return self._run(argv, parse_metadata_output, timeout, lines)

    def version(self, timeout: float = 30.0) -> Deferred[str]:
        """Run `nix --version`; fire with its first line (the readiness check: Nix runs)."""
        argv = [self.nix_binary, "--version"]
        return self._run(argv, lambda out: out.decode("utf-8", errors="replace").strip().splitlines()[0], timeout)

    def stop(self) -> Deferred[None]:
        """Terminate every running nix process group; fire once all of them have exited."""
        waits = [running.terminate() for running in list(self._running)]
        done: Deferred[Any] = DeferredList(waits, consumeErrors=True)
        return done.addCallback(lambda _: None)

    @property
    def running_pids(self) -> list[int]:
        """Process (and process group) ids of the nix processes running now."""
        return sorted(running.pid for running in self._running)

    def _run(
        self, argv: list[str], parse: Callable[[bytes], T], timeout: float | None = None, lines: LineSink = None
    ) -> Deferred[T]:
        """Spawn `argv`, log its stderr, and fire with `parse(stdout)` or fail with a NixError."""
        timeout = self.timeout if timeout is None else timeout
        command = f"nix {argv[1]}"
        nix_log = NixLog(tail_lines=self.log_tail_lines, command=command, sink=lines)
        log.debug("running {argv}", argv=" ".join(argv))
        try:
            running = spawn(
                self.reactor,
                argv,
                nix_log.feed,
                env=self.env,
                timeout=timeout,
                kill_grace=self.kill_grace,
                setsid=self.setsid,
                signaller=self.signaller,
            )
        except OSError as e:
            return fail(NixError(f"cannot start {argv[0]}: {e}"))
        self._running.add(running)
        result: Deferred[T] = Deferred(canceller=lambda _: running.terminate())

        def finished(outcome: ProcessResult) -> None:
            self._running.discard(running)
            log.debug(
                "{command} ended: exit code {code}, signal {signal}",
                command=command,
                code=outcome.exit_code,
                signal=outcome.signal,
            )
            if result.called:  # cancelled meanwhile
                return
            try:
                value = self._outcome(command, outcome, nix_log, parse, timeout)
            except Exception:
                result.errback(Failure())
            else:
                result.callback(value)

        running.when_finished().addCallback(finished)
        return result

    def _outcome(
        self, command: str, outcome: ProcessResult, nix_log: NixLog, parse: Callable[[bytes], T], timeout: float
    ) -> T:
        """Parse a finished run or raise the NixError that describes its failure."""
        tail = list(nix_log.tail)
        if outcome.timed_out:
            raise NixTimeout(f"{command} killed after {timeout:.1f} s, at its timeout", timeout,
                             outcome.exit_code, killed_tail(tail))
        if outcome.terminated:
            raise NixError(f"{command} was stopped", outcome.exit_code, killed_tail(tail))
        if outcome.exit_code != 0:
            raise classify_failure(outcome.exit_code, list(nix_log.errors), tail)
        try:
            return parse(outcome.stdout)
        except OutputInvalid as e:
            raise NixError(f"{command}: {e}", outcome.exit_code, tail) from e
