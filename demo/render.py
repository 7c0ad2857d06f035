"""Engine dataclasses -> values for gradio components (HTML, gallery lists, images, tables).

Nothing here computes with the model: every function reads a result the engine
returned and formats it.
"""
from __future__ import annotations

import html
from collections.abc import Callable

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageOps

from cir_core.evaluation.failures import BenchmarkReport, FailureCase
from cir_core.results import Comparison, GroundTruth, Hit, RetrievalResult, StageTimings
from cir_core.explain import Explanation, RelevanceMap, TokenMatch

TARGET_MARK = "★ target"


def hit_caption(hit: Hit, ground_truth_id: str | None = None) -> str:
    """"#rank · score · id"; the ground truth's mark comes first so a narrow caption still shows it."""
    mark = f"{TARGET_MARK} " if hit.id == ground_truth_id else ""
    return f"{mark}#{hit.rank} · {hit.score:.3f} · {hit.id}"


def gallery_items(hits: list[Hit], image_of: Callable[[str], Image.Image], ground_truth_id: str | None = None
                  ) -> list[tuple[Image.Image, str]]:
    """(thumbnail, caption) pairs for gr.Gallery, best first; `image_of` gives a gallery id's thumbnail."""
    return [(image_of(hit.id), hit_caption(hit, ground_truth_id)) for hit in hits]


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


def prompt_html(explanation: Explanation | None, benchmark_words: bool = False) -> tuple[str, str]:
    """(sentence-prompt chips, auxiliary-prompt chips); `benchmark_words` decodes both prompts with
    the benchmark's own words when the explanation has them."""
    if explanation is None:
        message = "<p>Tick <b>explanations</b> and search to decode the prompt.</p>"
        return message, message
    if benchmark_words and explanation.prompt_dataset_tokens is not None:
        among = "nearest tokens among the benchmark's own words"
        prompt_tokens, auxiliary_tokens = explanation.prompt_dataset_tokens, explanation.auxiliary_dataset_tokens
    else:
        among, prompt_tokens, auxiliary_tokens = "nearest vocabulary tokens", explanation.prompt_tokens, None
    return (token_chips(prompt_tokens, f"Sentence-level prompt: {among}", "cir-prompt"),
            token_chips(auxiliary_tokens or explanation.auxiliary_tokens, f"Learned auxiliary prompt P': {among}"
                        if auxiliary_tokens else "Learned auxiliary prompt P': nearest vocabulary tokens",
                        "cir-auxiliary"))


def _caption_list(title: str, matches, target_id: str | None) -> str:
    items = []
    for match in matches:
        mark = f"<b>{TARGET_MARK}</b> " if target_id is not None and match.image_id == target_id else ""
        width = max(0.0, min(1.0, match.similarity)) * 100
        items.append(f'<li>{mark}{html.escape(match.text)} <span class="cir-similarity">'
                     f'<span style="width:{width:.0f}%"></span>{match.similarity:.3f}</span></li>')
    return f"<div class='cir-captions'><h4>{html.escape(title)}</h4><ol>{''.join(items)}</ol></div>"


PROMPT_NOTE = ("The prompt is a sequence of vectors, not text: the captions and tokens shown are the "
               "texts nearest to it.")


def captions_html(explanation: Explanation | None, target_id: str | None = None) -> str:
    """The 5 texts of the caption bank nearest the composed query and the prompt alone, named by what
    the bank holds, with similarities (the target's description marked), or why there are none."""
    if explanation is None:
        return "<p>Tick <b>explanations</b> and search to see the captions nearest the prompt.</p>"
    if explanation.query_captions is None:
        return f"<p>Nearest captions: {html.escape(explanation.captions_note or 'not available')}.</p>"
    kind = explanation.captions_kind or "captions"
    return ("<div class='cir-caption-row'>"
            + _caption_list(f"Composed query: nearest {kind}", explanation.query_captions, target_id)
            + _caption_list(f"Sentence prompt alone: nearest {kind}", explanation.prompt_captions, target_id)
            + f"</div><p><small>{html.escape(PROMPT_NOTE)}</small></p>")


