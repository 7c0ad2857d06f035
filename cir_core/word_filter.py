"""Words a public page never shows as a decoded prompt token.

A prompt vector decoded against the whole WordPiece vocabulary lands, now and then, on a
slur or a sexual word: noise to a researcher, the end of a demo to a visitor. This is a
small curated list of English slurs, sexual and profane words (80 entries), stored as
sha256 digests (first 16 hex digits) so that the source does not spell them out; a token
is blocked when its word (without WordPiece's "##") hashes to one of them.
"""
from __future__ import annotations

import hashlib

BLOCKED_DIGESTS = frozenset({
    "0033728f0fbc83a0", "0508a634445d4016", "05e63c241b46cfaa", "0632813d1fd36b45", "08a841e996781e9e",
    "0f28c4960d96647e", "120f6e5b4ea32f65", "12a667c9be6ff8f6", "158869a97379229b", "16ea09fc78ca83ca",
    "2062f80093066633", "2c32c156cf1a3222", "31506a8448a761a4", "4140197ec7959b1c", "4ae1915834846378",
    "566f532d486c9477", "59cc3cb8a4297301", "5a9d9dcefb56e593", "5b3ae48be122f7ed", "6556c1a58444e10f",
    "665cb762e3bc03d0", "6672b930d5d08ec0", "6ac3c336e4094835", "6adc452d6b74df40", "6ef9d9fd4a0456ee",
    "737dd1bca21d67a7", "74305616b2bc16c0", "7902e27065cfa96f", "796e43a5a8cdb73b", "7e85c676fd97d370",
    "7f5a9ba14cb89dc2", "83ebccea9fff4079", "85fc17f7069acd39", "867d78976655050c", "886d51e97ad7931d",
    "8c5c04391361cbf4", "8f5083e3e5c7dc89", "937d56e49744d206", "94a2b576a9f577e9", "986c99004163a6c5",
    "98b52c4b6b7d1f48", "98d44e13f455d916", "9915ba2d822280f2", "99e367bcad7a502f", "9ae315a94e428a7e",
    "a368606514955567", "a6ee0e6b8b6a6ba1", "a76d588d0047e3b0", "ab26f6966ee37fdf", "acf45488978d9ff4",
    "ad505b0be8a49b89", "ade74a96ae48fd4f", "b690cdbe59f14b3b", "ba6fb01a93edd596", "bb61ef40814ce34c",
    "bd331fb1d24298f5", "be2db2bf99f64685", "c22f315f1b330bfd", "c2c3b68b48832afd", "c3de533e9b7fe63b",
    "c8bd849e3a5aebe0", "c91d7a2081dc6d69", "cc02032349c833ac", "d11f3961726f0347", "d75a838dc758ba17",
    "d84f691fc4981d9d", "d92f4cf1e2d7e812", "dd32831e9d5f3da3", "dd92623b0a4b255f", "e512a05583448f44",
    "e683679358a5aea3", "e99d55248f67be76", "ebc98c1efce2b182", "eef3bd091670c344", "eff26b18165ece9c",
    "f50c51ed2315dcf3", "f59e28f8bb6499dd", "f6952d6eef555ddd", "f9d0d9b18ae9033a", "ff5ae7e8d206066d",
})


def word_digest(token: str) -> str:
    return hashlib.sha256(token.removeprefix("##").lower().encode()).hexdigest()[:16]


def is_blocked(token: str) -> bool:
    """Whether the prompt views must never show `token`."""
    return word_digest(token) in BLOCKED_DIGESTS
