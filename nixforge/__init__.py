"""nixforge: an OCI registry that builds the images it serves with Nix."""

__version__ = "0.1.0"