def heatmap_overlay(view: Image.Image, heat: np.ndarray, title: str = "", colormap: str = "inferno",
                    alpha: float = 0.5, display_size: int = 224) -> Image.Image:
    """Draw a (g, g) map in [0, 1] over an image as the model saw it (`view`), with a colour bar; RGB.

    Composited with numpy and PIL rather than a matplotlib figure, which costs far more per
    image (docs/performance.md) when several maps are drawn per query.
    """
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be 2-D, got shape {heat.shape}")
    cmap = matplotlib.colormaps[colormap]
    shown = view.convert("RGB").resize((display_size, display_size), Image.Resampling.BICUBIC)
    smooth = Image.fromarray(np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)).resize(
        (display_size, display_size), Image.Resampling.BILINEAR)
    colours = cmap(np.asarray(smooth))[..., :3] * 255.0  # (S, S, 3)
    blended = (1.0 - alpha) * np.asarray(shown, dtype=np.float32) + alpha * colours
    overlay = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))

    bar_width, label_width, title_height = 14, 34, 18 if title else 4
    canvas = Image.new("RGB", (display_size + 6 + bar_width + label_width, display_size + title_height + 4), "white")
    canvas.paste(overlay, (0, title_height))
    ramp = np.linspace(1.0, 0.0, display_size)[:, None].repeat(bar_width, axis=1)  # top = 1
    canvas.paste(Image.fromarray((cmap(ramp)[..., :3] * 255).astype(np.uint8)), (display_size + 6, title_height))
    draw = ImageDraw.Draw(canvas)
    for value in (1.0, 0.5, 0.0):
        y = title_height + round((1.0 - value) * (display_size - 1))
        draw.line([(display_size + 6 + bar_width, y), (display_size + 9 + bar_width, y)], fill="black")
        draw.text((display_size + 11 + bar_width, min(max(y - 5, title_height), title_height + display_size - 11)),
                  f"{value:.1f}", fill="black")
    if title:
        draw.text((2, 3), title, fill="black")
    return canvas


def attention_overlay(explanation: Explanation, token: int | None) -> Image.Image:
    """Heatmap of one prompt token's attention (or the average when `token` is None) over the reference."""
    maps = explanation.attention
    if token is None:
        return heatmap_overlay(explanation.reference, maps.average, "all prompt tokens (mean)")
    token = max(0, min(int(token), maps.per_token.shape[0] - 1))
    return heatmap_overlay(explanation.reference, maps.per_token[token],
                           f"prompt token P{token + 1} (patch share {maps.patch_share[token]:.2f})")


def relevance_overlay(relevance: RelevanceMap, result_id: str) -> Image.Image:
    """Heatmap of a result's relevance map over the result as the model saw it."""
    return heatmap_overlay(relevance.view, relevance.grid, f"relevance for {result_id} (score {relevance.score:.3f})",
                           colormap="jet")


def comparison_galleries(comparison: Comparison, image_of: Callable[[str], Image.Image]
                         ) -> list[list[tuple[Image.Image, str]]]:
    """One gallery list per method, in the comparison's order."""
    return [gallery_items(ranking.hits, image_of, ranking.ground_truth.id if ranking.ground_truth else None)
            for ranking in comparison.rankings]


def comparison_summary(comparison: Comparison) -> str:
    lines = []
    for ranking in comparison.rankings:
        truth = f"; ground truth at rank {ranking.ground_truth.rank}" if ranking.ground_truth else ""
        lines.append(f"- **{ranking.name}**: {ranking.description}{truth}")
    return "\n".join(lines + [f"Note: {note}" for note in comparison.notes])


GROUP_HEADERS = ["group", "queries", "R@1", "R@5"]
THUMB = 112  # side of a thumbnail in a failure card, pixels
FAILURE_COLUMNS = 3  # thumbnails per line of a failure card
LABEL_HEIGHT = 18  # the label under each thumbnail
TARGET_FRAME = (222, 160, 0)  # the target's frame, the colour of the results' target mark
# Scenes are white-ish: a grey card and a dark line around each picture keep neighbours apart.
CARD_BACKDROP = (212, 212, 212)
PICTURE_BORDER = (110, 110, 110)


