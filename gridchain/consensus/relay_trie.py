"""The persistent relay trie of the block tree (consensus/chain.py): relay number -> entry.

A trie of tuples keyed by a dense relay number: ``depth`` inner levels above the leaf
level, each node a tuple of up to 16 slots (None where empty). Setting a slot copies one
node per level and shares everything else with the parent entry's trie, so a block costs
one small tuple per level and a lookup is one tuple index per level.
"""

from __future__ import annotations

TRIE_BITS = 4  # 16-way nodes: a network of up to 16 relays needs a single tuple per block
_TRIE_MASK = (1 << TRIE_BITS) - 1


def trie_get(node: tuple, depth: int, number: int) -> object | None:
    if number >> (TRIE_BITS * (depth + 1)):
        return None
    for shift in range(TRIE_BITS * depth, -1, -TRIE_BITS):
        slot = (number >> shift) & _TRIE_MASK
        if slot >= len(node) or node[slot] is None:
            return None
        node = node[slot]
    return node


def trie_set(root: tuple, depth: int, number: int, value: object) -> tuple[tuple, int]:
    while number >> (TRIE_BITS * (depth + 1)):
        root = (root,)  # grow a level: the old trie becomes child 0
        depth += 1
    path = []
    node = root
    for shift in range(TRIE_BITS * depth, 0, -TRIE_BITS):
        slot = (number >> shift) & _TRIE_MASK
        path.append((node, slot))
        node = node[slot] if slot < len(node) and node[slot] is not None else ()
    new = _with_slot(node, number & _TRIE_MASK, value)
    for parent, parent_slot in reversed(path):
        new = _with_slot(parent, parent_slot, new)
    return new, depth


def _with_slot(node: tuple, slot: int, value: object) -> tuple:
    if slot < len(node):
        return node[:slot] + (value,) + node[slot + 1:]
    return node + (None,) * (slot - len(node)) + (value,)


