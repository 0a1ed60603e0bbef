"""NixClient against the real nix binary (offline) on tiny flakes written to tmp_path."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import formatEvent

from nixforge.nix.client import NixAttributeMissing, NixClient, NixError, NixRefUnknown, NixTimeout
from tests.nix.conftest import LineObserver, derivation, living

MakeFlake = Callable[[dict[str, str]], str]


def sleep_marker(nonce: str) -> str:
    """A number GNU sleep accepts as an extra (tiny) duration, unique to this test run."""
    return f"0.000{int(nonce, 16)}"


@pytest.fixture
def client(reactor: Any) -> NixClient:
    return NixClient(reactor, timeout=120, kill_grace=3)


@pytest_twisted.inlineCallbacks
def test_build_returns_existing_out_path(client: NixClient, make_flake: MakeFlake, nonce: str) -> Any:
    flake = make_flake({"hello": derivation(f"hello-{nonce}", "echo built > $out")})
    paths = yield client.build(f"{flake}#hello")
    assert len(paths) == 1
    assert paths[0].startswith("/nix/store/")
    assert paths[0].endswith(f"-hello-{nonce}")
    assert Path(paths[0]).read_text() == "built\n"


@pytest_twisted.inlineCallbacks
def test_missing_attribute(client: NixClient, make_flake: MakeFlake, nonce: str) -> Any:
    flake = make_flake({"hello": derivation(f"hello-{nonce}", "echo > $out")})
    with pytest.raises(NixAttributeMissing) as caught:
        yield client.build(f"{flake}#nope")
    assert "does not provide attribute" in caught.value.message
    assert caught.value.exit_code == 1


@pytest_twisted.inlineCallbacks
def test_missing_flake_directory_is_an_unknown_ref(client: NixClient, tmp_path: Path, offline_nix: None) -> Any:
    with pytest.raises(NixRefUnknown) as caught:
        yield client.build(f"path:{tmp_path}/absent#hello")
    assert "absent" in caught.value.message


@pytest_twisted.inlineCallbacks
def test_unknown_git_revision_is_an_unknown_ref(
    client: NixClient, tmp_path: Path, offline_nix: None, nonce: str
) -> Any:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "flake.nix").write_text(
        f"{{ outputs = {{ self }}: {{ hello = {derivation(f'hello-{nonce}', 'echo > $out')}; }}; }}\n"
    )
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "flake.nix"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], check=True)
    with pytest.raises(NixRefUnknown):
        yield client.build(f"git+file://{repo}?rev={'0' * 40}#hello")
    paths = yield client.build(f"git+file://{repo}#hello")
    assert paths[0].endswith(f"-hello-{nonce}")


@pytest_twisted.inlineCallbacks
def test_failed_build_has_the_builder_output_in_its_tail(client: NixClient, make_flake: MakeFlake, nonce: str) -> Any:
    flake = make_flake({"fail": derivation(f"fail-{nonce}", "echo boom-marker; exit 1")})
    with pytest.raises(NixError) as caught:
        yield client.build(f"{flake}#fail")
    assert type(caught.value) is NixError
    assert any("boom-marker" in line for line in caught.value.log_tail)
    assert f"fail-{nonce}.drv" in caught.value.message


@pytest_twisted.inlineCallbacks
def test_build_lines_stream_before_the_build_ends(
    client: NixClient, make_flake: MakeFlake, nonce: str, nix_lines: LineObserver, reactor: Any
) -> Any:
    script = f"echo first-{nonce}; /bin/sleep 2; echo second-{nonce} {{x}} {{0}}; echo > $out"
    flake = make_flake({"slow": derivation(f"slow-{nonce}", script)})
    build = client.build(f"{flake}#slow")
    finished: list[float] = []
    build.addCallback(lambda paths: finished.append(reactor.seconds()) or paths)
    yield nix_lines.wait_for(f"first-{nonce}")
    assert finished == []
    first_at = reactor.seconds()
    yield build
    (second_at, second) = next((at, line) for at, line in nix_lines.lines if f"second-{nonce}" in line)
    assert second_at - first_at >= 1.5
    assert finished[0] >= second_at
    assert second.endswith(f"second-{nonce} {{x}} {{0}}")
    (event,) = [event for event in nix_lines.events if f"second-{nonce}" in event["line"]]
    assert formatEvent(event) == second


@pytest_twisted.inlineCallbacks
def test_timeout_kills_the_build_and_leaves_nothing_running(reactor: Any, make_flake: MakeFlake, nonce: str) -> Any:
    marker = sleep_marker(nonce)
    flake = make_flake({"sleeper": derivation(f"sleeper-{nonce}", f"echo zzz; /bin/sleep 60 {marker}")})
    client = NixClient(reactor, timeout=2, kill_grace=3)
    started = reactor.seconds()
    build = client.build(f"{flake}#sleeper")
    (pid,) = client.running_pids
    with pytest.raises(NixTimeout) as caught:
        yield build
    assert reactor.seconds() - started < 8
    assert caught.value.timeout == 2
    assert caught.value.log_tail  # Nix's own lines are kept, but not its "interrupted by the user"
    assert not any("interrupted by the user" in line for line in caught.value.log_tail)
    assert living(marker) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert client.running_pids == []


@pytest_twisted.inlineCallbacks
def test_stop_kills_a_running_build(
    client: NixClient, make_flake: MakeFlake, nonce: str, nix_lines: LineObserver, reactor: Any
) -> Any:
    marker = sleep_marker(nonce)
    flake = make_flake({"sleeper": derivation(f"sleeper-{nonce}", f"echo started-{nonce}; /bin/sleep 60 {marker}")})
    build = client.build(f"{flake}#sleeper")
    failures: list[Any] = []
    build.addErrback(failures.append)
    yield nix_lines.wait_for(f"started-{nonce}")
    assert living(marker) != []
    stopping_at = reactor.seconds()
    yield client.stop()
    assert reactor.seconds() - stopping_at < 3
    assert client.running_pids == []
    assert living(marker) == []
    assert len(failures) == 1
    assert type(failures[0].value) is NixError
    assert "was stopped" in failures[0].value.message


@pytest_twisted.inlineCallbacks
def test_closure_lists_references(client: NixClient, make_flake: MakeFlake, nonce: str) -> Any:
    dep = derivation(f"dep-{nonce}", "echo dep > $out")
    top = derivation(f"top-{nonce}", "echo $dep > $out", extra=f"dep = {dep};")
    flake = make_flake({"top": top})
    (top_path,) = yield client.build(f"{flake}#top")
    dep_path = Path(top_path).read_text().strip()
    infos = yield client.closure(top_path)
    by_path = {info.path: info for info in infos}
    assert set(by_path) == {top_path, dep_path}
    assert by_path[top_path].references == (dep_path,)
    assert by_path[dep_path].references == ()
    assert by_path[dep_path].nar_size > 0


@pytest_twisted.inlineCallbacks
def test_eval_json_with_apply(client: NixClient, make_flake: MakeFlake, nonce: str) -> Any:
    flake = make_flake({"hello": derivation(f"hello-{nonce}", "echo > $out")})
    name = yield client.eval_json(f"{flake}#hello.name")
    assert name == f"hello-{nonce}"
    applied = yield client.eval_json(f"{flake}#hello", apply='x: { n = x.name; b = "{x}"; }')
    assert applied == {"n": f"hello-{nonce}", "b": "{x}"}
    with pytest.raises(NixAttributeMissing):
        yield client.eval_json(f"{flake}#hello.image")


@pytest_twisted.inlineCallbacks
def test_quoted_attribute_names_with_dots_and_flake_config(
    reactor: Any, make_flake: MakeFlake, nonce: str
) -> Any:
    # Nix 2.8 reads `#"pkgs.hello"` as one attribute name and `entries."x.tar.gz"` likewise.
    hello = derivation(f"hello-{nonce}", "echo dotted > $out")
    flake = make_flake({
        '"pkgs.hello"': hello,
        "app": f'{{ containers = {{ entries = {{ "web.tar.gz" = {hello}; }}; }}; }}',
    })
    client = NixClient(reactor, timeout=120, kill_grace=3, accept_flake_config=True)
    (dotted,) = yield client.build(f'{flake}#"pkgs.hello"')
    (entry,) = yield client.build(f'{flake}#app.containers.entries."web.tar.gz"')
    assert dotted == entry
    assert Path(dotted).read_text() == "dotted\n"
    with pytest.raises(NixAttributeMissing):
        yield client.build(f"{flake}#pkgs.hello")
