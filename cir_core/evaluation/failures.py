"""Failure inspection: where each benchmark query's target ranks over a gallery, recall per query group,
and the queries whose target is not first.

A labelled benchmark split (`data.spec.BenchmarkSource`) is ranked over the gallery of
an index by a scoring function the caller provides (the engine's: queries -> scores over
every gallery row). Ranks come from `metrics.target_ranks`, the evaluators' one rank
function and tie rule (a tie counts against the target), so the failure view's recall is
the evaluation's.

Ranking a split takes tens of seconds on a CPU, so `BenchmarkRanking` ranks it once, shares
the result between threads and keeps it in a cache file (`cir_core.cache_files`, schema
RANKS_SCHEMA) keyed by model, index and split. A cached file is used only when it holds
exactly the split's queries once each, every rank is a whole number within the gallery,
every score is finite, every listed result is a gallery image, and each rank agrees with
the scores stored beside it; otherwise it is logged, deleted and ranked again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cir_core.cache_files import CacheFileError, json_section, load_cache, parse_json, write_cache
from cir_core.data.spec import BenchmarkSource
from cir_core.evaluation.metrics import exclude, recall_at_k, target_ranks, top_k

logger = logging.getLogger(__name__)

FAILURE_TOP = 3  # results kept per query (what ranked above the target)
GROUP_RECALL_KS = (1, 5)  # recall reported per query group
RANKS_SCHEMA = "benchmark-ranks/2"


@dataclass
class BenchmarkQuery:
    """One benchmark triplet whose images are in the gallery."""

    pairid: str  # query id within its split
    reference_id: str  # gallery id of the reference image
    target_id: str  # gallery id of the target image
    caption: str  # relative caption
    groups: tuple[str, ...]  # query groups (edit type, category, caption keyword groups); may be empty


@dataclass
class FailureCase:
    """A benchmark query's target rank and first results (a failure when the rank is above 1)."""

    query: BenchmarkQuery  # the triplet
    rank: int  # 1-based rank of the target (reference excluded where the protocol excludes it); ties count against it
    target_score: float  # the target's score
    top_ids: list[str]  # gallery ids ranked first, second, third (up to FAILURE_TOP; never an excluded reference)
    top_scores: list[float]  # their scores, best first
    kind: str = ""  # how the first result differs from the target, where the benchmark says ("" otherwise)

    @property
    def top_id(self) -> str:
        return self.top_ids[0]

    def to_json(self) -> dict:
        return {"pairid": self.query.pairid, "caption": self.query.caption, "groups": list(self.query.groups),
                "target_rank": self.rank, "reference": self.query.reference_id, "target": self.query.target_id,
                "target_score": round(self.target_score, 6), "top": self.top_ids,
                **({"miss_kind": self.kind} if self.kind else {})}


@dataclass
class GroupRecall:
    """Recall of the benchmark queries of one group."""

    queries: int  # queries in the group
    recall: dict[str, float]  # "R@1", "R@5": percent of queries with the target within the top k

    def to_json(self) -> dict:
        return {"queries": self.queries, **{name: round(value, 2) for name, value in self.recall.items()}}


@dataclass
class BenchmarkReport:
    """Recall per group over a benchmark split's queries, and the failures matching a filter."""

    split: str  # e.g. "cirr/val"
    queries: int  # queries ranked (those whose reference and target are in the gallery)
    groups: dict[str, GroupRecall]  # "all" first, then each group in the source's order
    failures: list[FailureCase]  # targets not ranked first, filtered by group and keyword; view angle first
    misses: dict[str, int] = field(default_factory=dict)  # those failures by kind, where the benchmark classifies

    def to_json(self) -> dict:
        return {"split": self.split, "queries": self.queries,
                "groups": {name: group.to_json() for name, group in self.groups.items()},
                **({"misses": dict(self.misses)} if self.misses else {}),
                "failures": [case.to_json() for case in self.failures]}


