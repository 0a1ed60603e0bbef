"""The manifest LRU keeps whole images, evicts the least recently used, and never loses a form."""

from nixforge.images.manifest_cache import ManifestCache
from nixforge.oci.documents import ManifestDocument


def doc(text: str) -> ManifestDocument:
    return ManifestDocument("application/vnd.oci.image.manifest.v1+json", text.encode())


def test_eviction_is_least_recently_used() -> None:
    cache = ManifestCache(2)
    a, b, c = doc("a"), doc("b"), doc("c")
    cache.add(a)
    cache.add(b)
    assert cache.get(a.digest) == a
    cache.add(c)
    assert cache.get(b.digest) is None
    assert cache.get(a.digest) == a and cache.get(c.digest) == c
    assert len(cache) == 2


def test_one_form_added_alone_does_not_hide_the_other() -> None:
    cache = ManifestCache(4)
    oci, docker = doc("oci"), doc("docker")
    cache.add(oci, docker)
    cache.add(oci)
    assert cache.get(docker.digest) == docker
    assert cache.get(oci.digest) == oci
