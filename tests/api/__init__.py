"""Tests of the HTTP layer (nixforge.api)."""
