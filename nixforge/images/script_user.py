"""Who a flake's image script runs as, and the only environment it gets.

An image script is code from the flake, run on the host outside Nix's sandbox. When nixforge runs
as root it runs as NIXFORGE_SCRIPT_USER (default `nobody`): that user's uid and primary gid, no
supplementary groups. Otherwise it runs as nixforge's own user. Either way it inherits no variable
of the registry's environment (no credentials, no NIX_* settings), only SCRIPT_ENVIRONMENT.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from attrs import frozen

# Enough for a streamLayeredImage script (a Python or shell script using store paths).
SCRIPT_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}


@frozen
class ScriptUser:
    """A user to switch to before running an image script."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_this_process(cls, name: str, euid: int | None = None) -> ScriptUser | None:
        """`name`'s ids when this process is root (`euid` 0), else None: scripts run as ourselves.

        Raises KeyError when there is no such user.
        """
        entry = pwd.getpwnam(name)
        if (os.geteuid() if euid is None else euid) != 0:
            return None
        return cls(name, entry.pw_uid, entry.pw_gid)

    def popen_arguments(self) -> dict[str, Any]:
        """`subprocess.Popen` keywords that drop to this user, with no supplementary groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}
