"""OCI image documents, image ingestion and layer writing; knows nothing of HTTP or Nix."""
