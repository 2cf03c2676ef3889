"""A sweep as a picture: `pubmedqa-gpt2 summary --over train.seed --plot sweep.html`.

One panel per headline metric (`summary.HEADLINE`): each experiment a point on its group's line
(the groups of `summary.summarize`, named by the params that set them apart), each group's mean a
diamond with its 95% interval: Student's t with n - 1 degrees of freedom, as the runs of a group
are few (a group of one run has no interval). The page is DVC's own plot page (`dvc_render`,
what `dvc plots show` writes), filled with this repository's offline template
(`reports/plots_template.html`, named in `.dvc/config`) when there is one, so that it draws
with no network, as `dvc plots show` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy.stats import t as t_distribution

from pubmedqa_gpt2.core.errors import StageError
from pubmedqa_gpt2.core.io import atomic_file
from pubmedqa_gpt2.core.paths import PLOTS_TEMPLATE
from pubmedqa_gpt2.summary import HEADLINE, Experiment, group_label

CONFIDENCE = 0.95


def mean_interval(stats: dict[str, Any]) -> tuple[float, float] | None:
    """The 95% Student-t interval of a mean, from `summary.describe`'s figures (None for fewer
    than two runs)."""
    n, mean, sd = stats["n"], stats["mean"], stats["sd"]
    if n < 2:
        return None
    half = t_distribution.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def plot_rows(
    groups: Sequence[dict[str, Any]], experiments: Sequence[Experiment]
) -> list[dict[str, Any]]:
    """The plot's data: a "run" row per experiment and metric, a "mean" row per group and
    metric (the group's statistics from `summary.summarize`, with `low` and `high` but for a
    group of one run)."""
    by_name = {e.name: e for e in experiments}
    rows: list[dict[str, Any]] = []
    for number, group in enumerate(groups, start=1):
        label = group_label(number, group)
        members = [by_name[name] for name in group["experiments"]]
        for column, stats in group["metrics"].items():
            for e in members:
                if column in e.metrics:
                    rows.append(
                        {"kind": "run", "group": label, "metric": column, "experiment": e.name,
                         "value": e.metrics[column]}
                    )  # fmt: skip
            mean = {"kind": "mean", "group": label, "metric": column, "value": stats["mean"],
                    "n": stats["n"]}  # fmt: skip
            interval = mean_interval(stats)
            if interval is not None:
                mean["low"], mean["high"] = interval
            rows.append(mean)
    return rows


def spec(rows: list[dict[str, Any]], over: Sequence[str]) -> dict[str, Any]:
    """The vega-lite chart: a row of panels per metric, x scales independent."""
    group = {"field": "group", "type": "nominal", "title": None, "sort": None,
             "axis": {"labelLimit": 480}}  # fmt: skip
    value = {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": False}}
    means = [{"filter": "datum.kind === 'mean'"}]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": rows},
        "title": {
            "text": f"Experiments over {', '.join(over)}: each run a point, each group's mean "
            "a diamond with its 95% t interval",
            "anchor": "middle",
        },
        "facet": {
            "row": {
                "field": "metric",
                "type": "nominal",
                "sort": [column for column, _, _ in HEADLINE],
                "title": None,
                "header": {"labelAngle": 0, "labelAlign": "left", "labelFontWeight": "bold"},
            }
        },
        "resolve": {"scale": {"x": "independent", "y": "independent"}},
        "spec": {
            "width": 420,
            "layer": [
                {
                    "transform": [{"filter": "datum.kind === 'run'"}],
                    "mark": {"type": "point", "opacity": 0.8},
                    "encoding": {
                        "x": value,
                        "y": group,
                        "tooltip": [
                            {"field": "experiment", "type": "nominal"},
                            {"field": "value", "type": "quantitative", "format": ".4f"},
                        ],
                    },
                },
                {
                    "transform": means,
                    "mark": {"type": "rule", "strokeWidth": 2, "color": "black"},
                    "encoding": {
                        "x": {**value, "field": "low"},
                        "x2": {"field": "high"},
                        "y": group,
                    },  # fmt: skip
                },
                {
                    "transform": means,
                    "mark": {
                        "type": "point",
                        "shape": "diamond",
                        "filled": True,
                        "size": 90,
                        "color": "black",
                    },  # fmt: skip
                    "encoding": {
                        "x": value,
                        "y": group,
                        "tooltip": [
                            {"field": "group", "type": "nominal"},
                            {"field": "n", "type": "quantitative", "title": "runs"},
                            {
                                "field": "value",
                                "type": "quantitative",
                                "title": "mean",
                                "format": ".4f",
                            },
                            {"field": "low", "type": "quantitative", "format": ".4f"},
                            {"field": "high", "type": "quantitative", "format": ".4f"},
                        ],  # fmt: skip
                    },
                },
            ],
        },
    }


def write_page(path: Path, chart: dict[str, Any]) -> None:
    """The chart on DVC's plot page, this repository's offline template if there is one,
    written whole or not at all."""
    from dvc_render.html import HTML
    from dvc_render.vega import VegaRenderer
    from dvc_render.vega_templates import Template

    page = PLOTS_TEMPLATE.read_text(encoding="utf-8") if PLOTS_TEMPLATE.is_file() else None
    content = {**chart, "data": {"values": Template.anchor("data")}}
    renderer = VegaRenderer(
        chart["data"]["values"], "sweep", template=Template(content, name="sweep")
    )
    document = HTML(page).with_scripts(renderer.SCRIPTS)
    document.with_element(renderer.generate_html())
    if path.is_dir():
        raise StageError(f"--plot {path}: a folder; name the page's file, e.g. sweep.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            f.write(document.embed())
    except OSError as exc:
        raise StageError(f"--plot {path}: cannot write ({exc.strerror})") from None
