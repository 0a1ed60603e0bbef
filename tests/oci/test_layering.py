"""Properties of the closure layering algorithm, on random DAGs and on hand-made closures."""

from __future__ import annotations

import hashlib
import random

from attrs import frozen
from hypothesis import given, settings
from hypothesis import strategies as st

from nixforge.oci.layering import MAX_OVERLAY_LAYERS, clamp_budget, plan_layers


@frozen
class Info:
    """A stand-in for nixforge.nix.client.StorePathInfo."""

    path: str
    nar_size: int
    references: tuple[str, ...]


def store_path(tag: str) -> str:
    return f"/nix/store/{hashlib.sha256(tag.encode()).hexdigest()[:32]}-{tag}"


@st.composite
def closures(draw: st.DrawFn, prefix: str = "p", min_size: int = 1, max_size: int = 40) -> list[Info]:
    """A random closure: node i may reference any node j > i (a DAG), random sizes."""
    count = draw(st.integers(min_size, max_size))
    names = [f"/nix/store/{prefix}{i:04d}-{prefix}{i}" for i in range(count)]
    infos = []
    for i in range(count):
        later = list(range(i + 1, count))
        refs = draw(st.lists(st.sampled_from(later), max_size=6, unique=True)) if later else []
        size = draw(st.integers(0, 10**8))
        self_ref = draw(st.booleans())
        infos.append(Info(names[i], size, tuple(names[j] for j in refs) + ((names[i],) if self_ref else ())))
    return infos


def closure_of(root: str, infos: list[Info]) -> list[Info]:
    by_path = {info.path: info for info in infos}
    seen, stack = {root}, [root]
    while stack:
        for ref in by_path[stack.pop()].references:
            if ref not in seen:
                seen.add(ref)
                stack.append(ref)
    return [by_path[p] for p in sorted(seen)]


@settings(max_examples=200, deadline=None)
@given(closures(), st.integers(-5, 200))
def test_budget_respected_and_every_path_exactly_once(infos: list[Info], budget: int) -> None:
    layers = plan_layers(infos, budget)
    assert 1 <= len(layers) <= clamp_budget(budget)
    placed = [path for layer in layers for path in layer]
    assert sorted(placed) == sorted(info.path for info in infos)
    assert len(placed) == len(set(placed))
    assert all(layer and list(layer) == sorted(layer) for layer in layers)


