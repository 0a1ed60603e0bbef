"""Nix command lines (argv lists) and parsers for their JSON output, for Nix 2.8 and newer."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from attrs import frozen

STORE_PREFIX = "/nix/store/"

# `-L` must come before `--log-format`: in Nix 2.8 `-L` itself selects a log format.
_LOG_FLAGS = ("-L", "--log-format", "internal-json")


class OutputInvalid(ValueError):
    """Nix exited successfully but printed something we cannot use."""


@frozen
class StorePathInfo:
    """One store path of a closure: its NAR size, the store paths it references, and its NAR hash.

    `nar_hash` is as Nix prints it (`sha256:<base32>` in 2.8, SRI `sha256-<base64>` in newer Nix);
    empty when Nix printed none.
    """

    path: str
    nar_size: int
    references: tuple[str, ...]
    nar_hash: str = ""
    deriver: str | None = None


# nixforge can't work without these; turning them on here lets a stock nix.conf work.
EXPERIMENTAL_FEATURES = ("--extra-experimental-features", "nix-command flakes")


@frozen
class NixSettings:
    """What every nix command line carries: `--option NAME VALUE` pairs, and flake-config trust."""

    options: tuple[tuple[str, str], ...] = ()
    accept_flake_config: bool = False

    def flags(self) -> list[str]:
        """The flags, in order: features, `--accept-flake-config`, logging, then the options."""
        flags = [*EXPERIMENTAL_FEATURES]
        if self.accept_flake_config:
            flags.append("--accept-flake-config")
        flags += _LOG_FLAGS
        for name, value in self.options:
            flags += ["--option", name, value]
        return flags


# One flake attribute name: a component of the OCI name grammar, dots included. It can hold no quote,
# backslash, `$` or space, so quoting it (`"pkgs.offen"`, which Nix 2.8 accepts in installables)
# can't change what the attribute path means.
ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")


def attribute_path(*names: str) -> str:
    """Join attribute names into a Nix attribute path, quoting each name that holds a dot.

    `attribute_path("app", "containers", "entries", "web.tar.gz")` is
    `app.containers.entries."web.tar.gz"`. Every name is checked against the grammar again here,
    whoever validated it before: a path is only ever made of names that can't carry a quote.
    """
    parts = []
    for name in names:
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise ValueError(f"not a safe attribute name: {name!r}")
        parts.append(f'"{name}"' if "." in name else name)
    return ".".join(parts)


def installable(flake_ref: str, *names: str) -> str:
    """`FLAKE_REF#ATTRIBUTE.PATH`: the one place a flake installable is made (names as `attribute_path`)."""
    if "#" in flake_ref:
        raise ValueError(f"a flake reference holds no '#': {flake_ref!r}")
    return f"{flake_ref}#{attribute_path(*names)}"


def _command(nix: str, words: Sequence[str], settings: NixSettings, target: str) -> list[str]:
    """The one shape of every command: `nix WORDS... FLAGS... -- TARGET` (TARGET never read as a flag)."""
    return [nix, *words, *settings.flags(), "--", target]


_DEFAULT = NixSettings()


def build_argv(
    nix: str, installable: str, settings: NixSettings = _DEFAULT, out_link: str | None = None
) -> list[str]:
    """`nix build --json --no-link FLAGS -- INSTALLABLE`, or `--out-link OUT_LINK` to hold a GC root.

    With `--out-link LINK` Nix 2.8 makes `LINK` for the `out` output and `LINK-<output>` for the
    others, each an indirect GC root until the link is removed.
    """
    link = ["--out-link", out_link] if out_link is not None else ["--no-link"]
    return _command(nix, ["build", "--json", *link], settings, installable)


def eval_argv(nix: str, installable: str, apply: str | None = None, settings: NixSettings = _DEFAULT) -> list[str]:
    """`nix eval --json [--apply EXPR] FLAGS -- INSTALLABLE`."""
    apply_flags = ["--apply", apply] if apply is not None else []
    return _command(nix, ["eval", "--json", *apply_flags], settings, installable)


def path_info_argv(nix: str, path: str, settings: NixSettings = _DEFAULT, recursive: bool = True) -> list[str]:
    """`nix path-info [-r] --json FLAGS -- PATH`."""
    return _command(nix, ["path-info", *(["-r"] if recursive else []), "--json"], settings, path)


def dump_path_argv(nix: str, path: str, settings: NixSettings = _DEFAULT) -> list[str]:
    """`nix store dump-path FLAGS -- PATH`: the NAR serialisation of PATH on stdout."""
    return _command(nix, ["store", "dump-path"], settings, path)


def metadata_argv(
    nix: str, flake_ref: str, settings: NixSettings = _DEFAULT, refresh: bool = False
) -> list[str]:
    """`nix flake metadata --json [--refresh] FLAGS -- FLAKE_REF`.

    `--refresh` makes Nix fetch again whatever it downloaded before, so its `tarball-ttl` cannot hide
    a branch that moved.
    """
    words = ["flake", "metadata", "--json", *(["--refresh"] if refresh else [])]
    return _command(nix, words, settings, flake_ref)


def parse_metadata_output(stdout: bytes) -> dict[str, object]:
    """Decode `nix flake metadata --json` output: an object with `url`, `locked`, `revision`, …"""
    document = _load(stdout)
    if not isinstance(document, dict):
        raise OutputInvalid("nix flake metadata did not print a JSON object")
    return document


def _load(stdout: bytes) -> object:
    try:
        return json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise OutputInvalid(f"nix printed invalid JSON: {e}") from e


def _store_path(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.startswith(STORE_PREFIX) or "/" in value[len(STORE_PREFIX) :]:
        raise OutputInvalid(f"{what} is not a store path: {value!r}")
    return value


def parse_eval_output(stdout: bytes) -> object:
    """The value printed by `nix eval --json`."""
    return _load(stdout)


def parse_build_output(stdout: bytes) -> list[str]:
    """Output paths from `nix build --json`: every output of every result, "out" first."""
    results = _load(stdout)
    if not isinstance(results, list):
        raise OutputInvalid("nix build --json did not print a list")
    paths: list[str] = []
    for result in results:
        outputs = result.get("outputs") if isinstance(result, dict) else None
        if not isinstance(outputs, dict):
            raise OutputInvalid("nix build --json printed a result without outputs")
        for name in sorted(outputs, key=lambda name: (name != "out", name)):
            path = _store_path(outputs[name], f"output {name!r}")
            if path not in paths:
                paths.append(path)
    if not paths:
        raise OutputInvalid("nix build --json printed no output paths")
    return paths


def _path_info(path: object, info: object) -> StorePathInfo:
    checked = _store_path(path, "path-info entry")
    if not isinstance(info, dict) or info.get("valid") is False:
        raise OutputInvalid(f"{checked} is not a valid store path")
    nar_size = info.get("narSize")
    references = info.get("references", [])
    if not isinstance(nar_size, int) or isinstance(nar_size, bool) or nar_size < 0:
        raise OutputInvalid(f"{checked} has no valid narSize")
    if not isinstance(references, list):
        raise OutputInvalid(f"{checked} has no valid references")
    nar_hash = info.get("narHash", "")
    if not isinstance(nar_hash, str):
        raise OutputInvalid(f"{checked} has no valid narHash")
    deriver = info.get("deriver")
    return StorePathInfo(
        path=checked,
        nar_size=nar_size,
        references=tuple(_store_path(ref, f"reference of {checked}") for ref in references),
        nar_hash=nar_hash,
        deriver=deriver if isinstance(deriver, str) and deriver.startswith(STORE_PREFIX) else None,
    )


def parse_path_info(stdout: bytes) -> list[StorePathInfo]:
    """Closure from `nix path-info -r --json`: a list with "path" (2.8) or a dict keyed by path (newer)."""
    document = _load(stdout)
    if isinstance(document, list):
        infos = [_path_info(entry.get("path") if isinstance(entry, dict) else None, entry) for entry in document]
    elif isinstance(document, dict):
        infos = [_path_info(path, info) for path, info in document.items()]
    else:
        raise OutputInvalid("nix path-info --json printed neither a list nor an object")
    if not infos:
        raise OutputInvalid("nix path-info --json printed an empty closure")
    return infos