def group_rows(report: BenchmarkReport) -> list[list]:
    """One row per group: name, query count, R@1, R@5 ("all" first)."""
    return [[name, group.queries, round(group.recall["R@1"], 1), round(group.recall["R@5"], 1)]
            for name, group in report.groups.items()]


def failure_count_line(report: BenchmarkReport, shown: int) -> str:
    total = report.groups["all"]
    line = (f"{report.split}: {report.queries} queries ranked, R@1 {total.recall['R@1']:.1f}, "
            f"R@5 {total.recall['R@5']:.1f}. **{len(report.failures)} failure(s)** match the filter")
    line += f"; the first {shown} are shown." if shown < len(report.failures) else "."
    if report.misses:  # a benchmark whose labels say how a first result differs from the target
        line += " What the first result got wrong: " + ", ".join(
            f"{kind} **{count}**" for kind, count in report.misses.items()) + "."
    return line


def missing_picture(side: int) -> Image.Image:
    """What stands for a gallery image that cannot be read: a grey square."""
    return Image.new("RGB", (side, side), (200, 200, 200))


def _thumbnail(image_of: Callable[[str], Image.Image], image_id: str, label: str, framed: bool) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB + LABEL_HEIGHT), CARD_BACKDROP)
    try:
        picture = ImageOps.contain(image_of(image_id).convert("RGB"), (THUMB - 8, THUMB - 8))
    except (OSError, ValueError):  # the engine's QueryError is a ValueError
        picture = missing_picture(THUMB - 8)
    left, top = (THUMB - picture.width) // 2, (THUMB - picture.height) // 2
    tile.paste(picture, (left, top))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([left - 1, top - 1, left + picture.width, top + picture.height], outline=PICTURE_BORDER)
    if framed:
        draw.rectangle([0, 0, THUMB - 1, THUMB - 1], outline=TARGET_FRAME, width=3)
    draw.text((3, THUMB + 3), label[:18], fill="black")
    return tile


def failure_card_image(case: FailureCase, image_of: Callable[[str], Image.Image]) -> Image.Image:
    """One failure as a near-square card for a gallery cell: reference and target (framed, with
    its rank) on one line and the first three results below, each picture bordered on a grey card;
    the caption is the cell's text (`failure_gallery`), where the browser's fonts draw any script.
    `image_of` gives a gallery id's picture (a grey square stands for one it cannot read)."""
    gap = 8
    first_line = [_thumbnail(image_of, case.query.reference_id, "reference", False),
                  _thumbnail(image_of, case.query.target_id, f"target: rank {case.rank}", True)]
    second_line = [_thumbnail(image_of, image_id, f"#{position + 1}  {score:.3f}", False)
                   for position, (image_id, score) in enumerate(zip(case.top_ids, case.top_scores))]
    width = FAILURE_COLUMNS * THUMB + (FAILURE_COLUMNS - 1) * gap
    tile_height = THUMB + LABEL_HEIGHT + gap
    card = Image.new("RGB", (width, 2 * tile_height), CARD_BACKDROP)
    for top, tiles in ((0, first_line), (tile_height, second_line)):
        for position, tile in enumerate(tiles):
            card.paste(tile, (position * (THUMB + gap), top))
    return card


def failure_caption(case: FailureCase) -> str:
    """The text under a failure card: the query and its caption, then the target's rank, how the
    first result missed (when the benchmark says) and the query's groups."""
    return (f"{case.query.pairid}: {case.query.caption}\ntarget rank {case.rank}"
            + (f" · {case.kind}" if case.kind else "") + f" · {', '.join(case.query.groups) or 'no group'}")


def failure_gallery(cases: list[FailureCase], image_of: Callable[[str], Image.Image]
                    ) -> list[tuple[Image.Image, str]]:
    """(card picture, caption) pairs for gr.Gallery."""
    return [(failure_card_image(case, image_of), failure_caption(case)) for case in cases]