ScoreQueries = Callable[[list[BenchmarkQuery]], torch.Tensor]  # B queries -> (B, N) scores over the gallery rows


# ---------------------------------------------------------------------- ranking
def benchmark_queries(source: BenchmarkSource, gallery_ids: list[str]) -> list[BenchmarkQuery]:
    """The source's queries whose reference and target are both in the gallery."""
    gallery = set(gallery_ids)
    return [BenchmarkQuery(pairid=str(t.pairid), reference_id=t.reference, target_id=t.target, caption=t.caption,
                           groups=tuple(source.groups(t)))
            for t in source.queries if t.target in gallery and t.reference in gallery]


def rank_queries(queries: list[BenchmarkQuery], score: ScoreQueries, gallery_ids: list[str], exclude_reference: bool,
                 batch_size: int = 32) -> list[FailureCase]:
    """Each query's target rank over the gallery and its first FAILURE_TOP results, the reference
    excluded where `exclude_reference` says so (unless it is the target itself)."""
    row_of = {image_id: row for row, image_id in enumerate(gallery_ids)}
    cases = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        excluded = torch.tensor([row_of[q.reference_id] if exclude_reference and q.reference_id != q.target_id
                                 else -1 for q in batch])
        scores = exclude(torch.as_tensor(score(batch), dtype=torch.float32), excluded)  # (B, N)
        targets = torch.tensor([row_of[q.target_id] for q in batch])
        ranks = target_ranks(scores, targets) + 1  # (B,) 1-based
        values, columns = top_k(scores, FAILURE_TOP)  # (B, FAILURE_TOP)
        for position, query in enumerate(batch):
            kept = torch.isfinite(values[position])  # an excluded reference is no result
            cases.append(FailureCase(query=query, rank=int(ranks[position]),
                                     target_score=float(scores[position, targets[position]]),
                                     top_ids=[gallery_ids[c] for c in columns[position][kept].tolist()],
                                     top_scores=[float(v) for v in values[position][kept]]))
    return cases


def group_recall(cases: list[FailureCase]) -> GroupRecall:
    ranks = torch.tensor([case.rank - 1 for case in cases], dtype=torch.long)  # 0-based, as recall_at_k counts
    return GroupRecall(queries=len(cases), recall=recall_at_k(ranks, GROUP_RECALL_KS))


def select_failures(cases: list[FailureCase], first_groups: tuple[str, ...], group: str | None = None,
                    keyword: str | None = None) -> list[FailureCase]:
    """The cases whose target is not first, in `group` and with `keyword` in the caption (None or
    "" = any): queries of `first_groups` first (in that order), then worst rank first."""
    keyword = (keyword or "").strip().lower()
    first = {name: position for position, name in enumerate(first_groups)}
    chosen = [case for case in cases if case.rank > 1
              and (not group or group in case.query.groups) and keyword in case.query.caption.lower()]
    return sorted(chosen, key=lambda case: (min((first.get(g, len(first)) for g in case.query.groups),
                                                default=len(first)), -case.rank))


