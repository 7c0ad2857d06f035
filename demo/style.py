"""The page's CSS and the one script an event runs in the browser."""

# Fonts named before the generic family so that CJK vocabulary tokens and captions find a glyph
# wherever the visitor has one of the common CJK fonts, instead of a box from a font without it.
CJK_FONTS = ('"Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK KR", "Source Han Sans SC", "PingFang SC", '
             '"Hiragino Sans", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic", "WenQuanYi Micro Hei"')

CSS = f"""
.cir-chip-row {{display: flex; flex-wrap: wrap; align-items: center; gap: 4px; margin: 2px 0;}}
.cir-chip {{border-radius: 10px; padding: 1px 8px; color: #111;
  font-family: ui-monospace, "DejaVu Sans Mono", "Noto Sans Mono CJK SC", {CJK_FONTS}, monospace;}}
.cir-position {{width: 2.5em; font-weight: bold;}}
.cir-caption-row {{display: flex; flex-wrap: wrap; gap: 24px;}}
.cir-captions {{flex: 1 1 360px; font-family: var(--font), {CJK_FONTS}, sans-serif;}}
.cir-captions ol {{margin: 4px 0 0 1.2em; padding: 0;}}
.cir-similarity {{font-family: monospace; color: #555; margin-left: 6px;}}
.cir-similarity span {{display: inline-block; height: 0.6em; background: #f59e0b; margin-right: 4px; max-width: 60px;}}

/* Captions go under the picture, whole: the scenes are about positions, so nothing may cover
   their bottom row, and a rank with its score must not be cut short. Scenes are white-ish, so
   each picture sits on a grey backdrop with a border that keeps neighbours apart. */
.cir-gallery .gallery-item .thumbnail-item {{height: auto; aspect-ratio: auto; display: flex;
  flex-direction: column; background: #d4d4d4;}}
.cir-gallery .gallery-item .thumbnail-item > img {{aspect-ratio: 1 / 1; height: auto; object-fit: contain;
  border: 1px solid #8c8c8c; border-radius: 0; background: #d4d4d4;}}
.cir-gallery .gallery-item .caption-label {{position: static; max-width: none; white-space: pre-line;
  overflow: visible; overflow-wrap: anywhere; text-overflow: clip; border: none; border-radius: 0;
  background: var(--background-fill-secondary); font-family: var(--font), {CJK_FONTS}, sans-serif;}}
.cir-gallery .grid-container {{grid-template-rows: none; grid-auto-rows: auto;}}
.cir-gallery .grid-wrap {{padding-top: 30px;}}  /* below the gallery's floating label */
.cir-cards .gallery-item .thumbnail-item > img {{aspect-ratio: auto;}}  /* failure cards are wider than tall */
"""

# A clicked failure card loads and searches at the top of the page: bring that into view.
SCROLL_TO_QUERY = "() => document.getElementById('query-row').scrollIntoView({behavior: 'smooth', block: 'start'})"
