"""The HTTP layer: the OCI distribution API (pull side) as a Klein application."""

from nixforge.api.app import RegistryApi

__all__ = ["RegistryApi"]
