"""NixClient against canned process output: results, failure classification, timeout, stop, cancel."""

from __future__ import annotations

import json
import signal

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from nixforge.nix.client import (
    NixAttributeMissing,
    NixClient,
    NixError,
    NixNoBuilder,
    NixRefUnknown,
    NixTimeout,
    StorePathInfo,
    classify_failure,
)
from tests.nix.conftest import FakeProcessReactor, RecordingSignaller

OUT = "/nix/store/9wjwqbgph9y45qk631kffpqsjh236qsb-ok-1"
DEP = "/nix/store/swykix5alnk3s6i3p2wmqpx4v6kkxlid-dep-1"


def msg(text: str, level: int = 0) -> bytes:
    return ("@nix " + json.dumps({"action": "msg", "level": level, "msg": text}) + "\n").encode()


def build_line(text: str) -> bytes:
    return ("@nix " + json.dumps({"action": "result", "type": 101, "id": 1, "fields": [text]}) + "\n").encode()


@pytest.fixture
def client(fake_reactor: FakeProcessReactor, signaller: RecordingSignaller) -> NixClient:
    return NixClient(
        fake_reactor,
        nix_binary="/usr/bin/nix",
        options=(("sandbox", "true"),),
        timeout=30,
        log_tail_lines=3,
        kill_grace=2,
        setsid="/usr/bin/setsid",
        signaller=signaller,
    )


