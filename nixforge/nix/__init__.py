"""The Nix layer: run nix as a child process, parse its output and logs."""
