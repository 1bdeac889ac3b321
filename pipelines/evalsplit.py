"""Which half of an evaluation set an item belongs to: tuning or reporting.

Knobs (hybrid alpha, fusion, boosts, LoRA defaults) are chosen on the tuning half only; the README and
the gate report the reporting half. The split is a fixed hash of a stable item id, so it never depends
on file order, on how many items exist, or on the scores, and adding items never moves old ones.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["tuning", "reporting"]

# Fixed once and never tuned: changing it reshuffles every item and voids past "reporting" numbers.
# Other salts exist only for the split-robustness check in bench/tune_retrieval.py.
SPLIT_SALT = "evalsplit-v1"


def split_of(item_id: str, salt: str = SPLIT_SALT) -> Split:
    """`tuning` or `reporting` for `item_id`, from the parity of sha256(salt:item_id).

    Pass the id the item is known by everywhere (a golden query's `_id`); an item derived from a golden
    query (e.g. its in-domain eval twin) should pass that query's id so both land in the same half.
    """
    digest = hashlib.sha256(f"{salt}:{item_id}".encode()).digest()
    return "tuning" if int.from_bytes(digest[:8], "big") % 2 == 0 else "reporting"
