"""twistd plugin: `twistd nixforge` runs nixforge.tap (this file only points there)."""

from twisted.application.service import ServiceMaker

nixforge = ServiceMaker(
    "nixforge", "nixforge.tap", "An OCI registry that builds the images it serves with Nix.", "nixforge"
)
