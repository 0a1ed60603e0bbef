"""Memory under repetition: many thousands of each remembered answer keep a real twistd's RSS flat.

A remembered answer (a made-up name's NAME_UNKNOWN, a failed build's 500, a refused or unknown tag's
MANIFEST_UNKNOWN) was once raised again as the same exception object: every raise made its traceback
longer and kept each frame's locals (the request among them), some 14 KiB a request. `wrk` sends the
requests on keep-alive connections; RSS is read from /proc/<pid>/status between rounds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import ForgeProcess, require_tool, run_tool

MIB = 1024 * 1024
ROUNDS = 5
ROUND_SECONDS = 3
# After the first round (allocator arenas, caches and the access log's buffers warm up), RSS may still
# move a little; before the fix it grew by some 14 KiB a request, 80 MiB or more a round here.
FLAT = 20 * MIB
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ANSWERS = {
    "made-up name": ("/v2/zz-nope/manifests/latest", 404, "NAME_UNKNOWN"),
    "failed build": ("/v2/broken/manifests/latest", 500, "UNKNOWN"),
    "refused tag": (f"/v2/hello/manifests/{COMMIT}", 404, "MANIFEST_UNKNOWN"),
    "unknown tag": ("/v2/hello/manifests/no-such-tag", 404, "MANIFEST_UNKNOWN"),
}
REQUESTS = re.compile(r"(\d+) requests in")
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@pytest.fixture(scope="module")
def forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str) -> Iterator[ForgeProcess]:
    """One registry for every answer, remembering failed builds for the whole module."""
    work_dir = tmp_path_factory.mktemp("memory")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir, log_level="INFO",
                         extra_args=["--failure-ttl", "3600"]).start()
    yield forge
    forge.stop()


def hammer(forge: ForgeProcess, path: str, seconds: int) -> tuple[int, int]:
    """`wrk` GETs `path` on 16 keep-alive connections for `seconds`; return (requests, non-2xx answers)."""
    result = run_tool([require_tool("wrk"), "-t2", "-c16", f"-d{seconds}s", "--timeout", "30s",
                       "-H", "Accept: application/vnd.oci.image.manifest.v1+json", forge.url(path)],
                      timeout=seconds + 60)
    requests = REQUESTS.search(result.stdout)
    assert requests is not None, result.stdout
    errors = NON_2XX.search(result.stdout)
    return int(requests.group(1)), int(errors.group(1)) if errors else 0


def rss_over_rounds(forge: ForgeProcess, path: str, rounds: int = ROUNDS,
                    seconds: int = ROUND_SECONDS) -> tuple[list[int], int]:
    """RSS (bytes) before and after each round of `wrk` on `path`, and the requests sent in all."""
    samples, total = [forge.rss()], 0
    for _ in range(rounds):
        requests, errors = hammer(forge, path, seconds)
        assert errors == requests, f"{requests - errors} of {requests} requests of {path} were answered 2xx/3xx"
        total += requests
        samples.append(forge.rss())
    return samples, total


def report(what: str, samples: list[int], total: int) -> str:
    """A one-line record of a run, printed for the closing note (pytest -s shows it)."""
    figures = " -> ".join(f"{sample / MIB:.0f}" for sample in samples)
    return f"{what}: {total} requests, RSS MiB {figures}"


@pytest.mark.parametrize("what", list(ANSWERS))
def test_a_remembered_answer_repeated_keeps_rss_flat(forge: ForgeProcess, what: str) -> None:
    """Many thousands of one remembered answer: the same JSON error each time, and RSS stays flat."""
    path, status, code = ANSWERS[what]
    first = forge.get(path)
    assert (first.status, first.error_codes()) == (status, [code]), (first.body[:500], forge.log_tail())
    samples, total = rss_over_rounds(forge, path)
    print("\n" + report(what, samples, total))
    assert total >= 5000, f"only {total} requests of {path}: too few to show a leak"
    again = forge.get(path)
    assert (again.status, again.json()) == (first.status, first.json()), "the remembered answer changed"
    assert samples[-1] - samples[1] < FLAT, report(what, samples, total)
    log = Path(forge.work_dir / "twistd.log").read_text()
    assert "Unhandled" not in log and "Traceback" not in log, forge.log_tail()