def outcome(deferred: Deferred[object]) -> object:
    """The result or the Failure a Deferred has fired with (it must have fired)."""
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_build_runs_nix_build_and_returns_paths(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.build("path:/f#hello")
    (process,) = fake_reactor.processes
    assert process.args == [
        "/usr/bin/setsid", "/usr/bin/nix", "build", "--json", "--no-link",
        "--extra-experimental-features", "nix-command flakes", "-L", "--log-format",
        "internal-json", "--option", "sandbox", "true", "--", "path:/f#hello",
    ]  # fmt: skip
    assert client.running_pids == [process.protocol.transport.pid]
    process.stderr(build_line("compiling"))
    process.stdout(json.dumps([{"drvPath": OUT + ".drv", "outputs": {"dev": DEP, "out": OUT}}]).encode())
    assert not d.called
    process.exit(0)
    assert outcome(d) == [OUT, DEP]
    assert client.running_pids == []


def test_eval_json(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.eval_json("path:/f#hello", apply="x: x ? image")
    (process,) = fake_reactor.processes
    assert process.args[2:5] == ["eval", "--json", "--apply"]
    assert process.args[5] == "x: x ? image"
    process.stdout(b"true")
    process.exit(0)
    assert outcome(d) is True


def test_closure(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.closure(OUT)
    (process,) = fake_reactor.processes
    assert process.args[2:5] == ["path-info", "-r", "--json"]
    assert process.args[-1] == OUT
    process.stdout(json.dumps({OUT: {"narSize": 10, "references": [DEP]}, DEP: {"narSize": 5}}).encode())
    process.exit(0)
    assert outcome(d) == [StorePathInfo(OUT, 10, (DEP,)), StorePathInfo(DEP, 5, ())]


def test_attribute_missing(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.build("path:/f#nope")
    process = fake_reactor.processes[0]
    process.stderr(
        msg(
            "\x1b[31;1merror:\x1b[0m flake '\x1b[35;1mpath:/f\x1b[0m' does not provide attribute "
            "'packages.x86_64-linux.nope', 'legacyPackages.x86_64-linux.nope' or 'nope'"
        )
    )
    process.stderr(msg("(use '--show-trace' to show detailed location information)"))
    process.exit(1)
    failure = outcome(d)
    assert isinstance(failure, Failure)
    error = failure.value
    assert type(error) is NixAttributeMissing
    assert error.message.startswith("error: flake 'path:/f' does not provide attribute")
    assert "show-trace" not in error.message
    assert error.exit_code == 1


def test_failed_build_keeps_the_log_tail(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.build("path:/f#fail")
    process = fake_reactor.processes[0]
    for index in range(5):
        process.stderr(build_line(f"step {index}"))
    process.stderr(build_line("boom-marker"))
    process.stderr(msg("error: builder for '/nix/store/x-fail.drv' failed with exit code 1"))
    process.exit(1)
    error = outcome(d).value
    assert type(error) is NixError
    assert error.log_tail == [
        "step 4",
        "boom-marker",
        "error: builder for '/nix/store/x-fail.drv' failed with exit code 1",
    ]


def test_bad_stdout_is_a_nix_error(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    d = client.build("path:/f#x")
    fake_reactor.processes[0].stdout(b'[{"outputs": {"out": "/etc"}}]')
    fake_reactor.processes[0].exit(0)
    error = outcome(d).value
    assert type(error) is NixError
    assert "not a store path" in error.message


@pytest.mark.parametrize(
    ("errors", "kind"),
    [
        (["error: getting status of '/tmp/nodir': No such file or directory"], NixRefUnknown),
        (["error: Cannot find Git revision 'abc' in ref 'master' of repository '/r'! Please ..."], NixRefUnknown),
        (["error: unable to download 'https://api.github.com/repos/o/r/commits/v9': HTTP error 404"], NixRefUnknown),
        (["error: program 'git' failed with exit code 128"], NixRefUnknown),
        (["error: cannot find flake 'flake:nope' in the flake registries"], NixRefUnknown),
        (["error: path '/nix/store/x-source/sub' does not exist"], NixRefUnknown),
        (["error: flake 'path:/f' does not provide attribute 'x'"], NixAttributeMissing),
        (
            [
                "error: builder for '/nix/store/x.drv' failed with exit code 1;",
                "       last 1 log lines:",
                "       > cat: /data: does not exist",
            ],
            NixError,
        ),
        (["error: attribute 'foo' missing"], NixError),
        (
            [
                "error: unable to start any build; either increase '--max-jobs' or enable remote builds.",
                "       https://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html",
            ],
            NixNoBuilder,
        ),
        (["error: unable to start any build; remote machines may not have all required system features."],
         NixNoBuilder),
        (["error: builder for '/nix/store/x.drv' failed with exit code 1;", "       > unable to start any build"],
         NixError),
        (["error: program 'x' failed", "       > does not provide attribute 'y'"], NixError),
        ([], NixError),
    ],
)
def test_classify_failure(errors: list[str], kind: type[NixError]) -> None:
    error = classify_failure(1, errors, ["tail"])
    assert type(error) is kind
    assert error.log_tail == ["tail"]
    assert error.message == ("\n".join(errors) or "nix failed (exit code 1)")


def test_timeout_kills_the_group_and_fails_with_nix_timeout(
    client: NixClient, fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    d = client.build("path:/f#slow")
    process = fake_reactor.processes[0]
    pid = process.protocol.transport.pid
    process.stderr(build_line("sleeping"))
    process.stderr(b"error: interrupted by the user\n")
    fake_reactor.advance(30)
    assert signaller.sent == [("group", pid, signal.SIGTERM)]
    assert not d.called
    fake_reactor.advance(2)
    assert ("group", pid, signal.SIGKILL) in signaller.sent
    process.exit(sig=signal.SIGKILL)
    error = outcome(d).value
    assert type(error) is NixTimeout
    assert error.timeout == 30
    # Nix's own words for the TERM nixforge sent would mislead: the tail says what happened instead.
    assert error.log_tail == ["sleeping"]
    assert "killed after 30.0 s, at its timeout" in error.message


def test_stop_terminates_every_running_process(
    client: NixClient, fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    first = client.build("path:/f#a")
    second = client.eval_json("path:/f#b")
    stopped = client.stop()
    assert sorted(entry[1] for entry in signaller.sent) == client.running_pids
    assert {entry[2] for entry in signaller.sent} == {signal.SIGTERM}
    assert not stopped.called
    fake_reactor.processes[0].exit(1)
    assert not stopped.called
    fake_reactor.processes[1].exit(sig=signal.SIGTERM)
    assert outcome(stopped) is None
    for d in (first, second):
        error = outcome(d).value
        assert type(error) is NixError
        assert "was stopped" in error.message
    assert fake_reactor.getDelayedCalls() == []


def test_every_command_turns_on_the_features_and_trusts_flake_config_when_asked(
    fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    trusting = NixClient(fake_reactor, 60, accept_flake_config=True, setsid=None, signaller=signaller)
    plain = NixClient(fake_reactor, 60, setsid=None, signaller=signaller)
    for client in (trusting, plain):
        client.build("path:/f#a")
        client.eval_json("path:/f#b", apply="x: x")
        client.closure(OUT)
        client.metadata("path:/f")
    argvs = [process.args for process in fake_reactor.processes]
    assert len(argvs) == 8
    for argv in argvs:
        at = argv.index("--extra-experimental-features")
        assert argv[at + 1] == "nix-command flakes"
    assert ["--accept-flake-config" in argv for argv in argvs] == [True] * 4 + [False] * 4


def test_stop_with_nothing_running_fires_at_once(client: NixClient) -> None:
    assert outcome(client.stop()) is None


def test_cancel_terminates_the_process(
    client: NixClient, fake_reactor: FakeProcessReactor, signaller: RecordingSignaller
) -> None:
    d = client.build("path:/f#a")
    d.cancel()
    assert outcome(d).check(CancelledError)
    assert signaller.sent == [("group", fake_reactor.processes[0].protocol.transport.pid, signal.SIGTERM)]
    fake_reactor.processes[0].exit(sig=signal.SIGTERM)
    assert client.running_pids == []


def test_spawn_failure_is_a_nix_error(client: NixClient, fake_reactor: FakeProcessReactor) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no such file")

    fake_reactor.spawnProcess = refuse  # type: ignore[method-assign]
    error = outcome(client.build("path:/f#a")).value
    assert type(error) is NixError
    assert "cannot start /usr/bin/nix" in error.message


def test_defaults() -> None:
    """Everything but the timeout has a default; the timeout is the registry's setting, passed in."""
    client = NixClient(FakeProcessReactor(), 60)
    assert (client.nix_binary, client.options, client.timeout, client.log_tail_lines) == ("nix", (), 60, 40)
    with pytest.raises(TypeError):
        NixClient(FakeProcessReactor())  # type: ignore[call-arg]


def test_each_command_tells_its_own_log_lines_to_its_own_sink(
    client: NixClient, fake_reactor: FakeProcessReactor
) -> None:
    first: list[str] = []
    second: list[str] = []
    built = client.build("path:/f#hello", lines=first.append)
    locked = client.metadata("path:/f", lines=second.append)
    quiet = client.eval_json("path:/f#hello")  # no sink: its lines only reach the log
    build_process, metadata_process, eval_process = fake_reactor.processes
    build_process.stderr(build_line("compiling hello"))
    metadata_process.stderr(msg("fetching path input 'path:/f'"))
    eval_process.stderr(build_line("evaluating"))
    build_process.stderr(build_line("linking hello"))
    assert first == ["compiling hello", "linking hello"]
    assert second == ["fetching path input 'path:/f'"]
    for process, out in ((build_process, json.dumps([{"outputs": {"out": OUT}}])),
                         (metadata_process, '{"url": "path:/f?narHash=x"}'), (eval_process, "1")):
        process.stdout(out.encode())
        process.exit(0)
    assert outcome(built) == [OUT] and outcome(locked) == {"url": "path:/f?narHash=x"} and outcome(quiet) == 1
