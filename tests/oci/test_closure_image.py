"""Closure images: shared layers, no rewrites, reproducible digests, fidelity through real tools."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from attrs import frozen

from nixforge.errors import BuildCancelled
from nixforge.oci import media_types as mt
from nixforge.oci.closure_image import PackageMeta, assemble_closure_image, closure_budget, store_layer
from nixforge.oci.documents import ImageManifests
from nixforge.store.filesystem import FilesystemBlobStore
from nixforge.store.layer_cache import LayerCache, layer_key
from nixforge.store.memory import MemoryBlobStore, MemoryBlobWriter


@frozen
class Info:
    """A stand-in for nixforge.nix.client.StorePathInfo."""

    path: str
    nar_size: int
    references: tuple[str, ...]


class CountingStore(MemoryBlobStore):
    """A memory store that counts the blobs written into it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def writer(self) -> MemoryBlobWriter:
        self.writes += 1
        return super().writer()


def make_path(store: Path, name: str, files: dict[str, bytes], refs: tuple[Info, ...] = ()) -> Info:
    """Create a fake store path; names under bin/ are executable."""
    root = store / (hashlib.sha256(name.encode()).hexdigest()[:32] + "-" + name)
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o755 if relative.startswith("bin/") else 0o644)
    size = sum(len(content) for content in files.values())
    return Info(str(root), size, tuple(r.path for r in refs))


FakeStore = tuple[str, dict[str, Info]]
Store = MemoryBlobStore | FilesystemBlobStore


@pytest.fixture
def fake_store(tmp_path: Path) -> FakeStore:
    """glibc-like base, a shared library, two apps using it, one app with a private helper."""
    store = tmp_path / "nix" / "store"
    base = make_path(store, "base", {"lib/libc.so": b"libc" * 50_000})
    cacert = make_path(store, "cacert", {"etc/ssl/certs/ca-bundle.crt": b"-----BEGIN CERTIFICATE-----\n"})
    shared = make_path(store, "shared", {"lib/libshared.so": b"shared" * 10_000}, (base, cacert))
    helper = make_path(store, "helper-a", {"share/helper": b"helper\n"}, (base,))
    app_a = make_path(store, "app-a", {"bin/app-a": b"#!/bin/sh\necho a\n"}, (shared, helper, base))
    app_b = make_path(store, "app-b", {"bin/app-b": b"#!/bin/sh\necho b\n", "bin/sh": b"sh"}, (shared, base))
    infos = {"base": base, "cacert": cacert, "shared": shared, "helper": helper, "a": app_a, "b": app_b}
    return str(store), infos


def closure_of(root: Info, infos: dict[str, Info]) -> list[Info]:
    by_path = {info.path: info for info in infos.values()}
    seen, stack = {root.path}, [root.path]
    while stack:
        for ref in by_path[stack.pop()].references:
            if ref not in seen:
                seen.add(ref)
                stack.append(ref)
    return [by_path[path] for path in sorted(seen)]


def layers_of(store: Store, manifests: ImageManifests) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifests.oci.body)["layers"]]


def config_of(store: Store, manifests: ImageManifests) -> dict:
    return json.loads(store.read(json.loads(manifests.oci.body)["config"]["digest"]))


def assemble(
    store: Store, cache: LayerCache, infos: dict[str, Info], name: str, store_dir: str, **kwargs: int
) -> ImageManifests:
    meta = PackageMeta(name=f"app-{name}", out_path=infos[name].path, main_program=None, labels={"x": name})
    return assemble_closure_image(store, cache, closure_of(infos[name], infos), meta, store_dir=store_dir, **kwargs)


