"""Split a Nix runtime closure into a bounded number of image layers that different images share.

How store paths become layers
=============================

A layer is identified by the set of store paths it holds: the same set always gives the same tar
bytes and the same digest, in any image. Sharing between images therefore needs the *same sets*
to come out of the algorithm for different closures. The most shareable set is a single store
path: ``{glibc}`` is the same layer in every image that contains glibc. So:

1. **Enough budget: one layer per store path.** If the closure has at most ``budget`` paths, every
   path gets a layer of its own and every layer is shared with every other image holding that path.

2. **Otherwise rank the paths** by ``nar_size * popularity``, where *popularity* is the number of
   closure paths that reach the path (itself included). Large paths are worth sharing because
   they are expensive to pull; popular paths (glibc, openssl, zlib...) are the ones other images
   are most likely to contain too. Ties break on the path string, so the ranking is total.

3. **Choose heads, group the rest by who owns it.** Compute the dominator tree of the closure
   graph, rooted at a virtual root that points at the closure's top-level paths: ``d`` dominates
   ``p`` when every chain of references from the top to ``p`` passes through ``d``, i.e. ``p`` is
   in the image only because ``d`` is. The best-ranked paths become *heads*, each with a layer of
   its own, exactly ``{head}``. Every other path goes to the *tail* layer of its nearest head
   dominator: the tail of a head ``h`` holds the small paths only ``h`` pulls in (a library's
   private dependencies); the tail of the virtual root holds what no head dominates, i.e. the
   top-level package (unless it is a head itself) with the small paths several heads share.
   Tails are the merged groups the budget forces; grouping them by dominator keeps them few and
   stable: the tail of ``h`` is the same in two images unless one of them reaches those paths by
   another route.

   Heads are taken in rank order while the layer count (heads + non-empty tails) stays within the
   budget. A head can add two layers (itself and its new tail) or, by emptying its owner's tail,
   none; one that would overshoot is skipped and the next one tried, until the budget is full.

Compared with Nixery (``layers/layers.go``), which makes each direct child of the root in the
dominator tree one layer holding its *whole* dominated subtree, heads here are exact singletons, so
glibc's layer does not change because another image also references one of glibc's dependencies
directly; and a closure dominated by one top-level package is not collapsed into one layer.
Compared with nixpkgs' ``auto-layer.py`` (largest paths first, grouped by the set of large paths
that use them) the ranking also counts popularity, and the number of tails is bounded by the heads.

Layers are ordered base first: by descending popularity of their best member, then by their
paths. Nix closures are acyclic apart from self-references, which are ignored, as are references
to paths outside the closure. Everything is a pure function of the input: no hashing of dict
order, no randomness, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

MAX_OVERLAY_LAYERS = 125
"""Hard cap for the layers of an image: overlayfs rejects more than ~127 lower dirs."""

DEFAULT_MAX_LAYERS = 100

_ROOT = -1


class StorePathLike(Protocol):
    """Anything with the three fields of `nixforge.nix.client.StorePathInfo`."""

    @property
    def path(self) -> str: ...

    @property
    def nar_size(self) -> int: ...

    @property
    def references(self) -> Sequence[str]: ...


def clamp_budget(max_layers: int) -> int:
    """Clamp a requested layer budget to 1..MAX_OVERLAY_LAYERS."""
    return max(1, min(MAX_OVERLAY_LAYERS, int(max_layers)))


class _Graph:
    """The closure as integer-indexed adjacency lists, nodes numbered in sorted path order."""

    def __init__(self, closure: Iterable[StorePathLike]) -> None:
        by_path: dict[str, StorePathLike] = {}
        for info in closure:
            by_path.setdefault(info.path, info)
        self.paths = sorted(by_path)
        index = {path: i for i, path in enumerate(self.paths)}
        self.sizes = [max(0, int(by_path[p].nar_size)) for p in self.paths]
        self.refs: list[list[int]] = [
            sorted({index[r] for r in by_path[p].references if r in index and r != p}) for p in self.paths
        ]
        self.users: list[list[int]] = [[] for _ in self.paths]
        for user, refs in enumerate(self.refs):
            for ref in refs:
                self.users[ref].append(user)
        # The virtual root points at every path nobody references, plus (only for a cycle that no
        # top reaches, which Nix never produces) the first path of each unreached cycle.
        self.tops = [i for i, users in enumerate(self.users) if not users]
        reached = self._reach(self.tops)
        for i in range(len(self.paths)):
            if i not in reached:
                self.tops.append(i)
                reached |= self._reach([i])
        self._top_set = set(self.tops)

    def _reach(self, starts: list[int]) -> set[int]:
        seen = set(starts)
        stack = list(starts)
        while stack:
            for ref in self.refs[stack.pop()]:
                if ref not in seen:
                    seen.add(ref)
                    stack.append(ref)
        return seen

    def successors(self, node: int) -> list[int]:
        return self.tops if node == _ROOT else self.refs[node]

    def predecessors(self, node: int) -> list[int]:
        preds = self.users[node]
        return [*preds, _ROOT] if node in self._top_set else preds

    def reverse_postorder(self) -> list[int]:
        """Nodes reachable from the root, each before everything it references (root first)."""
        seen = {_ROOT}
        order: list[int] = []
        stack: list[tuple[int, Iterable[int]]] = [(_ROOT, iter(self.successors(_ROOT)))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in seen:
                    seen.add(child)
                    stack.append((child, iter(self.successors(child))))
                    break
            else:
                stack.pop()
                order.append(node)
        order.reverse()
        return order

    def popularity(self, order: list[int]) -> list[int]:
        """For each path, how many closure paths reach it (itself included), via ancestor bitsets."""
        ancestors = [1 << i for i in range(len(self.paths))]
        for node in order:
            if node != _ROOT:
                for ref in self.refs[node]:
                    ancestors[ref] |= ancestors[node]
        return [bits.bit_count() for bits in ancestors]

    def dominators(self, order: list[int]) -> dict[int, int]:
        """Immediate dominators (Cooper, Harvey & Kennedy's iterative algorithm)."""
        rank = {node: i for i, node in enumerate(order)}
        idom: dict[int, int] = {_ROOT: _ROOT}

        def intersect(a: int, b: int) -> int:
            while a != b:
                while rank[a] > rank[b]:
                    a = idom[a]
                while rank[b] > rank[a]:
                    b = idom[b]
            return a

        changed = True
        while changed:
            changed = False
            for node in order[1:]:
                new: int | None = None
                for pred in self.predecessors(node):
                    if pred in idom:
                        new = pred if new is None else intersect(pred, new)
                if new is None:
                    new = _ROOT
                if idom.get(node) != new:
                    idom[node] = new
                    changed = True
        return idom


def plan_layers(closure: Iterable[StorePathLike], max_layers: int = DEFAULT_MAX_LAYERS) -> list[tuple[str, ...]]:
    """Group a closure's store paths into at most `max_layers` (clamped) layers of sorted paths.

    Every path appears in exactly one layer; the result depends only on the closure graph, the
    sizes and the budget. See the module docstring for the algorithm.
    """
    graph = _Graph(closure)
    budget = clamp_budget(max_layers)
    count = len(graph.paths)
    if count == 0:
        return []
    order = graph.reverse_postorder()
    popularity = graph.popularity(order)
    if count <= budget:
        groups = [[i] for i in range(count)]
    else:
        idom = graph.dominators(order)
        ranked = sorted(range(count), key=lambda i: (-graph.sizes[i] * popularity[i], graph.paths[i]))
        groups = _group(idom, ranked, budget, count)
    layers = [(max(popularity[i] for i in group), tuple(sorted(graph.paths[i] for i in group))) for group in groups]
    layers.sort(key=lambda item: (-item[0], item[1]))
    return [paths for _, paths in layers]


def _group(idom: dict[int, int], ranked: list[int], budget: int, count: int) -> list[list[int]]:
    """Choose heads in rank order within the budget; put every other path in its owner's tail."""
    children: dict[int, list[int]] = {}
    for node in range(count):
        children.setdefault(idom[node], []).append(node)
    heads: set[int] = set()
    owner = dict.fromkeys(range(count), _ROOT)  # nearest head strictly dominating each non-head
    tail_size = {_ROOT: count}
    layers = 1

    def owned_below(head: int) -> list[int]:
        """Non-heads whose nearest head dominator would become `head`."""
        found: list[int] = []
        stack = list(children.get(head, ()))
        while stack:
            node = stack.pop()
            if node not in heads:
                found.append(node)
                stack.extend(children.get(node, ()))
        return found

    for candidate in ranked:
        if layers >= budget:
            break
        old_owner = owner[candidate]
        moved = owned_below(candidate)
        left = tail_size[old_owner] - 1 - len(moved)
        delta = 1 + (1 if moved else 0) - (1 if left == 0 else 0)
        if layers + delta > budget:
            continue
        heads.add(candidate)
        del owner[candidate]
        for node in moved:
            owner[node] = candidate
        tail_size[old_owner] = left
        tail_size[candidate] = len(moved)
        layers += delta
    tails: dict[int, list[int]] = {}
    for node, head in owner.items():
        tails.setdefault(head, []).append(node)
    return [[head] for head in sorted(heads)] + [tails[key] for key in sorted(tails)]
