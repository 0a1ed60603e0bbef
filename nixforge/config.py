"""ForgeConfig: every setting, read from environment variables and overridden by twistd options."""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from attrs import frozen

from nixforge.nix.signing import CacheKey, KeyInvalid
from nixforge.platforms import parse_systems
from nixforge.references import COMMIT_TAG_MODES, MAX_NAME_LENGTH, MAX_TAG_LENGTH
from nixforge.refresh_access import parse_refresh_from

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL")
DEFAULT_FLAKE = "github:imincik/flake-forge"
# overlayfs and the container runtimes refuse images with much more than 127 layers.
MAX_LAYER_BUDGET = 125
_NIX_OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*")
# A flake reference is passed to Nix as one argv entry; refuse what could be read as an option.
_FLAKE_REF = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s#]+|[./][^\s#]*")
# Glob characters plus what repository names (lower case, `/`) and tags (any case, no `/`) hold.
_NAME_GLOB = re.compile(r"[a-z0-9._/*?\[\]!-]+")
_TAG_GLOB = re.compile(r"[A-Za-z0-9._*?\[\]!-]+")


class ConfigError(ValueError):
    """A setting has a value nixforge cannot run with; the message is one line."""


def default_data_dir(environ: Mapping[str, str]) -> str:
    """Where blobs and the index live when NIXFORGE_DATA_DIR is not set.

    systemd's STATE_DIRECTORY (StateDirectory=nixforge) first, then the XDG data directory.
    """
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    xdg = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "nixforge")


def _endpoint_for(host: str, port: int, backlog: int) -> str:
    """The Twisted endpoint string that listens on `host`:`port` (colons escaped for IPv6)."""
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}:backlog={backlog}"


@frozen
class Setting:
    """One setting: its attribute, environment variable, twistd option, default and parser."""

    attribute: str
    variable: str
    option: str | None
    default: str
    parse: Callable[[str], Any]
    meaning: str


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value


def _blob_copy(text: str) -> str:
    word = text.strip().lower()
    if word not in ("auto", "read", "sendfile"):
        raise ValueError("must be auto, read or sendfile")
    return word


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _htpasswd(text: str) -> str:
    if text and not os.path.isfile(text):
        raise ValueError("must name an existing htpasswd file (htpasswd -B)")
    return os.path.abspath(text) if text else ""


def _cache_key_file(text: str) -> str:
    if not text:
        return ""
    try:
        CacheKey.load(text)
    except OSError as error:
        raise ValueError(f"cannot read it: {error.strerror or error}") from None
    except KeyInvalid as error:
        raise ValueError(str(error)) from None
    return os.path.abspath(text)


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return "WARN" if level == "WARNING" else level


def _flake(text: str) -> str:
    if not _FLAKE_REF.fullmatch(text):
        raise ValueError("must be a flake reference such as github:owner/repo or path:/abs/dir")
    return text


