"""``camkit.report``: one self-contained HTML page of an output folder's maps.

The page holds everything (the overlays as embedded PNGs, its styles and a few lines of
script), loads nothing from anywhere and opens offline: a file a team can mail or publish. It
shows the images x methods grid, each map's class and score; the rows can be sorted (by image,
or by a method's score, clicking the column's header) and filtered (by image name or class).
The state is kept in the address's fragment (``#sort=gradcam:desc&filter=cat``), so a link
opens the page sorted and filtered as it was.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ._errors import InputError
from ._save import Result, read_results

__all__ = ["report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
.about { color: #555; margin: 0 0 1rem; }
.controls { margin: 0 0 1rem; display: flex; gap: 1rem; align-items: center; }
input[type=search] { font-size: 1rem; padding: .3rem .5rem; width: 18rem; }
table { border-collapse: collapse; }
th { position: sticky; top: 0; background: #f4f4f6; cursor: pointer; user-select: none;
     padding: .4rem .6rem; text-align: left; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td { padding: .3rem; vertical-align: top; border-top: 1px solid #e3e3e8; }
td.name { font-weight: 600; max-width: 14rem; overflow-wrap: anywhere; }
figure { margin: 0; }
figure img { width: 160px; height: auto; display: block; image-rendering: auto; }
figcaption { font-size: .8rem; color: #333; max-width: 160px; }
"""

_SCRIPT = """
(function () {
  const table = document.getElementById("grid");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const search = document.getElementById("filter");
  const count = document.getElementById("shown");
  let sort = {key: "image", order: "asc"};

  function value(row, key) {
    if (key === "image") return row.dataset.image.toLowerCase();
    const score = JSON.parse(row.dataset.scores)[key];
    return score == null ? -Infinity : score;
  }
  function apply() {
    const text = search.value.trim().toLowerCase();
    const sorted = rows.slice().sort(function (a, b) {
      const x = value(a, sort.key), y = value(b, sort.key);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return sort.order === "asc" ? order : -order;
    });
    let shown = 0;
    for (const row of sorted) {
      const match = !text || row.dataset.search.includes(text);
      row.hidden = !match;
      shown += match ? 1 : 0;
      body.appendChild(row);
    }
    for (const th of table.tHead.rows[0].cells) {
      th.setAttribute("aria-sort", th.dataset.key === sort.key
        ? (sort.order === "asc" ? "ascending" : "descending") : "none");
    }
    count.textContent = shown + " of " + rows.length + " images";
    const state = "sort=" + encodeURIComponent(sort.key) + ":" + sort.order
      + (text ? "&filter=" + encodeURIComponent(text) : "");
    history.replaceState(null, "", "#" + state);
  }
  function restore() {
    const params = new URLSearchParams(location.hash.slice(1));
    const given = (params.get("sort") || "").split(":");
    if (given[0]) sort = {key: given[0], order: given[1] === "desc" ? "desc" : "asc"};
    search.value = params.get("filter") || "";
  }
  for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", function () {
      const key = th.dataset.key;
      const first = key === "image" ? "asc" : "desc";
      sort = sort.key === key
        ? {key: key, order: sort.order === "asc" ? "desc" : "asc"}
        : {key: key, order: first};
      apply();
    });
  }
  search.addEventListener("input", apply);
  restore();
  apply();
})();
"""


def _embedded(path: Path) -> str:
    """A PNG file as a ``data:`` address, so that the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _caption(row: Result) -> str:
    name = f"{row.label} ({row.target})" if row.label else f"class {row.target}"
    return f"{name}, score {row.score:.4g}"


def report(
    out_dir: str | Path,
    output: str | Path | None = None,
    *,
    title: str = "camkit report",
    rows: Sequence[Result] | None = None,
) -> Path:
    """Write ``report.html`` (or ``output``) for the maps in ``out_dir`` (what
    :func:`camkit.save` and ``camkit explain`` write there), and return its path.

    One row per image, one column per method (and target, for several per image): the overlay,
    the class and the score. Images are embedded: the file stands alone.
    """
    root = Path(out_dir)
    found = list(read_results(root) if rows is None else rows)
    if not found:
        raise InputError(
            f"out_dir={str(out_dir)!r} holds no results.csv rows; write maps with "
            "camkit.save(...) or camkit explain --out first"
        )
    columns = list(dict.fromkeys(Path(row.overlay).stem for row in found))
    images = list(dict.fromkeys(row.image for row in found))
    cells = {(row.image, Path(row.overlay).stem): row for row in found}
    head = ['<th data-key="image" scope="col">image</th>'] + [
        f'<th data-key="{html.escape(c)}" scope="col" title="sort by score">{html.escape(c)}</th>'
        for c in columns
    ]
    body = []
    for image in images:
        mine = [cells.get((image, column)) for column in columns]
        words = " ".join([image, *(r.label for r in mine if r is not None)]).lower()
        data = [f'data-image="{html.escape(image)}"', f'data-search="{html.escape(words)}"']
        scores = {
            c: r.score if math.isfinite(r.score) else None  # JSON has no NaN
            for c, r in zip(columns, mine, strict=True)
            if r is not None
        }
        data.append(f'data-scores="{html.escape(json.dumps(scores))}"')
        tds = [f'<td class="name">{html.escape(image)}</td>']
        for column, row in zip(columns, mine, strict=True):
            if row is None:
                tds.append("<td></td>")
                continue
            picture = root / row.overlay
            caption = html.escape(_caption(row))
            alt = html.escape(f"{column} map of {image}: {_caption(row)}")
            tds.append(
                f'<td><figure><img src="{_embedded(picture)}" alt="{alt}">'
                f"<figcaption>{caption}</figcaption></figure></td>"
            )
        body.append(f"<tr {' '.join(data)}>{''.join(tds)}</tr>")
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    about = (
        f"{len(images)} images x {len(columns)} maps, written {written} by camkit. Click a "
        "column to sort by its score; type to filter by image or class."
    )
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class=\"about\">{html.escape(about)}</p>",
        '<div class="controls"><input id="filter" type="search" '
        'placeholder="filter by image or class" aria-label="filter">'
        '<span id="shown"></span></div>',
        f'<table id="grid"><thead><tr>{"".join(head)}</tr></thead>',
        f"<tbody>{''.join(body)}</tbody></table>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ])  # fmt: skip
    path = root / "report.html" if output is None else Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
