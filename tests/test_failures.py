"""Failure inspection: ranks by the evaluators' tie rule, recall per group, and a ranks cache that is
used only when it is sound (anything else is logged once, deleted and ranked again)."""
import hashlib
import json
import logging

import pytest
import torch

from cir_core.cache_files import read_cache, write_cache
from cir_core.data.registry import open_source
from cir_core.evaluation.failures import (
    RANKS_SCHEMA,
    BenchmarkQuery,
    BenchmarkRanking,
    load_ranks,
    rank_queries,
)
from cir_core.evaluation.metrics import target_ranks
from tiny_gallery import tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes


def test_a_tie_counts_against_the_target():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])  # (2 queries, 4 images)
    assert target_ranks(scores, torch.tensor([0, 3])).tolist() == [2, 3]  # 0-based: the tied image comes first


def query(pairid, reference, target, groups=()):
    return BenchmarkQuery(pairid=pairid, reference_id=reference, target_id=target, caption="make it red",
                          groups=groups)


def test_ranks_by_hand_with_ties_and_the_reference_excluded():
    gallery = ["a", "b", "c", "d"]
    scores = {"q1": [0.9, 0.5, 0.5, 0.1],  # reference a excluded; c ties with b: rank 2
              "q2": [0.3, 0.3, 0.3, 0.3],  # everything ties: the target d is ranked last among the 3 kept
              "q3": [0.2, 0.8, 0.5, 0.4]}  # reference is the target: nothing excluded, b above: rank 2
    queries = [query("q1", "a", "c"), query("q2", "b", "d"), query("q3", "c", "c")]

    def score(batch):
        return torch.tensor([scores[q.pairid] for q in batch])

    cases = rank_queries(queries, score, gallery, exclude_reference=True, batch_size=2)
    assert [case.rank for case in cases] == [2, 3, 2]
    assert cases[0].top_ids[0] == "b" and set(cases[0].top_ids[:2]) == {"b", "c"} and "a" not in cases[0].top_ids
    assert cases[0].target_score == pytest.approx(0.5) and cases[0].top_scores == pytest.approx([0.5, 0.5, 0.1])
    assert cases[2].top_ids == ["b", "c", "d"]
    # The same ranks as the evaluators' own function over the same scores.
    matrix = torch.tensor([scores[q.pairid] for q in queries])
    matrix[0, 0] = matrix[1, 1] = float("-inf")
    assert (target_ranks(matrix, torch.tensor([2, 3, 2])) + 1).tolist() == [case.rank for case in cases]
    # A gallery too small for three results never lists the excluded reference.
    small = rank_queries([query("q", "a", "b")], lambda batch: torch.tensor([[0.9, 0.1]]), ["a", "b"], True)
    assert small[0].top_ids == ["b"] and small[0].rank == 1


# ---------------------------------------------------------------------- the ranks cache
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return open_source("shapes", write_tiny_shapes(tmp_path_factory.mktemp("data") / "shapes"))


class FakeScores:
    """Scores in ten levels (many exact ties), fixed per query; a third of the targets score highest
    alone, a third tie with one other image at the top. Counts the queries it scores."""

    def __init__(self, gallery):
        self.gallery, self.scored = gallery, 0

    def __call__(self, batch):
        self.scored += len(batch)
        rows = []
        for q in batch:
            seed = int(hashlib.sha256(q.pairid.encode()).hexdigest()[:8], 16)
            row = torch.randint(0, 10, (len(self.gallery),), generator=torch.Generator().manual_seed(seed)) / 10
            target = self.gallery.index(q.target_id)
            if seed % 3 < 2:
                row[target] = 1.0
            if seed % 3 == 1:
                row[(target + 1) % len(self.gallery)] = 1.0
            rows.append(row)
        return torch.stack(rows)


def ranking(source, path):
    gallery = source.split.gallery
    return BenchmarkRanking(source, gallery, FakeScores(gallery), lambda: path)


def hand_ranks(source, queries):
    """Rank 1 + the images other than the target (and the excluded reference) scoring at least as high."""
    gallery = source.split.gallery
    scores = FakeScores(gallery)(queries)
    ranks = {}
    for q, row in zip(queries, scores.tolist()):
        target = row[gallery.index(q.target_id)]
        others = [s for image, s in zip(gallery, row) if image != q.target_id
                  and not (source.split.exclude_reference and image == q.reference_id)]
        ranks[q.pairid] = 1 + sum(s >= target for s in others)
    return ranks


@pytest.fixture
def cached(source, tmp_path):
    """A sound ranks file, its path and the report computed with it."""
    path = tmp_path / "failures" / "x.ranks"
    first = ranking(source, path)
    report = first.report()
    assert path.is_file() and first.score.scored == len(first.queries())
    return path, report


def test_ranks_and_recall_match_a_hand_count(source, cached):
    path, report = cached
    queries = ranking(source, None).queries()
    ranks = hand_ranks(source, queries)
    assert report.groups["all"].recall["R@1"] == pytest.approx(100 * sum(r == 1 for r in ranks.values()) / len(ranks))
    assert report.groups["all"].recall["R@5"] == pytest.approx(100 * sum(r <= 5 for r in ranks.values()) / len(ranks))
    assert 0 < report.groups["all"].recall["R@1"] < 100
    assert sorted((f.query.pairid, f.rank) for f in report.failures) == sorted(
        (pairid, rank) for pairid, rank in ranks.items() if rank > 1)
    again = ranking(source, path)
    assert again.report() == report and again.score.scored == 0  # read from the cache


