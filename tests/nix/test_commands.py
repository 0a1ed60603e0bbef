"""Nix command lines and the parsers of their JSON output (Nix 2.8 and newer shapes)."""

from __future__ import annotations

import json

import pytest

from nixforge.nix.commands import (
    NixSettings,
    OutputInvalid,
    StorePathInfo,
    build_argv,
    dump_path_argv,
    eval_argv,
    metadata_argv,
    parse_build_output,
    parse_eval_output,
    parse_path_info,
    path_info_argv,
)

A = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
B = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"
C = "/nix/store/cccccccccccccccccccccccccccccccc-c"


def dump(value: object) -> bytes:
    return json.dumps(value).encode()


FEATURES = ["--extra-experimental-features", "nix-command flakes"]


def test_build_argv_with_an_out_link_holds_a_gc_root_instead_of_no_link() -> None:
    argv = build_argv("nix", "path:/f#hello", NixSettings(), out_link="/data/gcroots/build-1")
    assert argv[:5] == ["nix", "build", "--json", "--out-link", "/data/gcroots/build-1"]
    assert "--no-link" not in argv
    assert argv[-2:] == ["--", "path:/f#hello"]


def test_metadata_argv_refreshes_only_when_asked() -> None:
    assert "--refresh" not in metadata_argv("nix", "github:o/r")
    argv = metadata_argv("nix", "github:o/r/main", NixSettings(), refresh=True)
    assert argv[:5] == ["nix", "flake", "metadata", "--json", "--refresh"]
    assert argv[-2:] == ["--", "github:o/r/main"]


def test_build_argv() -> None:
    argv = build_argv("/bin/nix", "path:/f#hello", NixSettings((("sandbox", "true"), ("cores", "2"))))
    assert argv == [
        "/bin/nix", "build", "--json", "--no-link", *FEATURES, "-L", "--log-format", "internal-json",
        "--option", "sandbox", "true", "--option", "cores", "2", "--", "path:/f#hello",
    ]  # fmt: skip


def test_every_command_turns_on_nix_command_and_flakes_as_one_argument() -> None:
    for argv in (build_argv("nix", "x"), eval_argv("nix", "x"), path_info_argv("nix", A), metadata_argv("nix", "x")):
        at = argv.index("--extra-experimental-features")
        assert argv[at + 1] == "nix-command flakes"
        assert "--accept-flake-config" not in argv


def test_accept_flake_config_is_passed_when_on() -> None:
    settings = NixSettings(accept_flake_config=True)
    for argv in (build_argv("nix", "x", settings), eval_argv("nix", "x", None, settings),
                 path_info_argv("nix", A, settings), metadata_argv("nix", "x", settings)):
        assert argv.count("--accept-flake-config") == 1
        assert argv.index("--accept-flake-config") < argv.index("--")


def test_log_format_comes_after_print_build_logs() -> None:
    # In Nix 2.8 `-L` selects the bar-with-logs format, so it must not follow --log-format.
    for argv in (build_argv("nix", "x"), eval_argv("nix", "x"), path_info_argv("nix", A)):
        assert argv.index("-L") < argv.index("--log-format")
        assert argv[-2:] == ["--", argv[-1]]


def test_eval_argv_with_and_without_apply() -> None:
    assert eval_argv("nix", "path:/f#x", "x: x.name") == [
        "nix", "eval", "--json", "--apply", "x: x.name", *FEATURES, "-L", "--log-format", "internal-json",
        "--", "path:/f#x",
    ]  # fmt: skip
    assert "--apply" not in eval_argv("nix", "path:/f#x")


def test_path_info_argv() -> None:
    assert path_info_argv("nix", A, NixSettings((("store", "/s"),))) == [
        "nix", "path-info", "-r", "--json", *FEATURES, "-L", "--log-format", "internal-json", "--option", "store", "/s",
        "--", A,
    ]  # fmt: skip


def test_parse_build_output_nix_2_8() -> None:
    stdout = dump([{"drvPath": A + ".drv", "outputs": {"out": A}}])
    assert parse_build_output(stdout) == [A]


def test_parse_build_output_puts_out_first_then_by_name() -> None:
    stdout = dump([{"drvPath": "/nix/store/x.drv", "outputs": {"man": C, "dev": B, "out": A}}])
    assert parse_build_output(stdout) == [A, B, C]


def test_parse_build_output_newer_nix_with_several_results() -> None:
    stdout = dump(
        [
            {"drvPath": "/nix/store/x.drv", "outputs": {"out": A}, "startTime": 0, "stopTime": 1},
            {"drvPath": "/nix/store/y.drv", "outputs": {"out": B}},
        ]
    )
    assert parse_build_output(stdout) == [A, B]


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"not json",
        dump({"outputs": {"out": A}}),
        dump([]),
        dump([{"drvPath": "x"}]),
        dump([{"outputs": {"out": "/tmp/evil"}}]),
        dump([{"outputs": {"out": "/nix/store/../etc"}}]),
        dump([{"outputs": {"out": None}}]),
        b"\xff\xfe",
    ],
)
def test_parse_build_output_rejects_bad_output(stdout: bytes) -> None:
    with pytest.raises(OutputInvalid):
        parse_build_output(stdout)


def test_parse_path_info_nix_2_8_list() -> None:
    stdout = dump(
        [
            {"path": A, "narHash": "sha256-x", "narSize": 120, "references": [A, B], "deriver": "/nix/store/d"},
            {"path": B, "narHash": "sha256-y", "narSize": 7, "references": []},
        ]
    )
    assert parse_path_info(stdout) == [
        StorePathInfo(path=A, nar_size=120, references=(A, B), nar_hash="sha256-x", deriver="/nix/store/d"),
        StorePathInfo(path=B, nar_size=7, references=(), nar_hash="sha256-y"),
    ]


def test_parse_path_info_newer_nix_dict() -> None:
    stdout = dump(
        {
            A: {"narHash": "sha256-x", "narSize": 120, "references": [B], "ca": None},
            B: {"narHash": "sha256-y", "narSize": 7, "references": []},
        }
    )
    assert parse_path_info(stdout) == [
        StorePathInfo(path=A, nar_size=120, references=(B,), nar_hash="sha256-x"),
        StorePathInfo(path=B, nar_size=7, references=(), nar_hash="sha256-y"),
    ]


@pytest.mark.parametrize(
    "document",
    [
        {A: None},
        [{"path": A, "valid": False}],
        [{"narSize": 1, "references": []}],
        [{"path": A, "narSize": "1", "references": []}],
        [{"path": A, "narSize": 1, "references": "x"}],
        [{"path": A, "narSize": 1, "references": ["/etc/passwd"]}],
        [{"path": A, "narSize": 1, "references": [], "narHash": 7}],
        [],
        "x",
    ],
)
def test_parse_path_info_rejects_bad_output(document: object) -> None:
    with pytest.raises(OutputInvalid):
        parse_path_info(dump(document))


def test_parse_eval_output() -> None:
    assert parse_eval_output(b'{"a": [1, "{x}"]}') == {"a": [1, "{x}"]}
    with pytest.raises(OutputInvalid):
        parse_eval_output(b"{")


def test_path_info_and_dump_path_argv() -> None:
    assert path_info_argv("nix", A, recursive=False)[1:3] == ["path-info", "--json"]
    assert path_info_argv("nix", A)[1:4] == ["path-info", "-r", "--json"]
    argv = dump_path_argv("nix", A)
    assert argv[:3] == ["nix", "store", "dump-path"] and argv[-2:] == ["--", A]