def test_images_share_layers_and_only_new_layers_are_written(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    store, cache = CountingStore(), LayerCache.in_directory(str(tmp_path / "cache"))
    first = assemble(store, cache, infos, "a", store_dir)
    layers_a = layers_of(store, first)
    assert len(layers_a) == 5 + 1  # one layer per store path, then the customisation layer
    assert store.writes == 6 + 1  # and the config
    writes = store.writes
    second = assemble(store, cache, infos, "b", store_dir)
    layers_b = layers_of(store, second)
    shared = set(layers_a[:-1]) & set(layers_b[:-1])
    assert len(shared) == 3  # base, cacert and the shared library: same digests in both images
    assert store.writes - writes == 1 + 1 + 1  # app-b's layer, its customisation layer, its config
    writes = store.writes
    assert assemble(store, cache, infos, "a", store_dir) == first
    assert store.writes == writes  # nothing at all is written again


def test_wiping_store_and_cache_gives_the_same_digests(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    results = []
    for attempt in range(2):
        blobs = FilesystemBlobStore(str(tmp_path / f"data{attempt}"))
        cache = LayerCache.in_directory(str(tmp_path / f"data{attempt}" / "layers"))
        results.append((assemble(blobs, cache, infos, "a", store_dir, workers=1 + attempt), blobs))
        shutil.rmtree(tmp_path / f"data{attempt}" / "layers")
    (first, _), (second, blobs) = results
    assert first.oci.digest == second.oci.digest
    assert first.docker.digest == second.docker.digest
    assert json.loads(second.docker.body)["layers"][0]["mediaType"] == mt.DOCKER_LAYER_GZIP


def test_the_cache_survives_a_restart_and_is_ignored_when_a_blob_is_gone(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    store = CountingStore()
    first = assemble(store, LayerCache.in_directory(str(tmp_path / "cache")), infos, "a", store_dir)
    writes = store.writes
    assert assemble(store, LayerCache.in_directory(str(tmp_path / "cache")), infos, "a", store_dir) == first
    assert store.writes == writes
    other = CountingStore()  # the same cache, but a store without those blobs: everything is rewritten
    assert assemble(other, LayerCache.in_directory(str(tmp_path / "cache")), infos, "a", store_dir) == first
    assert other.writes == writes
    assert len(os.listdir(tmp_path / "cache")) == 5
    key = layer_key([infos["base"].path])
    assert LayerCache.in_directory(str(tmp_path / "cache")).get(key, other) is not None


def test_config_and_layer_budget(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    store = MemoryBlobStore()
    manifests = assemble(store, LayerCache.in_directory(str(tmp_path / "c")), infos, "a", store_dir, max_layers=3)
    layers = json.loads(manifests.oci.body)["layers"]
    assert len(layers) == 3  # the budget counts every layer: two for the closure, the customisation layer
    config = config_of(store, manifests)
    app = "/nix/store/" + os.path.basename(infos["a"].path)
    cacert = "/nix/store/" + os.path.basename(infos["cacert"].path)
    assert config["config"] == {
        "Entrypoint": [f"{app}/bin/app-a"],
        "Env": [f"PATH=/bin:{app}/bin", f"SSL_CERT_FILE={cacert}/etc/ssl/certs/ca-bundle.crt"],
        "Labels": {"x": "a"},
    }
    assert config["created"] == "1970-01-01T00:00:01Z"
    diff_ids = []
    for layer in layers:
        raw = gzip.decompress(store.read(layer["digest"]))
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read(layers[-1]["digest"])))) as top:
        assert top.getmember("bin/app-a").linkname == f"{app}/bin/app-a"


@pytest.mark.parametrize("max_layers, expected", [(6, 6), (5, 5), (4, 4), (2, 2)])
def test_max_layers_counts_the_customisation_layer(
    tmp_path: Path, fake_store: FakeStore, max_layers: int, expected: int
) -> None:
    # "a" has a closure of 5 store paths: with 6 layers each gets its own; with fewer, the image
    # still has exactly `max_layers` layers, the customisation layer on top included.
    store_dir, infos = fake_store
    store = MemoryBlobStore()
    cache = LayerCache.in_directory(str(tmp_path / "c"))
    manifests = assemble(store, cache, infos, "a", store_dir, max_layers=max_layers)
    assert len(json.loads(manifests.oci.body)["layers"]) == expected
    assert len(config_of(store, manifests)["rootfs"]["diff_ids"]) == expected


def test_closure_budget_leaves_room_for_the_customisation_layer() -> None:
    assert closure_budget(100) == 99
    assert closure_budget(125) == 124
    assert closure_budget(1000) == 124  # overlayfs cap on the whole image
    assert closure_budget(2) == 1


def write_oci_layout(store: MemoryBlobStore, manifests: ImageManifests, layout: Path) -> None:
    """A minimal OCI image layout holding one image tagged `latest` (test scaffolding)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    document = json.loads(manifests.oci.body)
    for descriptor in [document["config"], *document["layers"]]:
        (blobs / descriptor["digest"].split(":")[1]).write_bytes(store.read(descriptor["digest"]))
    (blobs / manifests.oci.digest.split(":")[1]).write_bytes(manifests.oci.body)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entry = {"mediaType": mt.OCI_MANIFEST, "digest": manifests.oci.digest, "size": len(manifests.oci.body)}
    entry["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def test_umoci_unpacks_the_image_exactly_as_the_store(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    extra = Path(infos["shared"].path)
    (extra / "lib" / "link").symlink_to("libshared.so")
    (extra / "empty dir é").mkdir()
    os.link(extra / "lib" / "libshared.so", extra / "lib" / "hard")
    store = MemoryBlobStore()
    manifests = assemble(store, LayerCache.in_directory(str(tmp_path / "c")), infos, "b", store_dir, max_layers=3)
    write_oci_layout(store, manifests, tmp_path / "layout")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:latest", str(bundle)], check=True)
    rootfs = bundle / "rootfs"
    for info in closure_of(infos["b"], infos):
        source = Path(info.path)
        copy = rootfs / "nix" / "store" / source.name
        for directory, dirnames, filenames in os.walk(source):
            for name in ["", *dirnames, *filenames]:
                original = Path(directory) / name
                unpacked = copy / original.relative_to(source)
                src, dst = os.lstat(original), os.lstat(unpacked)
                assert stat.S_IFMT(src.st_mode) == stat.S_IFMT(dst.st_mode)
                if stat.S_ISREG(src.st_mode):
                    assert original.read_bytes() == unpacked.read_bytes()
                    assert stat.S_IMODE(dst.st_mode) == (0o555 if src.st_mode & 0o111 else 0o444)
    shared = rootfs / "nix" / "store" / extra.name
    assert os.readlink(shared / "lib" / "link") == "libshared.so"
    assert os.lstat(shared / "lib" / "hard").st_ino == os.lstat(shared / "lib" / "libshared.so").st_ino
    assert os.listdir(shared / "empty dir é") == []
    assert os.readlink(rootfs / "bin" / "app-b") == f"/nix/store/{Path(infos['b'].path).name}/bin/app-b"
    assert stat.S_IMODE(os.lstat(rootfs / "tmp").st_mode) == 0o1777
    assert (rootfs / "etc" / "passwd").read_text().startswith("root:x:0:0:")


FLAKE = """{
  outputs = { self }:
    let
      system = "@SYSTEM@";
      mk = name: script: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" ("export PATH=/usr/bin:/bin; " + script) ];
      };
      busybox = mk "nixforge-closure-busybox"
        "mkdir -p $out/bin; cp ${./busybox} $out/bin/busybox; ln -s busybox $out/bin/sh";
      shared = mk "nixforge-closure-shared" "mkdir -p $out/lib; echo shared > $out/lib/libshared.so";
      app = n: mk "nixforge-closure-${n}" ''
        mkdir -p $out/bin
        printf '#!${busybox}/bin/sh\\necho hello from ${n} ${shared}\\n' > $out/bin/${n}
        chmod 755 $out/bin/${n}
      '';
    in { packages.${system} = { a = app "a"; b = app "b"; }; };
}
"""


def nix(*args: str) -> bytes:
    env = dict(os.environ, NIX_CONFIG="substituters =")
    argv = ["nix", "--extra-experimental-features", "nix-command flakes", *args]
    return subprocess.run(argv, check=True, capture_output=True, env=env).stdout


def real_closure(flake: Path, attr: str) -> tuple[str, list[Info]]:
    out = json.loads(nix("build", "--json", "--no-link", f"path:{flake}#{attr}"))[0]["outputs"]["out"]
    listed = json.loads(nix("path-info", "-r", "--json", out))
    entries = listed if isinstance(listed, list) else [dict(v, path=k) for k, v in listed.items()]
    return out, [Info(e["path"], e["narSize"], tuple(e["references"])) for e in entries]


@pytest.mark.skipif(shutil.which("nix") is None or not os.path.exists("/bin/busybox"), reason="needs nix and busybox")
def test_real_store_paths_share_layers_and_run_in_podman(tmp_path: Path) -> None:
    system = {"x86_64": "x86_64-linux", "aarch64": "aarch64-linux"}[platform.machine()]
    flake = tmp_path / "flake"
    flake.mkdir()
    shutil.copy("/bin/busybox", flake / "busybox")
    (flake / "flake.nix").write_text(FLAKE.replace("@SYSTEM@", system))
    store, cache = CountingStore(), LayerCache.in_directory(str(tmp_path / "cache"))
    images = {}
    for attr in ("a", "b"):
        out, closure = real_closure(flake, attr)
        assert len(closure) == 3  # the app, the shared library, busybox
        images[attr] = assemble_closure_image(store, cache, closure, PackageMeta(attr, out, attr, {}))
    layers_a, layers_b = layers_of(store, images["a"]), layers_of(store, images["b"])
    assert len(set(layers_a) & set(layers_b)) == 2  # busybox and the shared library
    assert store.writes == (3 + 1 + 1) + (1 + 1 + 1)
    if shutil.which("podman") is None:
        return
    write_oci_layout(store, images["a"], tmp_path / "layout")
    runroot = tempfile.mkdtemp(prefix="nf-", dir="/tmp")  # podman wants a runroot under 50 characters
    try:
        podman = ["podman", "--root", str(tmp_path / "pr"), "--runroot", runroot, "--storage-driver", "vfs"]
        run = [*podman, "run", "--rm", "--runtime", "runc", "--network", "none"]
        limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
        image = f"oci:{tmp_path / 'layout'}:latest"
        result = subprocess.run([*run, *limits, image], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello from a /nix/store/")


def test_a_crash_in_the_middle_of_a_cache_write_leaves_nothing_behind(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / ".tmp-abc123").write_text('{"digest": "half')
    kept = cache_dir / ("0" * 64 + ".json")
    kept.write_text("{}")
    LayerCache.in_directory(str(cache_dir))
    assert sorted(os.listdir(cache_dir)) == [kept.name]


def test_two_images_assembled_at_once_write_a_shared_layer_once(tmp_path: Path, fake_store: FakeStore) -> None:
    store_dir, infos = fake_store
    cache = LayerCache.in_directory(str(tmp_path / "cache"))
    first_write_may_finish = threading.Event()

    class GatedStore(CountingStore):
        def writer(self) -> MemoryBlobWriter:
            if self.writes == 0:
                self.writes += 1
                first_write_may_finish.wait(30)
                return MemoryBlobStore.writer(self)
            return super().writer()

    store = GatedStore()
    paths = [infos["base"].path]
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(store_layer(store, cache, paths, store_dir)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    key = layer_key(paths)
    for _ in range(2000):  # until the second thread waits for the first one's lock
        if cache._writing.get(key, (None, 0))[1] == 2:
            break
        threading.Event().wait(0.005)
    assert cache._writing[key][1] == 2
    first_write_may_finish.set()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert store.writes == 1


class CancellingStore(FilesystemBlobStore):
    """A filesystem store whose blob writers set `cancel` once `after` bytes have gone in."""

    def __init__(self, root: str, cancel: threading.Event, after: int) -> None:
        super().__init__(root)
        self.cancel, self.after, self.written = cancel, after, 0

    def writer(self):  # type: ignore[no-untyped-def]
        real = super().writer()
        outer = self

        class Counting:
            def write(self, data: bytes) -> None:
                real.write(data)
                outer.written += len(data)
                if outer.written >= outer.after:
                    outer.cancel.set()

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        return Counting()


def test_assembly_stops_between_chunks_when_cancelled_and_publishes_nothing(tmp_path: Path) -> None:
    """The builder's stop sets the event: the tar writer raises before its next chunk or entry."""
    store_dir = tmp_path / "nix" / "store"
    big = make_path(store_dir, "big", {f"data/{i}.bin": os.urandom(2 << 20) for i in range(8)})
    cancel = threading.Event()
    store = CancellingStore(str(tmp_path / "blobs"), cancel, after=1 << 20)
    cache = LayerCache.in_directory(str(tmp_path / "cache"))
    meta = PackageMeta(name="big", out_path=big.path)
    with pytest.raises(BuildCancelled):
        assemble_closure_image(store, cache, [big], meta, store_dir=str(store_dir), cancel=cancel)
    assert store.written < 8 << 20  # stopped long before the 16 MiB of data were all compressed
    assert list(store.digests()) == []
    assert os.listdir(store.temp_dir) == []
    cancel.clear()
    store.after = 1 << 40
    manifests = assemble_closure_image(store, cache, [big], meta, store_dir=str(store_dir), cancel=cancel)
    assert all(store.size(d) is not None for d in layers_of(store, manifests))