@settings(max_examples=100, deadline=None)
@given(closures(), st.integers(1, 60), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(infos: list[Info], budget: int, rnd: random.Random) -> None:
    shuffled = [Info(i.path, i.nar_size, tuple(rnd.sample(i.references, len(i.references)))) for i in infos]
    rnd.shuffle(shuffled)
    assert plan_layers(shuffled, budget) == plan_layers(infos, budget)
    assert plan_layers(infos, budget) == plan_layers(infos, budget)


@settings(max_examples=100, deadline=None)
@given(closures())
def test_one_layer_per_path_when_the_budget_allows(infos: list[Info]) -> None:
    layers = plan_layers(infos, len(infos))
    assert sorted(layers) == sorted((info.path,) for info in infos)


@st.composite
def two_images_sharing(draw: st.DrawFn) -> tuple[list[Info], list[Info], str]:
    """Two closures that both contain a large dependency `shared` and its own small closure."""
    base = draw(closures(prefix="s", max_size=8))
    shared = base[0].path
    base[0] = Info(shared, 10**12, base[0].references)  # larger than any other path times any popularity
    base_closure = closure_of(shared, base)
    images = []
    for prefix in ("a", "b"):
        own = draw(closures(prefix=prefix, max_size=30))
        # Some of the image's own paths use the shared dependency, some use its dependencies directly.
        users = draw(st.lists(st.sampled_from(range(len(own))), min_size=1, unique=True))
        extra = draw(st.lists(st.sampled_from([i.path for i in base_closure]), max_size=3))
        for index in users:
            info = own[index]
            own[index] = Info(info.path, info.nar_size, (*info.references, shared, *extra))
        images.append(own + base_closure)
    return images[0], images[1], shared


@settings(max_examples=150, deadline=None)
@given(two_images_sharing(), st.integers(3, 40))
def test_a_shared_dependency_gets_the_same_layer_in_both_images(
    case: tuple[list[Info], list[Info], str], budget: int
) -> None:
    first, second, shared = case
    assert (shared,) in plan_layers(first, budget)
    assert (shared,) in plan_layers(second, budget)


@settings(max_examples=50, deadline=None)
@given(two_images_sharing())
def test_shared_closure_layers_are_identical_when_each_closure_fits(case: tuple[list[Info], list[Info], str]) -> None:
    first, second, _ = case
    budget = max(len(first), len(second))
    common = {i.path for i in first} & {i.path for i in second}
    layers_a = {layer for layer in plan_layers(first, budget) if set(layer) <= common}
    layers_b = {layer for layer in plan_layers(second, budget) if set(layer) <= common}
    assert layers_a == layers_b == {(path,) for path in common}


def hello_closure() -> list[Info]:
    """hello -> glibc -> (libidn2 -> libunistring), hello -> helper (only hello uses it)."""
    glibc, libidn2, libunistring = store_path("glibc"), store_path("libidn2"), store_path("libunistring")
    hello, helper = store_path("hello"), store_path("hello-helper")
    return [
        Info(hello, 100_000, (glibc, helper, hello)),
        Info(helper, 2_000, (glibc,)),
        Info(glibc, 30_000_000, (libidn2, glibc)),
        Info(libidn2, 300_000, (libunistring,)),
        Info(libunistring, 1_800_000, ()),
    ]


def test_big_popular_paths_alone_and_the_package_with_what_only_it_reaches() -> None:
    infos = hello_closure()
    hello, helper, glibc, libidn2, libunistring = (info.path for info in infos)
    # glibc ranks first; its private dependencies form its tail; hello keeps its private helper.
    layers = plan_layers(infos, 3)
    assert layers == [tuple(sorted((libidn2, libunistring))), (glibc,), tuple(sorted((hello, helper)))]
    # One more layer: libunistring (large and the most popular) leaves glibc's tail.
    layers = plan_layers(infos, 4)
    assert layers == [(libunistring,), (libidn2,), (glibc,), tuple(sorted((hello, helper)))]


def test_a_head_that_would_overshoot_the_budget_is_skipped_for_the_next() -> None:
    infos = hello_closure()
    hello, helper, glibc, libidn2, libunistring = (info.path for info in infos)
    # glibc alone would need two more layers (itself and its tail): libunistring fits instead.
    layers = plan_layers(infos, 2)
    assert layers == [(libunistring,), tuple(sorted((hello, helper, glibc, libidn2)))]


def test_budget_is_clamped_to_what_overlayfs_accepts() -> None:
    infos = [Info(f"/nix/store/{i:032d}-x{i}", i, ()) for i in range(300)]
    assert len(plan_layers(infos, 1000)) == MAX_OVERLAY_LAYERS
    assert len(plan_layers(infos, 0)) == 1
    assert plan_layers([], 10) == []


def test_references_outside_the_closure_are_ignored() -> None:
    infos = [Info("/nix/store/" + "a" * 32 + "-a", 1, ("/nix/store/" + "z" * 32 + "-missing",))]
    assert plan_layers(infos, 5) == [(infos[0].path,)]


def test_a_cycle_does_not_break_the_partition() -> None:
    a, b, c = (f"/nix/store/{ch * 32}-{ch}" for ch in "abc")
    infos = [Info(a, 5, (b,)), Info(b, 7, (c,)), Info(c, 9, (b,))]
    for budget in (1, 2, 3):
        layers = plan_layers(infos, budget)
        assert sorted(p for layer in layers for p in layer) == [a, b, c]
        assert len(layers) <= budget


def test_large_closures_are_layered_quickly() -> None:
    rnd = random.Random(7)
    names = [f"/nix/store/{i:032d}-n{i}" for i in range(3000)]
    infos = [
        Info(names[i], rnd.randrange(10**7), tuple(rnd.sample(names[i + 1 :], min(5, 2999 - i)))) for i in range(3000)
    ]
    layers = plan_layers(infos, 100)
    assert len(layers) == 100
    assert sum(len(layer) for layer in layers) == 3000
