"""Caption groups of relative captions: the one place that lists them.

Failure inspection reports recall per group, so that "view-angle queries against all
queries" is one glance. A caption belongs to a group when one of the group's phrases
occurs in it as whole words, case-insensitively ("side view" matches "a side  view", not
"outside view"). A phrase is a regular expression in which a space matches any run of
spaces; most are plain words. A caption can be in several groups, or in none.

`VIEW_ANGLE` follows the paper's stated limitation, changes of viewpoint: its phrases name
the camera (its angle, distance or framing: "from above", "side view", "close-up", "zoom
out", "a different angle", "focus on its face"). Words that mostly place or pose the
subject ("facing", "behind", "in front of", "side by side") are left out, since on CIRR
most captions with them ask for a position, not a camera. Its precision and recall
against hand labels of CIRR val captions are in docs/failure-inspection.md.
"""
from __future__ import annotations

import re
from functools import lru_cache

VIEW_ANGLE = "view angle"

_SIDE = r"(?:(?:left|right|opposite|other|under|upper|lower|back|front)[\s-]?)?(?:side|front|back|rear|top|bottom|underside)"
_SHOT = r"(?:shot|view|coverage|look|picture|photo|photograph|image)s?"

VIEWPOINT_PHRASES: tuple[str, ...] = (
    r"close(?: |-)?ups?", r"closer(?: |-)?up",
    r"closer(?! (?:to|together|than)\b)",  # "closer to the water" places the subject
    r"zoom(?:s|ed|ing)?",
    r"views?", r"viewpoint", r"perspective", r"aerial", r"bird'?s(?: |-)eye",
    r"(?<!same\s)angle", r"(?:camera|different|other|several|two) angles",  # "perpendicular angles" is a shape
    rf"(?:close|closed|far|far away|farther|further|distant|long|longer|wide|wider|narrow|narrower|tight|tighter) {_SHOT}",
    r"from (?:the )?(?:above|below|overhead|underneath|afar|a distance|far away|an? (?:\w+ )?angle|" + _SIDE + r")",
    r"(?:shot|seen|photographed|viewed|taken) (?:from|by the)",
    rf"(?:show|shows|showing|see) (?:the |its |a )?{_SIDE}(?: and {_SIDE})? of",
    r"focus(?:ed|es|ing)? (?:[\w']+ ){0,4}?(?:face|head|eyes|body)",  # framing on a part; "focus on a dog" is content
    r"camera (?:angle|position|view|distance|placement)", r"close camera",
    r"more distant", r"(?:distant|farther|further) from the camera",
    r"(?:get|move|step|stay|pull|come) (?:a (?:little|bit) )?(?:closer|farther|further|back)",
)

CAPTION_KEYWORD_GROUPS: dict[str, tuple[str, ...]] = {
    VIEW_ANGLE: VIEWPOINT_PHRASES,
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
def _pattern(phrases: tuple[str, ...]) -> re.Pattern:
    alternatives = "|".join(phrase.replace(" ", r"\s+") for phrase in phrases)
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def keyword_groups(caption: str, groups: dict[str, tuple[str, ...]] = CAPTION_KEYWORD_GROUPS) -> tuple[str, ...]:
    """The names of the groups whose phrases occur in `caption`, in the order of `groups`."""
    return tuple(name for name, phrases in groups.items() if _pattern(phrases).search(caption))
