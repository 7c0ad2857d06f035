"""Engine dataclasses -> values for gradio components (HTML, gallery lists, images, tables).

Nothing here computes with the model: every function reads a result the engine
returned and formats it.
"""
from __future__ import annotations

import html

from PIL import Image

from cir_core.engine import Comparison, FailureCase, GroundTruth, Hit, RetrievalResult, StageTimings
from cir_core.explain import Explanation, TokenMatch, heatmap_overlay
from cir_core.transforms import ImageTransform

TARGET_MARK = "★ target"


def hit_caption(hit: Hit, ground_truth_id: str | None = None) -> str:
    """"#rank · score · id"; the ground truth's mark comes first so a narrow caption still shows it."""
    mark = f"{TARGET_MARK} " if hit.id == ground_truth_id else ""
    return f"{mark}#{hit.rank} · {hit.score:.3f} · {hit.id}"


def gallery_items(hits: list[Hit], ground_truth_id: str | None = None) -> list[tuple[str, str]]:
    """(thumbnail path, caption) pairs for gr.Gallery, best first."""
    return [(hit.path, hit_caption(hit, ground_truth_id)) for hit in hits]


def ground_truth_line(truth: GroundTruth | None) -> str:
    if truth is None:
        return ""
    where = "in the results above" if truth.in_top_k else "outside the results shown"
    return f"**Ground truth** `{truth.id}`: rank **{truth.rank}** (score {truth.score:.3f}), {where}."


def latency_markdown(timings: StageTimings) -> str:
    rows = [("image encode", timings.image_encode_ms), ("prompt", timings.prompt_ms),
            ("text encode / compose", timings.compose_ms), ("search", timings.search_ms),
            ("explanations", timings.explain_ms), ("total", timings.total_ms)]
    return "| stage | ms |\n|---|---:|\n" + "\n".join(f"| {name} | {value:.1f} |" for name, value in rows)


def result_summary(result: RetrievalResult) -> str:
    """Markdown above the results: where the reference came from, ground truth, notes."""
    source = f"gallery image `{result.reference_id}`" if result.reference_id else "an uploaded image"
    lines = [f"Reference: {source}; caption: *{html.escape(result.caption[:200])}*"]
    if result.ground_truth is not None:
        lines.append(ground_truth_line(result.ground_truth))
    lines.extend(f"Note: {note}" for note in result.notes)
    return "\n\n".join(lines)


def token_chips(positions: list[list[TokenMatch]], title: str, css_class: str) -> str:
    """HTML: one row per prompt vector, its nearest tokens as chips shaded by similarity.

    Shading is relative to the best similarity shown: prompt vectors are far from every
    word (cosines around 0.2), so absolute shading would be uniformly pale.
    """
    best = max((m.similarity for matches in positions for m in matches), default=1.0)
    scale = 1.0 / best if best > 0 else 1.0
    rows = []
    for index, matches in enumerate(positions):
        chips = "".join(
            f'<span class="cir-chip" style="background: rgba(255, 140, 0, {_shade(m.similarity * scale):.2f})" '
            f'title="cosine {m.similarity:.3f}">{html.escape(m.token)} <small>{m.similarity:.2f}</small></span>'
            for m in matches)
        rows.append(f'<div class="cir-chip-row"><span class="cir-position">P{index + 1}</span>{chips}</div>')
    return f'<div class="{css_class}"><h4>{html.escape(title)}</h4>{"".join(rows)}</div>'


def _shade(relative: float) -> float:
    return max(0.1, min(1.0, relative))


def prompt_html(explanation: Explanation | None) -> tuple[str, str]:
    """(sentence-prompt chips, auxiliary-prompt chips)."""
    if explanation is None:
        message = "<p>Tick <b>explanations</b> and search to decode the prompt.</p>"
        return message, message
    return (token_chips(explanation.prompt_tokens, "Sentence-level prompt: nearest vocabulary tokens", "cir-prompt"),
            token_chips(explanation.auxiliary_tokens, "Learned auxiliary prompt P': nearest vocabulary tokens",
                        "cir-auxiliary"))


def attention_overlay(explanation: Explanation, transform: ImageTransform, token: int | None) -> Image.Image:
    """Heatmap of one prompt token's attention (or the average when `token` is None) over the reference."""
    maps = explanation.attention
    if token is None:
        return heatmap_overlay(explanation.reference, maps.average, transform, "all prompt tokens (mean)")
    token = max(0, min(int(token), maps.per_token.shape[0] - 1))
    return heatmap_overlay(explanation.reference, maps.per_token[token], transform,
                           f"prompt token P{token + 1} (patch share {maps.patch_share[token]:.2f})")


def relevance_overlay(image: Image.Image, grid, transform: ImageTransform, result_id: str, score: float) -> Image.Image:
    return heatmap_overlay(image, grid, transform, f"relevance for {result_id} (score {score:.3f})", colormap="jet")


def comparison_galleries(comparison: Comparison) -> list[list[tuple[str, str]]]:
    """One gallery list per method, in the comparison's order."""
    return [gallery_items(ranking.hits, ranking.ground_truth.id if ranking.ground_truth else None)
            for ranking in comparison.rankings]


def comparison_summary(comparison: Comparison) -> str:
    lines = []
    for ranking in comparison.rankings:
        truth = f"; ground truth at rank {ranking.ground_truth.rank}" if ranking.ground_truth else ""
        lines.append(f"- **{ranking.name}**: {ranking.description}{truth}")
    return "\n".join(lines + [f"Note: {note}" for note in comparison.notes])


FAILURE_HEADERS = ["pairid", "edit", "caption", "target rank", "target score", "ranked first"]


def failure_rows(cases: list[FailureCase]) -> list[list]:
    return [[case.query.pairid, case.query.edit, case.query.caption, case.rank, round(case.target_score, 3),
             case.top_id] for case in cases]
