"""Keyword groups of relative captions: the one place that lists them.

Failure inspection reports recall per group, so that "view-angle queries against all
queries" is one glance. A caption belongs to a group when it contains one of the
group's keywords as whole words, case-insensitively ("side" matches "left side", not
"outside"). A caption can be in several groups, or in none.

`VIEW_ANGLE` follows the paper's stated limitation (changes of viewpoint); many of its CIRR
matches come through "facing", "front" and "behind", which also describe positions
(docs/failure-inspection.md gives the counts on CIRR val).
"""
from __future__ import annotations

import re
from functools import lru_cache

VIEW_ANGLE = "view angle"

CAPTION_KEYWORD_GROUPS: dict[str, tuple[str, ...]] = {
    VIEW_ANGLE: ("angle", "view", "facing", "front", "behind", "side", "closer", "close up", "zoom", "above",
                 "below", "profile", "overhead", "turned", "perspective"),
    "count": ("one", "two", "three", "four", "five", "six", "single", "pair", "more", "fewer", "less", "only",
              "multiple", "several", "group"),
    "colour": ("red", "blue", "green", "yellow", "black", "white", "brown", "gray", "grey", "pink", "purple",
               "orange", "color", "colour", "colored", "coloured"),
    "remove": ("remove", "without", "no", "none", "take away", "get rid"),
    "background": ("background", "setting", "outdoors", "outside", "indoors", "inside", "grass", "water", "snow",
                   "sky", "field", "room"),
    "people": ("person", "man", "woman", "people", "human", "boy", "girl", "child", "hand", "holding"),
}


@lru_cache(maxsize=None)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern:
    words = "|".join(re.escape(word).replace(r"\ ", r"\s+") for word in keywords)
    return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


def keyword_groups(caption: str, groups: dict[str, tuple[str, ...]] = CAPTION_KEYWORD_GROUPS) -> tuple[str, ...]:
    """The names of the groups whose keywords occur in `caption`, in the order of `groups`."""
    return tuple(name for name, keywords in groups.items() if _pattern(keywords).search(caption))
