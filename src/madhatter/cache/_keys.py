"""Item keys: what a cached result is filed under.

A stage's input item is keyed on its content (the digest of its pickle). A step's outputs are
filed in a folder named after the step's *lineage*: its own fingerprint chained with those of the
stage's steps before it (:func:`lineage`), under the key of the item they came from. So what
step C made of an item is found by the item's key in C's lineage folder, which says which code,
with which parameters, made it through A and B: edit B and B's and C's lineages change, A's
does not; and the driver finds an item's deepest known step with one lookup per step, no hashing.
A whole-chunk step (``@parallel``) keys its chunk's outputs on the keys of all the chunk's inputs
(:func:`chunk_key`) and each output on its position among them (:func:`output_key`); the steps
after it file under those.

Keys are 32 hex digits of BLAKE2b (128 bits): collisions are not a practical concern.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle

DIGEST_BYTES = 16


def content_key(item: Any) -> str:
    """The key of an input item: the digest of its pickle (protocol 5; cloudpickle for what the
    standard pickle refuses, such as lambdas). Equal items built the same way get equal keys."""
    try:
        data = pickle.dumps(item, protocol=5)
    except Exception:
        data = cloudpickle.dumps(item, protocol=5)
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def derive(fingerprint: str, parent: str) -> str:
    """The key of what a step with ``fingerprint`` made from the input keyed ``parent``."""
    return hashlib.blake2b(f"{fingerprint}/{parent}".encode(), digest_size=DIGEST_BYTES).hexdigest()


def lineage(fingerprints: Sequence[str | None]) -> tuple[str | None, ...]:
    """Each step's fingerprint chained with those before it in the stage; ``None`` from the
    first step that is not cached (the outputs after it depend on its)."""
    chained: list[str | None] = []
    previous = ""
    for fingerprint in fingerprints:
        if fingerprint is None or (chained and chained[-1] is None):
            chained.append(None)
            continue
        previous = derive(previous, fingerprint)
        chained.append(previous)
    return tuple(chained)


def chunk_key(fingerprint: str, parents: Sequence[str]) -> str:
    """The key of what a whole-chunk step made from the chunk of inputs keyed ``parents``."""
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=DIGEST_BYTES)
    for parent in parents:
        digest.update(parent.encode())
    return digest.hexdigest()


def output_key(chunk: str, position: int) -> str:
    """The key of a whole-chunk step's output at ``position`` of the chunk keyed ``chunk``."""
    return derive(chunk, str(position))


def chunk_start_key(first: str) -> str:
    """The key under which a whole-chunk step's stage records how many items the chunk starting
    with the item keyed ``first`` held, so that a rerun cuts its chunks the same way."""
    return derive("chunk-start", first)
