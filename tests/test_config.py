"""Settings come from the environment with the documented defaults; twistd options win."""

from pathlib import Path

import pytest

from nixforge.config import ConfigError, ForgeConfig
from nixforge.platforms import host_system
from nixforge.tap import Options, config_or_exit


def test_defaults() -> None:
    config = ForgeConfig.from_sources({"HOME": "/home/u"})
    assert config.log_level == "INFO"
    assert config.endpoint == "tcp:5000:interface=0.0.0.0:backlog=1024"
    assert config.flake == "github:imincik/flake-forge"
    assert config.build_timeout == 600
    assert config.cache_size == 50
    assert (config.max_name_length, config.max_tag_length) == (255, 128)
    assert config.max_layers == 100
    assert (config.packages, config.refs, config.commit_tags) == (("*",), ("*",), "known")
    assert config.script_user == "nobody"
    assert config.max_store_size is None
    assert config.retention == 7 * 86400
    assert config.gc_interval == 3600


def test_environment_is_read() -> None:
    config = ForgeConfig.from_sources({
        "LOG_LEVEL": "debug", "FLASK_HOST": "127.0.0.1", "FLASK_PORT": "8080", "GITHUB_REPO": "path:/srv/f",
        "NIX_BUILD_TIMEOUT": "30", "CACHE_SIZE": "7", "MAX_IMAGE_NAME_LENGTH": "100", "MAX_TAG_LENGTH": "20",
        "NIXFORGE_DATA_DIR": "/var/lib/forge", "NIXFORGE_NIX_OPTIONS": "substituters=; sandbox=false",
    })
    assert config.log_level == "DEBUG"
    assert config.endpoint == "tcp:8080:interface=127.0.0.1:backlog=1024"
    assert config.flake == "path:/srv/f"
    assert config.build_timeout == 30
    assert (config.cache_size, config.max_name_length, config.max_tag_length) == (7, 100, 20)
    assert config.data_dir == "/var/lib/forge"
    assert config.nix_options == (("substituters", ""), ("sandbox", "false"))


def test_options_override_environment(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--flake", "path:/x", "--build-timeout", "5",
                          "--nix-option", "sandbox=false", "--data-dir", str(tmp_path / "d"), "--log-level", "warn"])
    config = options.config
    assert config.endpoint == "tcp:0:interface=127.0.0.1"
    assert config.flake == "path:/x"
    assert config.build_timeout == 5
    assert ("sandbox", "false") in config.nix_options
    assert config.data_dir == str(tmp_path / "d")
    assert config.log_level == "WARN"


@pytest.mark.parametrize("text, size", [
    ("1", 1), ("512K", 512 * 1024), ("20M", 20 << 20), ("1.5G", 3 << 29), ("2T", 2 << 40), ("4GiB", 4 << 30),
    ("8gb", 8 << 30), ("none", None),
])
def test_store_size_takes_binary_suffixes(text: str, size: int | None) -> None:
    assert ForgeConfig.from_sources({"NIXFORGE_MAX_STORE_SIZE": text}).max_store_size == size


def test_retention_and_gc_interval_take_durations() -> None:
    options = Options()
    options.parseOptions(["--max-store-size", "3G", "--retention", "12h", "--gc-interval", "90s"])
    assert options.config.max_store_size == 3 << 30
    assert options.config.retention == 12 * 3600
    assert options.config.gc_interval == 90
    assert ForgeConfig.from_sources({"NIXFORGE_RETENTION": "0"}).retention == 0
    assert ForgeConfig.from_sources({"NIXFORGE_RETENTION": "3600"}).retention == 3600


def test_numeric_port_listens_on_flask_host() -> None:
    config = ForgeConfig.from_sources({"FLASK_HOST": "::1"}, port="5001")
    assert config.endpoint == "tcp:5001:interface=\\:\\:1:backlog=1024"


def test_state_directory_is_the_default_data_dir() -> None:
    assert ForgeConfig.from_sources({"STATE_DIRECTORY": "/var/lib/nixforge"}).data_dir == "/var/lib/nixforge"


