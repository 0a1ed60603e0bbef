"""`twistd nixforge`: command-line options, the configuration, and twistd's entry point."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from nixforge import __version__, logs
from nixforge.config import SETTINGS, ConfigError, ForgeConfig, parse_nix_options
from nixforge.registry import make_registry

log = Logger()


def _help(option: str) -> str:
    setting = next(s for s in SETTINGS if s.option == option)
    default = setting.default or "see below"
    return f"{setting.meaning} [env {setting.variable}, default {default}]"


class Options(usage.Options):
    """Options of `twistd nixforge`; each overrides its environment variable."""

    synopsis = "[options]"
    longdesc = (
        "An OCI registry that builds the images it serves with Nix. Every option can also be set by "
        "its environment variable; an option given here wins. NIXFORGE_DATA_DIR defaults to "
        "$STATE_DIRECTORY, else $XDG_DATA_HOME/nixforge (~/.local/share/nixforge)."
    )
    optParameters = [
        ["port", "p", None,
         "Port number, or a Twisted endpoint string such as tcp:5000:interface=127.0.0.1 or "
         "ssl:5443:privateKey=key.pem:certKey=cert.pem [env FLASK_HOST and FLASK_PORT, default "
         "tcp:5000:interface=0.0.0.0]"],
        *([setting.option, None, None, _help(setting.option)]
          for setting in SETTINGS if setting.option is not None),
    ]

    def __init__(self) -> None:
        super().__init__()
        self["nix-options"] = []

    def opt_nix_option(self, value: str) -> None:
        """Pass `--option NAME VALUE` to every nix command; repeatable [env NIXFORGE_NIX_OPTIONS]."""
        try:
            self["nix-options"].extend(parse_nix_options(value))
        except ValueError as error:
            raise usage.UsageError(f"--nix-option: {error}") from None

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"nixforge {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """Build the configuration; a bad value ends start-up here with one line on stderr."""
        self.config = config_or_exit(os.environ, self, self["port"], tuple(self["nix-options"]))
        logs.use_for_twistd(getattr(self, "parent", None), self.config.log_level)


def config_or_exit(
    environ: Mapping[str, str],
    options: Mapping[str, Any] | None = None,
    port: str | None = None,
    nix_options: tuple[tuple[str, str], ...] = (),
) -> ForgeConfig:
    """Read the configuration and check the endpoint, or exit with a one-line error."""
    try:
        config = ForgeConfig.from_sources(environ, options, port, nix_options)
        check_endpoint(config.endpoint)
        check_data_dir(config.data_dir)
    except ConfigError as error:
        raise SystemExit(f"nixforge: {error}") from None
    return config


def check_endpoint(description: str) -> None:
    """Raise ConfigError unless `description` is an endpoint string Twisted can listen on."""
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError, ImportError, OSError) as error:
        raise ConfigError(f"invalid --port={description!r}: {error}") from None


def check_data_dir(path: str) -> None:
    """Raise ConfigError unless `path` is (or can be made) a directory nixforge can write in."""
    try:
        os.makedirs(path, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".nixforge-write-check-", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot use the data dir {path!r} (--data-dir, NIXFORGE_DATA_DIR): {reason}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """twistd's entry point: the registry configured from the environment and the options."""
    if reactor is None:
        from twisted.internet import reactor
    return make_registry(options.config, reactor)
