"""Content-addressed blob storage and the durable tag index; knows nothing of HTTP or Nix."""