def rewrite(path, change):
    """Apply `change` to the cached rows and write them back with a valid checksum (NaN allowed)."""
    payload = json.loads(read_cache(path, RANKS_SCHEMA, 1 << 30)["ranks"])
    payload = change(payload) or payload
    write_cache(path, RANKS_SCHEMA, {"ranks": json.dumps(payload).encode()})


def every_rank(value):
    def change(payload):
        for row in payload["cases"]:
            row["rank"] = value
    return change


def first_case(**fields):
    def change(payload):
        payload["cases"][0].update(fields)
    return change


def second_failure_as_first(payload):
    payload["cases"][1]["pairid"] = payload["cases"][0]["pairid"]


def missed_case_claims_first(payload):
    miss = next(row for row in payload["cases"] if row["rank"] > 1)
    miss["rank"] = 1


FORGED = {
    "every rank 1": every_rank(1),
    "every rank negative": every_rank(-3),
    "every rank 1.9": every_rank(1.9),
    "a rank of 1e30": first_case(rank=1e30),
    "a rank of 10**30": first_case(rank=10**30),
    "a rank true": first_case(rank=True),
    "a miss claiming rank 1": missed_case_claims_first,
    "a pairid twice": second_failure_as_first,
    "a foreign pairid": first_case(pairid="no such query"),
    "a case missing": lambda payload: payload["cases"].pop(),
    "a case too many": lambda payload: payload["cases"].append(dict(payload["cases"][0])),
    "a NaN target score": first_case(target_score=float("nan")),
    "an infinite first score": first_case(top_scores=[float("inf"), 0.5, 0.4]),
    "a foreign first result": first_case(top_ids=["not-in-the-gallery", "x", "y"]),
    "first results out of order": first_case(top_scores=[0.1, 0.5, 0.9]),
    "ids that are numbers": first_case(top_ids=[1, 2, 3]),
    "another split": lambda payload: payload.update(split="shapes/val"),
}


def nested(path):
    write_cache(path, RANKS_SCHEMA, {"ranks": b"[" * 100_000 + b"]" * 100_000})


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGED = {
    "a deeply nested file": nested,
    "a flipped byte": flip_a_byte,
    "cut short": lambda path: path.write_bytes(path.read_bytes()[:-20]),
    "the old plain JSON": lambda path: path.write_text(json.dumps({"split": "shapes/test", "cases": []})),
    "another cache's schema": lambda path: write_cache(path, "caption-bank/2", {"ranks": b"[]"}),
    "over its budget": lambda path: path.write_bytes(b"x" * (64 << 20)),
}


def check_recomputed(source, path, report, caplog):
    fresh = ranking(source, path)
    with caplog.at_level(logging.WARNING):
        assert fresh.report() == report  # the true recall, not the cache's
    assert fresh.score.scored == len(fresh.queries())  # ranked again
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "benchmark ranks" in warnings[0].getMessage()
    sound = load_ranks(path, source.name, fresh.queries(), source.split.gallery)  # written again, and sound
    assert sound == fresh.cases()


@pytest.mark.parametrize("forgery", FORGED, ids=list(FORGED))
def test_forged_ranks_with_a_valid_checksum_are_ranked_again(source, cached, caplog, forgery):
    path, report = cached
    rewrite(path, FORGED[forgery])
    check_recomputed(source, path, report, caplog)


@pytest.mark.parametrize("damage", DAMAGED, ids=list(DAMAGED))
def test_damaged_ranks_files_are_ranked_again(source, cached, caplog, damage):
    path, report = cached
    DAMAGED[damage](path)
    check_recomputed(source, path, report, caplog)


# ---------------------------------------------------------------------- through the engine
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    checkpoint = write_image_sensitive_checkpoint(root / "model")
    return tiny_engine(checkpoint, write_tiny_shapes(root / "shapes"), root / "cache"), checkpoint, root


def test_the_engine_reports_true_recall_over_a_forged_cache(engine):
    served, checkpoint, root = engine
    report = served.benchmark_report()
    assert report.groups["all"].recall["R@1"] < 100 and report.failures
    (path,) = (root / "cache" / "failures").glob("*.ranks")
    rewrite(path, every_rank(1))
    restarted = tiny_engine(checkpoint, root / "shapes", root / "cache")
    assert restarted.benchmark_report().to_json() == report.to_json()
    nested(path)
    restarted = tiny_engine(checkpoint, root / "shapes", root / "cache")
    assert restarted.benchmark_report(keyword="red").to_json() == served.benchmark_report(keyword="red").to_json()


def test_engine_failures_rank_like_the_engines_ground_truth(engine):
    served = engine[0]
    for case in served.benchmark_report().failures[:5]:
        check = served.search(case.query.reference_id, case.query.caption, k=3, ground_truth_id=case.query.target_id)
        assert check.ground_truth.rank == case.rank
        assert case.top_ids == [hit.id for hit in check.hits]
