"""Resolving (name, tag) to stored images: builds on demand, single-flight, cached."""
