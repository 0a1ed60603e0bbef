"""Tests of the Nix layer."""