def _host(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", text):
        raise ValueError("must be a host name or IP address")
    return text


def _layer_budget(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise ValueError("must be at least 2 (the customisation layer and one closure layer)")
    if value > MAX_LAYER_BUDGET:
        raise ValueError(f"must be at most {MAX_LAYER_BUDGET} (overlayfs limit)")
    return value


def _optional_globs(pattern: re.Pattern[str], example: str) -> Callable[[str], tuple[str, ...]]:
    """Like `_globs`, but empty text is no glob at all."""
    parse = _globs(pattern, example)
    return lambda text: parse(text) if text.strip() else ()


def _globs(pattern: re.Pattern[str], example: str) -> Callable[[str], tuple[str, ...]]:
    """A parser of comma-separated globs, each made of the characters `pattern` allows."""
    def parse(text: str) -> tuple[str, ...]:
        globs = tuple(item.strip() for item in text.split(","))
        if not all(pattern.fullmatch(glob) for glob in globs):
            raise ValueError(f"must be comma-separated globs such as {example}")
        return globs
    return parse


def _commit_tags(text: str) -> str:
    mode = text.strip().lower()
    if mode not in COMMIT_TAG_MODES:
        raise ValueError(f"must be one of {', '.join(COMMIT_TAG_MODES)}")
    return mode


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _user(text: str) -> str:
    try:
        pwd.getpwnam(text)
    except KeyError:
        raise ValueError("no such user") from None
    return text


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("must be true or false (also 1/0, yes/no, on/off)")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int | None:
    """Bytes from `123`, `512K`, `20M`, `1.5G`, `2T` (1024 multiples; `B`/`iB` may follow); `none` → None."""
    value = text.strip().upper()
    if value in ("", "NONE"):
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", value)
    if match is None:
        raise ValueError("must be bytes with an optional K, M, G or T suffix (1024 multiples), or none")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size < 1:
        raise ValueError("must be at least one byte")
    return size


def _log_size(text: str) -> int:
    size = parse_size(text)
    if size is None:
        raise ValueError("must be a size (a build log is always bounded)")
    return size


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `12h` or `7d`; zero is allowed."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", text.strip())
    if match is None:
        raise ValueError("must be a duration: seconds, or a number with s, m, h or d (e.g. 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be a positive duration")
    return value


def _store(text: str) -> str:
    """Empty (the data dir) or a well-formed s3://bucket[/prefix]."""
    if text:
        from nixforge.store.s3_client import S3Location

        S3Location.parse(text)
    return text


def _url(text: str) -> str:
    """Empty or an http(s) URL."""
    if text and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError("must be an http:// or https:// URL")
    return text


def parse_nix_options(text: str) -> tuple[tuple[str, str], ...]:
    """Parse `NAME=VALUE` pairs separated by newlines or semicolons."""
    pairs = []
    for item in re.split(r"[;\n]", text):
        item = item.strip()
        if not item:
            continue
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not _NIX_OPTION_NAME.fullmatch(name):
            raise ValueError(f"{item!r} is not NAME=VALUE")
        pairs.append((name, value.strip()))
    return tuple(pairs)


SETTINGS: tuple[Setting, ...] = (
    Setting("log_level", "LOG_LEVEL", "log-level", "INFO", _log_level,
            "Log level: DEBUG streams every Nix build line into the log."),
    Setting("host", "FLASK_HOST", None, "0.0.0.0", _host, "Interface to listen on (when --port is a number)."),
    Setting("port", "FLASK_PORT", None, "5000", _port, "TCP port to listen on."),
    Setting("flake", "GITHUB_REPO", "flake", DEFAULT_FLAKE, _flake, "Flake that images are built from."),
    Setting("build_timeout", "NIX_BUILD_TIMEOUT", "build-timeout", "600", _positive_float,
            "Seconds a build (and, separately, its planning) may run before it is killed (TERM, then KILL)."),
    Setting("cache_size", "CACHE_SIZE", "cache-size", "50", _positive_int,
            "Images whose manifests are kept in memory."),
    Setting("max_name_length", "MAX_IMAGE_NAME_LENGTH", "max-name-length", str(MAX_NAME_LENGTH), _positive_int,
            "Longest repository name accepted."),
    Setting("max_tag_length", "MAX_TAG_LENGTH", "max-tag-length", str(MAX_TAG_LENGTH), _positive_int,
            "Longest tag accepted."),
    Setting("data_dir", "NIXFORGE_DATA_DIR", "data-dir", "", str,
            "Blob store and tag index ($STATE_DIRECTORY, else $XDG_DATA_HOME/nixforge)."),
    Setting("refresh_interval", "NIXFORGE_REFRESH_INTERVAL", "refresh-interval", "300", _positive_float,
            "Seconds before a moving tag (latest, a branch) is re-resolved in the background."),
    Setting("max_builds", "NIXFORGE_MAX_BUILDS", "max-builds", "2", _positive_int, "Builds run at once."),
    Setting("max_queued_builds", "NIXFORGE_MAX_QUEUED_BUILDS", "max-queued-builds", "16", _positive_int,
            "Builds waiting for a slot before pulls get 429."),
    Setting("max_layers", "NIXFORGE_MAX_LAYERS", "max-layers", "100", _layer_budget,
            "Most layers of an image assembled from a closure, the customisation layer included (2 to 125)."),
    Setting("htpasswd", "NIXFORGE_HTPASSWD", "htpasswd", "", _htpasswd,
            "htpasswd file of bcrypt entries (htpasswd -B); when set, every request needs HTTP Basic auth."),
    Setting("header_timeout", "NIXFORGE_HEADER_TIMEOUT", "header-timeout", "20", _positive_float,
            "Seconds a client has to send a whole request head, from its first byte (else 408)."),
    Setting("send_timeout", "NIXFORGE_SEND_TIMEOUT", "send-timeout", "60", _positive_float,
            "Seconds a response may stall on a client that does not read before it is dropped."),
    Setting("send_threads", "NIXFORGE_SEND_THREADS", "send-threads", "32", _non_negative_int,
            "Blob bodies copied at once on threads of their own (more, and 0: sendfile on the reactor thread)."),
    Setting("blob_copy", "NIXFORGE_BLOB_COPY", "blob-copy", "read", _blob_copy,
            "How a copy thread sends a blob: read (1 MiB reads and writes), sendfile, or auto (read for "
            "the first two at once, sendfile for more)."),
    Setting("max_connections", "NIXFORGE_MAX_CONNECTIONS", "max-connections", "4096", _positive_int,
            "Open client connections at once; more get 503."),
    Setting("max_client_connections", "NIXFORGE_MAX_CLIENT_CONNECTIONS", "max-client-connections", "1024",
            _positive_int, "Open connections at once from one client address; more get 503."),
    Setting("listen_backlog", "NIXFORGE_LISTEN_BACKLOG", "listen-backlog", "1024", _positive_int,
            "Listen backlog when --port is a number (add backlog=N to an endpoint string)."),
    Setting("error_log_tail", "NIXFORGE_ERROR_LOG_TAIL", "error-log-tail", "on", _boolean,
            "Put the (scrubbed) build log tail in failed-build answers; off for public registries."),
    Setting("max_store_size", "NIXFORGE_MAX_STORE_SIZE", "max-store-size", "none", parse_size,
            "Cap on the blob store, in bytes with K/M/G/T (1024 multiples); GC evicts the least recently "
            "pulled images beyond it."),
    Setting("retention", "NIXFORGE_RETENTION", "retention", "7d", parse_duration,
            "How long a tag's superseded manifest digests stay resolvable: seconds, or with s/m/h/d."),
    Setting("gc_interval", "NIXFORGE_GC_INTERVAL", "gc-interval", "3600", _positive_duration,
            "Seconds between GC runs (GC also runs after a build when the store is over its cap)."),
    Setting("ready_interval", "NIXFORGE_READY_INTERVAL", "ready-interval", "30", _positive_duration,
            "Seconds between readiness checks (data dir writable, nix --version runs), cached for /readyz."),
    Setting("metrics", "NIXFORGE_METRICS", "metrics", "on", _boolean,
            "on or off: serve Prometheus metrics at GET /metrics (off: no counting at all)."),
    Setting("access_log", "NIXFORGE_ACCESS_LOG", "access-log", "on", _boolean,
            "on or off: one INFO line per request (method, path, status, bytes, duration, build id)."),
    Setting("ui", "NIXFORGE_UI", "ui", "on", _boolean,
            "on or off: serve the web pages at / and /ui/ (off: those paths answer 404)."),
    Setting("builds_kept", "NIXFORGE_BUILDS_KEPT", "builds-kept", "50", _positive_int,
            "Finished builds /-/builds keeps, with their logs, besides the running ones."),
    Setting("build_log_size", "NIXFORGE_BUILD_LOG_SIZE", "build-log-size", "1M", _log_size,
            "Bytes of log kept per build (the oldest lines go first), with K/M/G."),
    Setting("nix_binary", "NIXFORGE_NIX", "nix", "nix", str, "The nix executable."),
    Setting("accept_flake_config", "NIXFORGE_ACCEPT_FLAKE_CONFIG", "accept-flake-config", "true", _boolean,
            "true or false: true passes --accept-flake-config to Nix, trusting the configured flake's "
            "nixConfig (its substituters and signing keys)."),
    Setting("nix_options", "NIXFORGE_NIX_OPTIONS", None, "", parse_nix_options,
            "Extra Nix settings, NAME=VALUE separated by ';' (also --nix-option, repeatable)."),
    Setting("packages", "NIXFORGE_PACKAGES", "packages", "*", _globs(_NAME_GLOB, "hello,tool-*"),
            "Comma-separated globs over the repository names served (e.g. hello,tool-*,applications/app1/*)."),
    Setting("refs", "NIXFORGE_REFS", "refs", "*", _globs(_TAG_GLOB, "main,v*"),
            "Comma-separated globs over the tags served as a branch or git tag of the flake; latest is always served."),
    Setting("commit_tags", "NIXFORGE_COMMIT_TAGS", "commit-tags", "known", _commit_tags,
            "40-hex commit tags served: known (revisions nixforge locked from latest or an allowed ref), any, none."),
    Setting("script_user", "NIXFORGE_SCRIPT_USER", "script-user", "nobody", _user,
            "User that runs a flake's image script when nixforge runs as root."),
    Setting("failure_ttl", "NIXFORGE_FAILURE_TTL", "failure-ttl", "60", _seconds,
            "Seconds a failed build (or timeout) is answered from memory, without Nix (0: never)."),
    Setting("refresh_from", "NIXFORGE_REFRESH_FROM", "refresh-from", "loopback", parse_refresh_from,
            "Clients allowed to POST /-/refresh: loopback, any, or comma-separated CIDRs (e.g. 10.0.0.0/8)."),
    Setting("systems", "NIXFORGE_SYSTEMS", "systems", "", parse_systems,
            "Comma-separated Nix systems each tag is built for (an image index when not just the host's); "
            "empty: the host's system alone."),
    Setting("pull_wait", "NIXFORGE_PULL_WAIT", "pull-wait", "60", _seconds,
            "Longest a manifest request waits for a build, in seconds; then it gets 429 with Retry-After "
            "and the build's log URL, and the build goes on (0: wait for the build, up to NIX_BUILD_TIMEOUT)."),
    Setting("prebuild", "NIXFORGE_PREBUILD", "prebuild", "", _optional_globs(_NAME_GLOB, "hello,tool-*"),
            "Comma-separated globs over the catalog's names built before anyone pulls them, whenever latest "
            "moves to a new revision (at start, every refresh interval, on POST /-/refresh); empty: none."),
    Setting("cache_key_file", "NIXFORGE_CACHE_KEY_FILE", "cache-key-file", "", _cache_key_file,
            "Secret key (nix-store --generate-binary-cache-key) signing the Nix binary cache at /nix-cache/ "
            "of the served closures; empty: no cache."),
    Setting("store", "NIXFORGE_STORE", "store", "", _store,
            "Where everything durable lives: empty for the data dir, or s3://bucket[/prefix] (replicas share it)."),
    Setting("s3_endpoint", "NIXFORGE_S3_ENDPOINT", "s3-endpoint", "", _url,
            "S3 endpoint URL (MinIO, SeaweedFS, Ceph RGW; path-style addressing); empty: AWS."),
    Setting("s3_pool", "NIXFORGE_S3_POOL", "s3-pool", "16", _positive_int,
            "Threads (and connections) for S3 requests."),
    Setting("s3_redirect", "NIXFORGE_S3_REDIRECT", "s3-redirect", "true", _boolean,
            "true or false: with an S3 store, answer blob GETs with a 307 to a presigned URL (false: stream "
            "them through the replica, for buckets clients can't reach)."),
    Setting("s3_url_ttl", "NIXFORGE_S3_URL_TTL", "s3-url-ttl", "300", _positive_duration,
            "Seconds a presigned blob URL stays valid."),
    Setting("build_lease", "NIXFORGE_BUILD_LEASE", "build-lease", "60", _positive_duration,
            "With an S3 store: seconds a replica's build lease lives without renewal (renewed every third) "
            "before a waiting replica takes the build over."),
    Setting("gc_grace", "NIXFORGE_GC_GRACE", "gc-grace", "1h", _positive_duration,
            "With an S3 store: GC never deletes a blob it first saw less than this long ago (longer than "
            "NIX_BUILD_TIMEOUT), so other replicas' running builds keep theirs."),
)


class _ConfigMethods:
    """How a ForgeConfig is read and changed; its fields are made from SETTINGS below."""

    @classmethod
    def from_sources(
        cls,
        environ: Mapping[str, str],
        options: Mapping[str, str | None] | None = None,
        port: str | None = None,
        nix_options: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """Read every setting from `environ`, then apply twistd `options` (by option name) on top.

        `port` is the --port value: a number (listen on FLASK_HOST) or any Twisted endpoint string.
        Raises ConfigError naming the first bad value.
        """
        options = options or {}
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            text, source = environ.get(setting.variable), setting.variable
            if setting.option is not None and options.get(setting.option) is not None:
                text, source = options[setting.option], "--" + setting.option
            if text is None or (text == "" and setting.parse is not str):
                text, source = setting.default, None
            try:
                values[setting.attribute] = setting.parse(text)
            except ValueError as error:
                where = source or setting.variable
                raise ConfigError(f"invalid {where}={text!r}: {error}") from None
        values["nix_options"] = values["nix_options"] + tuple(nix_options)
        values["data_dir"] = os.path.abspath(values["data_dir"] or default_data_dir(environ))
        values["endpoint"] = _endpoint_for(values["host"], values["port"], values["listen_backlog"])
        if port is not None:
            if port.isdigit():
                try:
                    values["port"] = _port(port)
                except ValueError as error:
                    raise ConfigError(f"invalid --port={port!r}: {error}") from None
                values["endpoint"] = _endpoint_for(values["host"], values["port"], values["listen_backlog"])
            else:
                values["endpoint"] = port
        return cls(**values)

    def replace(self, **changes: Any) -> Any:
        """A copy with some settings changed."""
        return attrs.evolve(self, **changes)


def _config_fields() -> dict[str, Any]:
    """One field per setting, its default parsed from the setting's default text, plus the endpoint."""
    fields: dict[str, Any] = {}
    for setting in SETTINGS:
        fields[setting.attribute] = attrs.field(default=setting.parse(setting.default))
    fields["endpoint"] = attrs.field(default="")
    return fields


ForgeConfig = attrs.make_class(
    "ForgeConfig", _config_fields(), bases=(_ConfigMethods,), frozen=True, slots=True,
)
ForgeConfig.__doc__ = "The registry's settings, one field per entry of SETTINGS; build it with `from_sources`."
ForgeConfig.__module__ = __name__
