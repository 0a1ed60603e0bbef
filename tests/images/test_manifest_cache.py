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


def test_an_image_added_whole_comes_back_assembled_until_evicted() -> None:
    from nixforge.oci.documents import ImageManifests

    def image(n: int) -> ImageManifests:
        return ImageManifests(oci=doc(f"oci{n}"), docker=doc(f"docker{n}"), referrers=(doc(f"sbom{n}"),))

    cache = ManifestCache(2)
    first, second = image(1), image(2)
    cache.add_image(first)
    cache.add_image(second)
    assert cache.image(first.oci.digest) is first  # with its referrers, no reassembly
    assert cache.image(first.docker.digest) is None  # looked up by the OCI form only
    cache.add(doc("unrelated"))  # evicts the least recently used: `second`
    assert cache.image(second.oci.digest) is None and cache.get(second.referrers[0].digest) is None
    assert cache.image(first.oci.digest) is first
