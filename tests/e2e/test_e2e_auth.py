"""HTTP Basic authentication against a real `twistd -n nixforge --htpasswd`: podman, skopeo, containerd."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import ForgeProcess, Podman, http_request, require_tool, run_tool, wait_until
from test_e2e_containerd import Containerd, containerd  # noqa: F401  (the module's containerd fixture)

USER, PASSWORD = "alice", "s3cret-pw"


def htpasswd(path: Path, user: str, password: str, create: bool = False) -> None:
    """Write a bcrypt entry with Apache's own htpasswd (-B), as an operator would."""
    run_tool([require_tool("htpasswd"), *(["-c"] if create else []), "-bB", str(path), user, password])


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    htpasswd(path, USER, PASSWORD, create=True)
    htpasswd(path, "bob", "bobs-pw")
    assert path.read_text().startswith(f"{USER}:$2y$")
    return path


@pytest.fixture(scope="module")
def auth_forge(tmp_path_factory: pytest.TempPathFactory, flake_ref: str, password_file: Path) -> Iterator[ForgeProcess]:
    work_dir = tmp_path_factory.mktemp("auth-forge")
    forge = ForgeProcess(flake_ref=flake_ref, data_dir=work_dir / "data", work_dir=work_dir,
                         extra_args=["--htpasswd", str(password_file)]).start()
    yield forge
    forge.stop()


def authorization(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_every_route_needs_credentials(auth_forge: ForgeProcess) -> None:
    """/v2/ and a manifest answer 401 UNAUTHORIZED with a Basic challenge, and start no build."""
    for path in ("/v2/", "/v2/hello/manifests/latest", "/v2/_catalog", "/v2/hello/tags/list"):
        response = auth_forge.get(path)
        assert response.status == 401, path
        assert response.headers["www-authenticate"] == 'Basic realm="nixforge"'
        assert response.error_codes() == ["UNAUTHORIZED"]
    assert "build started" not in auth_forge.log_text()
    assert auth_forge.get("/v2/", authorization(USER, PASSWORD)).status == 200


def test_wrong_passwords_are_answered_later_and_later(auth_forge: ForgeProcess) -> None:
    """Each failure from one address waits longer before its 401 (0.5 s, 1 s, …)."""
    waits = []
    for _ in range(2):
        started = time.monotonic()
        assert auth_forge.get("/v2/", authorization(USER, "nope")).status == 401
        waits.append(time.monotonic() - started)
    assert waits[0] >= 0.45 and waits[1] >= 0.95, waits
    assert auth_forge.get("/v2/", authorization(USER, PASSWORD)).status == 200  # and success resets it
    started = time.monotonic()
    assert auth_forge.get("/v2/", authorization(USER, "nope")).status == 401
    assert time.monotonic() - started < 0.95


def test_podman_login_then_pull(auth_forge: ForgeProcess, podman: Podman, tmp_path: Path) -> None:
    """`podman login` stores the credentials; `podman pull` with them works; without them it fails."""
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {}}')
    image = f"{auth_forge.registry}/hello:latest"
    refused = run_tool([*podman.base(), "pull", "--tls-verify=false", "--authfile", str(authfile), image],
                       check=False)
    assert refused.returncode != 0
    assert "unauthorized" in (refused.stderr + refused.stdout).lower()
    wrong = run_tool([*podman.base(), "login", "--tls-verify=false", "--authfile", str(authfile),
                      "-u", USER, "-p", "wrong", auth_forge.registry], check=False)
    assert wrong.returncode != 0
    podman("login", "--tls-verify=false", "--authfile", str(authfile), "-u", USER, "-p", PASSWORD,
           auth_forge.registry)
    assert auth_forge.registry in json.loads(authfile.read_text())["auths"]
    podman("pull", "--tls-verify=false", "--authfile", str(authfile), image)
    assert podman.run_image(image).strip() == "Hello from nixforge"


def test_skopeo_creds(auth_forge: ForgeProcess, tmp_path: Path) -> None:
    """`skopeo inspect/copy --creds` work with the right password and fail with a wrong one or none."""
    source = f"docker://{auth_forge.registry}/tool-a:latest"
    inspected = run_tool(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}", source])
    assert json.loads(inspected.stdout)["Digest"].startswith("sha256:")
    run_tool(["skopeo", "copy", "--src-tls-verify=false", "--src-creds", f"{USER}:{PASSWORD}", source,
              f"oci:{tmp_path / 'copy'}:tool-a"])
    assert (tmp_path / "copy" / "index.json").exists()
    for creds in (["--creds", f"{USER}:wrong"], ["--creds", f"nobody:{PASSWORD}"], []):
        result = run_tool(["skopeo", "inspect", "--tls-verify=false", *creds, source], check=False)
        assert result.returncode != 0, creds
        assert "unauthorized" in result.stderr.lower() or "401" in result.stderr, result.stderr


def test_containerd_user_credentials(auth_forge: ForgeProcess, containerd: Containerd) -> None:  # noqa: F811
    """`ctr images pull --user user:pass --plain-http` pulls; a wrong password fails."""
    reference = f"{auth_forge.registry}/hello:latest"
    wrong = containerd.ctr("images", "pull", "--plain-http", "--user", f"{USER}:wrong", reference, check=False)
    assert wrong.returncode != 0
    assert "401" in wrong.stderr or "unauthorized" in wrong.stderr.lower(), wrong.stderr
    containerd.ctr("images", "pull", "--plain-http", "--user", f"{USER}:{PASSWORD}", reference, timeout=600)
    assert reference in containerd.ctr("images", "ls", "-q").stdout.split()


def test_a_changed_file_takes_effect_without_a_restart(
    tmp_path: Path, flake_ref: str, forge_factory: object
) -> None:
    """Changing a password with `htpasswd -bB` is seen within seconds: old refused, new accepted."""
    path = tmp_path / "htpasswd"
    htpasswd(path, USER, PASSWORD, create=True)
    forge = forge_factory("reload", extra_args=["--htpasswd", str(path)])  # type: ignore[operator]
    assert forge.get("/v2/", authorization(USER, PASSWORD)).status == 200
    htpasswd(path, USER, "changed-pw")
    assert wait_until(lambda: forge.get("/v2/", authorization(USER, "changed-pw")).status == 200, 10)
    assert forge.get("/v2/", authorization(USER, PASSWORD)).status == 401
    assert http_request(forge.url("/v2/")).status == 401