# ---------------------------------------------------------------------- the cache
def ranks_file(cache_dir: str | Path, model_name: str, key: list, source: BenchmarkSource) -> Path:
    """The cache file of the ranks of `source` under the model and index that `key` identifies."""
    digest = hashlib.sha256(json.dumps([*key, source.cache_key()], sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{model_name}-{source.name.replace('/', '-')}-{digest}.ranks"


def ranks_budget(queries: list[BenchmarkQuery], gallery_ids: list[str]) -> int:
    """Bytes a ranks file of `queries` may take: every id at its longest, escaped, and the scores."""
    longest_id = max(map(len, gallery_ids), default=0)
    longest_pairid = max((len(q.pairid) for q in queries), default=0)
    per_query = 6 * (longest_pairid + FAILURE_TOP * longest_id) + 32 * (FAILURE_TOP + 1) + 128
    return (1 << 16) + len(queries) * per_query


def save_ranks(path: str | Path, split: str, cases: list[FailureCase]) -> None:
    rows = [{"pairid": case.query.pairid, "rank": case.rank, "target_score": case.target_score,
             "top_ids": case.top_ids, "top_scores": case.top_scores} for case in cases]
    write_cache(path, RANKS_SCHEMA, {"ranks": json_section({"split": split, "cases": rows})})


def load_ranks(path: str | Path, split: str, queries: list[BenchmarkQuery], gallery_ids: list[str]
               ) -> list[FailureCase] | None:
    """The cached ranks of `queries` (in their order), or None when there are none or they cannot be
    used (then logged in one line and deleted)."""
    def parse(sections: dict[str, bytes]) -> list[FailureCase]:
        if set(sections) != {"ranks"}:
            raise CacheFileError(f"sections {sorted(sections)}, expected ranks")
        return cases_from_json(parse_json(sections["ranks"], "the ranks"), split, queries, gallery_ids)

    return load_cache(path, RANKS_SCHEMA, ranks_budget(queries, gallery_ids), parse, "benchmark ranks")


def cases_from_json(payload: Any, split: str, queries: list[BenchmarkQuery], gallery_ids: list[str]
                    ) -> list[FailureCase]:
    """The cases a ranks file holds, in the order of `queries`; CacheFileError on anything that is
    not exactly one consistent case per query."""
    if not isinstance(payload, dict) or payload.get("split") != split:
        raise CacheFileError(f"not the ranks of {split}")
    rows = payload.get("cases")
    if not isinstance(rows, list) or len(rows) != len(queries):
        raise CacheFileError(f"{len(rows) if isinstance(rows, list) else 'no'} cases for {len(queries)} queries")
    by_pairid = {query.pairid: query for query in queries}
    gallery = set(gallery_ids)
    cases: dict[str, FailureCase] = {}
    for position, row in enumerate(rows):
        case = _case_from_json(row, by_pairid, gallery, len(gallery_ids))
        if case.query.pairid in cases:
            raise CacheFileError(f"case {position}: query {case.query.pairid!r:.60} appears twice")
        cases[case.query.pairid] = case
    return [cases[query.pairid] for query in queries]  # one per query: as many rows, all distinct, all known


def _case_from_json(row: Any, by_pairid: dict[str, BenchmarkQuery], gallery: set[str], gallery_size: int
                    ) -> FailureCase:
    if not isinstance(row, dict):
        raise CacheFileError(f"a case is {type(row).__name__}, not an object")
    pairid = row.get("pairid")
    if not isinstance(pairid, str) or pairid not in by_pairid:
        raise CacheFileError(f"query {pairid!r:.60} is not one of the benchmark's")
    where = f"query {pairid!r:.60}"
    rank = row.get("rank")
    if type(rank) is not int or not 1 <= rank <= gallery_size:
        raise CacheFileError(f"{where}: rank {rank!r:.40} is not a whole number from 1 to {gallery_size}")
    target_score = _finite(row.get("target_score"), where)
    top_ids, top_scores = row.get("top_ids"), row.get("top_scores")
    if not (isinstance(top_ids, list) and isinstance(top_scores, list)
            and 1 <= len(top_ids) == len(top_scores) <= FAILURE_TOP):
        raise CacheFileError(f"{where}: not 1 to {FAILURE_TOP} first results with a score each")
    if not all(isinstance(image_id, str) and image_id in gallery for image_id in top_ids) or (
            len(set(top_ids)) != len(top_ids)):
        raise CacheFileError(f"{where}: a first result is not a gallery image, or is listed twice")
    top_scores = [_finite(value, where) for value in top_scores]
    if top_scores != sorted(top_scores, reverse=True):
        raise CacheFileError(f"{where}: the first results are not in order of score")
    # Exactly `rank` images (the target among them) score at least the target's score.
    query = by_pairid[pairid]
    if (sum(score >= target_score for score in top_scores) != min(rank, len(top_scores))
            or (rank <= len(top_ids) and query.target_id not in top_ids[:rank])):
        raise CacheFileError(f"{where}: rank {rank} disagrees with the scores stored beside it")
    return FailureCase(query=query, rank=rank, target_score=target_score, top_ids=top_ids, top_scores=top_scores)


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CacheFileError(f"{where}: score {value!r:.40} is not a finite number")
    return float(value)


# ---------------------------------------------------------------------- shared by threads
class BenchmarkRanking:
    """The ranks of a benchmark split's queries over one gallery: ranked once (or read from the cache)
    and shared by every thread; a second caller waits for the first instead of ranking again."""

    def __init__(self, source: BenchmarkSource, gallery_ids: list[str], score: ScoreQueries,
                 cache_file: Callable[[], Path | None] = lambda: None):
        """`score` gives the scores of a batch of queries over the gallery rows of `gallery_ids`;
        `cache_file` says where the ranks are cached (None: kept in memory only), asked on first use."""
        self.source = source
        self.gallery_ids = list(gallery_ids)
        self.score = score
        self.cache_file = cache_file
        self._queries: list[BenchmarkQuery] | None = None
        self._queries_lock = threading.Lock()
        self._cases: list[FailureCase] | None = None
        self._cases_lock = threading.Lock()  # held while ranking

    @property
    def ready(self) -> bool:
        """Whether the ranks are at hand (computed or read from the cache)."""
        return self._cases is not None

    def queries(self) -> list[BenchmarkQuery]:
        """The split's queries whose reference and target are in the gallery (read once)."""
        with self._queries_lock:
            if self._queries is None:
                self._queries = benchmark_queries(self.source, self.gallery_ids)
            return self._queries

    def cases(self) -> list[FailureCase]:
        """Every query's case, failure or not, in the order of `queries()`."""
        with self._cases_lock:
            if self._cases is None:
                path = self.cache_file()
                cases = (load_ranks(path, self.source.name, self.queries(), self.gallery_ids)
                         if path is not None else None)
                if cases is None:
                    cases = self.compute()
                    if path is not None:
                        try:
                            save_ranks(path, self.source.name, cases)
                        except (OSError, ValueError) as error:  # ValueError: a score that is not finite
                            logger.warning("could not cache the benchmark ranks in %s: %s", path, error)
                self._cases = cases
            return self._cases

    def compute(self) -> list[FailureCase]:
        """Rank every query (no cache)."""
        started = time.perf_counter()
        cases = rank_queries(self.queries(), self.score, self.gallery_ids, self.source.split.exclude_reference)
        logger.info("%s: %d of %d benchmark queries miss their target at rank 1 (ranked in %.1f s)",
                    self.source.name, sum(case.rank > 1 for case in cases), len(cases),
                    time.perf_counter() - started)
        return cases

    def failures(self, group: str | None = None, keyword: str | None = None) -> list[FailureCase]:
        return select_failures(self.cases(), self.source.first_groups, group, keyword)

    def report(self, group: str | None = None, keyword: str | None = None) -> BenchmarkReport:
        """Recall@1/5 of all queries and of each group, and the failures of `group` / `keyword`."""
        cases = self.cases()
        groups = {"all": group_recall(cases)}
        for name in self.source.group_names():
            groups[name] = group_recall([case for case in cases if name in case.query.groups])
        failures = self.failures(group, keyword)
        misses: dict[str, int] = {}
        if self.source.classify_miss is not None:
            failures = [replace(case, kind=self.source.classify_miss(case.query.target_id, case.top_id))
                        for case in failures]
            misses = dict.fromkeys(self.source.miss_kinds, 0)
            for case in failures:
                misses[case.kind] = misses.get(case.kind, 0) + 1
        return BenchmarkReport(split=self.source.name, queries=len(cases), groups=groups, failures=failures,
                               misses=misses)