@pytest.mark.parametrize("variable, value", [
    ("NIX_BUILD_TIMEOUT", "soon"), ("NIX_BUILD_TIMEOUT", "-1"), ("CACHE_SIZE", "0"), ("FLASK_PORT", "70000"),
    ("LOG_LEVEL", "LOUD"), ("GITHUB_REPO", "--impure"), ("GITHUB_REPO", "github:a/b#evil"),
    ("FLASK_HOST", "a b"), ("NIXFORGE_MAX_LAYERS", "500"), ("NIXFORGE_NIX_OPTIONS", "no-equals"),
    ("NIXFORGE_PACKAGES", "hello,,tool-*"), ("NIXFORGE_PACKAGES", "Hello"), ("NIXFORGE_REFS", "main,a/b"),
    ("NIXFORGE_COMMIT_TAGS", "some"), ("NIXFORGE_SCRIPT_USER", "no-such-user-here"),
    ("NIXFORGE_MAX_LAYERS", "1"), ("NIXFORGE_ACCEPT_FLAKE_CONFIG", "maybe"),
    ("NIXFORGE_MAX_STORE_SIZE", "20X"), ("NIXFORGE_MAX_STORE_SIZE", "-5G"), ("NIXFORGE_MAX_STORE_SIZE", "0"),
    ("NIXFORGE_RETENTION", "a week"), ("NIXFORGE_RETENTION", "-1d"), ("NIXFORGE_GC_INTERVAL", "0"),
    ("NIXFORGE_SYSTEMS", "x86_64"), ("NIXFORGE_SYSTEMS", "x86_64-linux,x86_64-linux"),
    ("NIXFORGE_SYSTEMS", "sparc-linux"), ("NIXFORGE_PULL_WAIT", "-1"), ("NIXFORGE_PULL_WAIT", "a while"),
    ("NIXFORGE_PREBUILD", "Hello"), ("NIXFORGE_PREBUILD", "hello,,tool-*"),
])
def test_bad_values_are_refused_with_one_line(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ForgeConfig.from_sources({variable: value})
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


def test_systems_default_to_the_host_and_the_option_wins() -> None:
    assert ForgeConfig.from_sources({}).systems == (host_system(),)
    environ = {"NIXFORGE_SYSTEMS": "x86_64-linux,aarch64-linux"}
    assert ForgeConfig.from_sources(environ).systems == ("x86_64-linux", "aarch64-linux")
    assert ForgeConfig.from_sources(environ, {"systems": "aarch64-linux"}).systems == ("aarch64-linux",)


def test_bad_endpoint_exits_before_listening() -> None:
    with pytest.raises(SystemExit) as caught:
        config_or_exit({}, port="nonsense:1:2")
    assert str(caught.value).startswith("nixforge: invalid --port")


def test_policy_settings_are_read_and_options_win() -> None:
    environ = {"NIXFORGE_PACKAGES": "hello, tool-*,applications/app1/*", "NIXFORGE_REFS": "main,v[0-9]*",
               "NIXFORGE_COMMIT_TAGS": "None", "NIXFORGE_SCRIPT_USER": "root"}
    config = ForgeConfig.from_sources(environ)
    assert config.packages == ("hello", "tool-*", "applications/app1/*")
    assert config.refs == ("main", "v[0-9]*")
    assert (config.commit_tags, config.script_user) == ("none", "root")
    options = {"packages": "greet", "refs": "release-*", "commit-tags": "any", "script-user": "nobody"}
    config = ForgeConfig.from_sources(environ, options)
    assert (config.packages, config.refs, config.commit_tags, config.script_user) == (
        ("greet",), ("release-*",), "any", "nobody")


def test_a_bad_script_user_stops_start_up_with_one_line() -> None:
    with pytest.raises(SystemExit) as caught:
        config_or_exit({"NIXFORGE_SCRIPT_USER": "no-such-user-here"})
    assert str(caught.value) == "nixforge: invalid NIXFORGE_SCRIPT_USER='no-such-user-here': no such user"


@pytest.mark.parametrize("text, expected", [
    (None, True), ("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False),
])
def test_accept_flake_config_is_on_unless_turned_off(text: str | None, expected: bool) -> None:
    environ = {} if text is None else {"NIXFORGE_ACCEPT_FLAKE_CONFIG": text}
    assert ForgeConfig.from_sources(environ).accept_flake_config is expected


def test_accept_flake_config_option_wins(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--accept-flake-config", "false", "--data-dir", str(tmp_path)])
    assert options.config.accept_flake_config is False
    options = Options()
    with pytest.raises(SystemExit) as caught:
        options.parseOptions(["--accept-flake-config=sometimes", "--data-dir", str(tmp_path)])
    assert "--accept-flake-config" in str(caught.value)


def test_a_data_dir_that_is_a_file_ends_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    for data_dir in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(SystemExit) as caught:
            config_or_exit({"NIXFORGE_DATA_DIR": str(data_dir)})
        message = str(caught.value)
        assert message.startswith("nixforge: cannot use the data dir") and str(data_dir) in message
        assert "\n" not in message


def test_a_usable_data_dir_is_created_and_left_clean(tmp_path: Path) -> None:
    config = config_or_exit({"NIXFORGE_DATA_DIR": str(tmp_path / "new" / "data")})
    assert Path(config.data_dir).is_dir()
    assert list(Path(config.data_dir).iterdir()) == []


def test_edge_settings_defaults_and_environment(tmp_path) -> None:
    config = ForgeConfig.from_sources({})
    assert (config.htpasswd, config.header_timeout, config.send_timeout) == ("", 20, 60)
    assert (config.max_connections, config.max_client_connections, config.listen_backlog) == (4096, 1024, 1024)
    assert config.error_log_tail is True
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("")
    config = ForgeConfig.from_sources({
        "NIXFORGE_HTPASSWD": str(htpasswd), "NIXFORGE_HEADER_TIMEOUT": "5", "NIXFORGE_SEND_TIMEOUT": "7",
        "NIXFORGE_MAX_CONNECTIONS": "9", "NIXFORGE_MAX_CLIENT_CONNECTIONS": "3", "NIXFORGE_LISTEN_BACKLOG": "4096",
        "NIXFORGE_ERROR_LOG_TAIL": "off", "FLASK_PORT": "5000",
    })
    assert config.htpasswd == str(htpasswd)
    assert (config.header_timeout, config.send_timeout, config.max_connections) == (5, 7, 9)
    assert config.max_client_connections == 3 and config.error_log_tail is False
    assert config.endpoint == "tcp:5000:interface=0.0.0.0:backlog=4096"


@pytest.mark.parametrize("variable, value", [
    ("NIXFORGE_HTPASSWD", "/nonexistent/htpasswd"), ("NIXFORGE_HEADER_TIMEOUT", "0"),
    ("NIXFORGE_MAX_CONNECTIONS", "-3"), ("NIXFORGE_ERROR_LOG_TAIL", "maybe"),
])
def test_bad_edge_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ForgeConfig.from_sources({variable: value})


def test_failure_ttl_and_refresh_from_defaults_environment_and_options() -> None:
    default = ForgeConfig.from_sources({"HOME": "/home/u"})
    assert (default.failure_ttl, default.refresh_from) == (60.0, ("loopback",))
    config = ForgeConfig.from_sources({"NIXFORGE_FAILURE_TTL": "0", "NIXFORGE_REFRESH_FROM": "10.0.0.0/8,loopback"})
    assert (config.failure_ttl, config.refresh_from) == (0.0, ("10.0.0.0/8", "loopback"))
    options = ForgeConfig.from_sources({"NIXFORGE_REFRESH_FROM": "loopback"},
                                       {"failure-ttl": "5", "refresh-from": "any"})
    assert (options.failure_ttl, options.refresh_from) == (5.0, ("any",))
    for variable, value in (("NIXFORGE_FAILURE_TTL", "-1"), ("NIXFORGE_FAILURE_TTL", "inf"),
                            ("NIXFORGE_REFRESH_FROM", "the world")):
        with pytest.raises(ConfigError, match=variable):
            ForgeConfig.from_sources({variable: value})


def test_pull_wait_and_prebuild_from_defaults_environment_and_options() -> None:
    default = ForgeConfig.from_sources({})
    assert (default.pull_wait, default.prebuild) == (60.0, ())
    config = ForgeConfig.from_sources({"NIXFORGE_PULL_WAIT": "0", "NIXFORGE_PREBUILD": "hello, tool-*"})
    assert (config.pull_wait, config.prebuild) == (0.0, ("hello", "tool-*"))
    options = ForgeConfig.from_sources({"NIXFORGE_PREBUILD": "hello"}, {"pull-wait": "5", "prebuild": "greet"})
    assert (options.pull_wait, options.prebuild) == (5.0, ("greet",))
