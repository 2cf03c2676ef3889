"""`pubmedqa-gpt2 summary --over PARAM --plot PAGE`: a sweep as a page a person opens."""

from __future__ import annotations

import importlib.resources
import json
import locale
import re
import shutil
import subprocess
import sys

import pytest

from pubmedqa_gpt2 import cli, summary, summary_plot
from pubmedqa_gpt2.core.paths import PLOTS_TEMPLATE

from .conftest import ROOT
from .test_plots import NODE, network_references
from .test_summary import EXP_SHOW


def test_each_run_is_a_point_and_each_group_s_mean_has_its_t_interval():
    experiments, groups = summary.collect(["train.seed"], EXP_SHOW)
    rows = summary_plot.plot_rows(groups, experiments)
    runs = [(r["group"], r["experiment"], r["value"]) for r in rows
            if r["kind"] == "run" and r["metric"] == "accuracy"]  # fmt: skip
    one, two = "Group 1: train.learning_rate=0.001", "Group 2: train.learning_rate=0.0005"
    assert runs == [(one, "a0", 0.50), (one, "a1", 0.56), (one, "a2", 0.53),
                    (two, "b0", 0.60), (two, "b1", 0.62)]  # fmt: skip
    means = {r["group"]: r for r in rows if r["kind"] == "mean" and r["metric"] == "accuracy"}
    # By hand: mean 0.53, sd 0.03, t(0.975, 2 df) = 4.302653: 0.53 -+ 4.302653 x 0.03 / sqrt 3
    assert means[one]["n"] == 3 and means[one]["value"] == pytest.approx(0.53)
    assert (means[one]["low"], means[one]["high"]) == pytest.approx((0.455476, 0.604524), abs=1e-6)
    # mean 0.61, sd 0.0141421, t(0.975, 1 df) = 12.706205: 0.61 -+ 12.706205 x 0.01
    assert (means[two]["low"], means[two]["high"]) == pytest.approx((0.482938, 0.737062), abs=1e-6)
    # Every headline metric these experiments have, and nothing else.
    assert {r["metric"] for r in rows} == {"accuracy", "macro_f1", "accuracy_diff", "mcnemar_p"}


def test_a_group_of_one_run_has_a_mean_and_no_interval():
    assert summary_plot.mean_interval(summary.describe([0.4])) is None
    experiments, groups = summary.collect(["train.seed", "train.learning_rate"], EXP_SHOW[:1] + [
        {"rev": "x", "experiments": [EXP_SHOW[1]["experiments"][0]]}])  # fmt: skip
    rows = summary_plot.plot_rows(groups, experiments)
    (mean,) = [r for r in rows if r["kind"] == "mean" and r["metric"] == "accuracy"]
    assert mean["n"] == 1 and mean["value"] == 0.50 and "low" not in mean
    assert mean["group"] == "Group 1"  # nothing sets it apart


@pytest.fixture
def sweep_page(tmp_path, monkeypatch, capsys):
    """`summary --plot` in a folder with this repository's offline page template."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / PLOTS_TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(ROOT / PLOTS_TEMPLATE, tmp_path / PLOTS_TEMPLATE)
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(EXP_SHOW))
    cli.main(["summary", "--over", "train.seed", "--input", str(saved), "--json",
              "--plot", "plots/sweep.html"])  # fmt: skip
    out, err = capsys.readouterr()
    return tmp_path / "plots/sweep.html", out, err


def test_the_page_is_written_offline_and_json_stays_json(sweep_page):
    page, out, err = sweep_page
    assert [g["n"] for g in json.loads(out)] == [3, 2]  # stdout: the JSON alone
    assert err == "wrote plots/sweep.html: open it in a browser\n"
    html = page.read_text(encoding="utf-8")
    assert network_references(html) == []
    assert html.count("window.vegaEmbed=") == 1 and html.count("vegaEmbed('#") == 1
    # The chart on the page holds the sweep's data: per metric a row per run (EXP_SHOW's
    # accuracies by hand) and a mean per group: 5 runs x 4 metrics + 2 groups x 4 metrics.
    chart, _ = json.JSONDecoder().raw_decode(html, html.index("var spec = ") + len("var spec = "))
    values = chart["data"]["values"]
    assert len(values) == 28
    runs = [(r["experiment"], r["value"]) for r in values
            if r["kind"] == "run" and r["metric"] == "accuracy"]  # fmt: skip
    assert runs == [("a0", 0.50), ("a1", 0.56), ("a2", 0.53), ("b0", 0.60), ("b1", 0.62)]


def page_chart(html: str) -> dict:
    """The vega-lite spec the page hands to vegaEmbed."""
    return json.JSONDecoder().raw_decode(html, html.index("var spec = ") + len("var spec = "))[0]


def plot(saved, target: str) -> None:
    """`pubmedqa-gpt2 summary --over train.seed --input SAVED --plot TARGET`, succeeding."""
    cli.main(["summary", "--over", "train.seed", "--input", str(saved), "--plot", target])


def test_the_page_holds_the_sweep_s_chart_under_its_name(sweep_page):
    """The spec on the page is summary_plot.spec's chart (its six top-level keys, by hand from
    `spec`), the data filled in where it was and nowhere else, in the plot named "sweep" (the
    div vegaEmbed draws into)."""
    html = sweep_page[0].read_text(encoding="utf-8")
    chart = page_chart(html)
    assert sorted(chart) == ["$schema", "data", "facet", "resolve", "spec", "title"]
    assert chart["title"]["text"] == (
        "Experiments over train.seed: each run a point, each group's mean a diamond with its "
        "95% t interval"
    )
    assert chart["facet"]["row"]["field"] == "metric"
    assert [layer["mark"]["type"] for layer in chart["spec"]["layer"]] == ["point", "rule", "point"]
    assert html.count('<div id = "sweep">') == 1 and "vegaEmbed('#sweep', spec)" in html


def test_every_layer_puts_the_groups_on_y_as_named_categories(sweep_page):
    """Runs, rules and means share one y: the group labels as categories (nominal, not an
    order or a quantity), in the order summarize gives them (no sort), untitled, labels up to
    480 pixels wide; x is the value (or the interval's low end, for the rules)."""
    chart = page_chart(sweep_page[0].read_text(encoding="utf-8"))
    groups = {"field": "group", "type": "nominal", "title": None, "sort": None,
              "axis": {"labelLimit": 480}}  # fmt: skip
    layers = chart["spec"]["layer"]
    assert [layer["encoding"]["y"] for layer in layers] == [groups] * 3
    assert [layer["encoding"]["x"]["field"] for layer in layers] == ["value", "low", "value"]


def test_without_the_offline_template_the_page_is_dvc_s_own(tmp_path, monkeypatch, capsys):
    """No reports/plots_template.html here: dvc_render's own page (title "DVC Plot"), which
    loads vega from its CDN, still with the chart."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    plot("exp.json", "sweep.html")
    assert capsys.readouterr().err == "wrote sweep.html: open it in a browser\n"
    html = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert "<title>DVC Plot</title>" in html
    assert '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>' in html
    assert len(page_chart(html)["data"]["values"]) == 28  # 5 runs x 4 metrics + 2 groups x 4


def test_the_page_s_folders_are_made_and_may_be_there(tmp_path, monkeypatch):
    """The page in folders that are not there yet (all of them made), in one that is (the
    current one), and again over the first (its folders there now)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    for target in ("plots/sweeps/lr.html", "sweep.html", "plots/sweeps/lr.html"):
        (tmp_path / target).unlink(missing_ok=True)
        plot("exp.json", target)
        assert "vegaEmbed('#sweep', spec)" in (tmp_path / target).read_text(encoding="utf-8")


@pytest.fixture
def ascii_locale():
    """LC_CTYPE "C": the locale's encoding, which open() takes when not told one, is ASCII."""
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode: open() does not take the locale's encoding")
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


def test_the_template_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch, ascii_locale):
    """An offline template with words that are not ASCII (the real one has some too: it inlines
    vega), under an ASCII locale: the page has them as they are."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / PLOTS_TEMPLATE).parent.mkdir(parents=True)
    (tmp_path / PLOTS_TEMPLATE).write_text(
        "<html><head><title>Expériences — sweep</title>{scripts}</head>"
        "<body>{plot_divs}</body></html>",
        encoding="utf-8",
    )
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    plot("exp.json", "sweep.html")
    html = (tmp_path / "sweep.html").read_text(encoding="utf-8")
    assert html.startswith("<html><head><title>Expériences — sweep</title>")
    assert "vegaEmbed('#sweep', spec)" in html


@pytest.mark.child_process
@pytest.mark.skipif(NODE is None, reason="no node to run the page's scripts")
def test_the_page_s_own_scripts_draw_a_panel_per_metric(sweep_page):
    page = sweep_page[0]
    out = subprocess.run(
        [NODE, str(ROOT / "tests/render_page.js"), str(page)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (plot,) = map(json.loads, out.stdout.splitlines())
    assert plot["title"].startswith("Experiments over train.seed: each run a point")
    texts = set(plot["texts"])
    assert {"accuracy", "macro_f1", "accuracy_diff", "mcnemar_p"} <= texts
    assert "Group 1: train.learning_rate=0.001" in texts


def test_a_folder_or_an_unwritable_page_is_one_line(tmp_path, monkeypatch, capsys):
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(EXP_SHOW))
    (tmp_path / "plots").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target, message in (
        (tmp_path / "plots", "a folder; name the page's file"),
        (blocker / "sweep.html", "cannot write"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["summary", "--over", "train.seed", "--input", str(saved),
                      "--plot", str(target)])  # fmt: skip
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1 and err[0].startswith(f"error: --plot {target}: ") and message in err[0]
        )


DRAW = """
import json, sys
import vl_convert
sys.stdout.write(vl_convert.vegalite_to_svg(json.load(sys.stdin), vl_version="5.21"))
"""


def in_fresh_process(script: str, stdin: str, *args: str, seconds: float = 60) -> str:
    """The stdout of a vl-convert `script` run in a fresh Python (vl-convert's drawing thread,
    started in a process forked from a threaded one as mutmut's test processes are, never
    starts); a failure if it errs or takes over `seconds`."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", script, *args], input=stdin, capture_output=True,
            text=True, timeout=seconds,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"vl-convert drew nothing in {seconds} s")
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def draw(chart: dict, seconds: float = 60) -> str:
    """The chart as SVG, drawn by vl-convert in a fresh process."""
    return in_fresh_process(DRAW, json.dumps(chart), seconds=seconds)


def test_the_chart_draws_a_point_per_run_and_a_diamond_and_interval_per_group():
    """The page's chart compiled and drawn in this process (vl-convert, the vega-lite the page
    inlines): per metric panel, one point per run, and per group a diamond at the mean on its
    interval's rule; the labels in words, whole (not cut short)."""
    pytest.importorskip("vl_convert", reason="vl-convert-python draws the chart")
    experiments, groups = summary.collect(["train.seed"], EXP_SHOW)
    chart = summary_plot.spec(summary_plot.plot_rows(groups, experiments), ["train.seed"])
    svg = draw(chart)
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert texts[-1].startswith("Experiments over train.seed: each run a point")
    for words in (
        "accuracy",
        "macro_f1",
        "accuracy_diff",
        "mcnemar_p",
        "Group 1: train.learning_rate=0.001",
        "Group 2: train.learning_rate=0.0005",
    ):
        assert words in texts, words  # fmt: skip

    def marks(layer: int, kind: str) -> int:
        found = re.findall(
            rf'<g class="mark-{kind} role-mark child_layer_{layer}_marks"[^>]*>(.*?)</g>', svg
        )
        return sum(group.count("<path") + group.count("<line") for group in found)

    # 5 runs x 4 metrics; 2 groups x 4 metrics, each mean with its rule (both groups n >= 2)
    assert (marks(0, "symbol"), marks(1, "rule"), marks(2, "symbol")) == (20, 8, 8)
    # Each rule spans its group's interval (vega's own labels of the drawn marks).
    assert "low: 0.455475868647; group: Group 1: train.learning_rate=0.001; high: 0.60452413" in svg


@pytest.fixture(scope="module")
def vega_lite_schema():
    """The official Vega-Lite v5 JSON schema (shipped in altair), loaded once: 1.8 MB."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema checks the chart")
    pytest.importorskip("altair", reason="altair ships the Vega-Lite schema")
    text = (
        importlib.resources.files("altair") / "vegalite/v5/schema/vega-lite-schema.json"
    ).read_text()
    return jsonschema.Draft7Validator(json.loads(text))


def test_the_page_s_chart_is_vega_lite_v5_as_its_schema_and_vega_embed_read_it(
    sweep_page, vega_lite_schema
):
    """The chart `summary --plot` writes is valid Vega-Lite v5 (the official schema: every key
    one it knows, every enum value one of its own, opacities within [0, 1]), and its "$schema"
    is one the page's vega-embed reads: vega-embed parses the mode and version with the regex
    below (its vega-schema-url-parser, inlined in the offline template); no match is a
    TypeError there and the page draws nothing."""
    html = sweep_page[0].read_text(encoding="utf-8")
    chart = page_chart(html)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in vega_lite_schema.iter_errors(chart)]
    assert errors == []
    parser = r"/schema\/([\w-]+)\/([\w\.\-]+)\.json$/g.exec("
    assert parser in (ROOT / PLOTS_TEMPLATE).read_text(encoding="utf-8")
    found = re.search(r"schema/([\w-]+)/([\w.\-]+)\.json$", chart["$schema"])
    assert found is not None and found.groups() == ("vega-lite", "v5")
    assert chart["$schema"] == "https://vega.github.io/schema/vega-lite/v5.json"


def test_the_title_names_every_swept_param(tmp_path, monkeypatch):
    """Two swept params: both in the title, ", " between them (by hand)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.json").write_text(json.dumps(EXP_SHOW))
    cli.main(["summary", "--over", "train.seed", "train.learning_rate", "--input", "exp.json",
              "--plot", "sweep.html"])  # fmt: skip
    chart = page_chart((tmp_path / "sweep.html").read_text(encoding="utf-8"))
    assert chart["title"]["text"] == (
        "Experiments over train.seed, train.learning_rate: each run a point, each group's mean "
        "a diamond with its 95% t interval"
    )


TOOLTIP_KEYS = ("experiment", "value", "group", "runs", "mean", "low", "high")

SCENEGRAPH = """
import json, sys
import vl_convert

KEYS = json.loads(sys.argv[1])


def tooltips_as_descriptions(node):
    if isinstance(node, dict):
        for encode in (node.get("encode") or {}).values():
            if isinstance(encode, dict) and "tooltip" in encode:
                tip = "(" + encode.pop("tooltip")["signal"] + ")"
                text = " + '\\\\n' + ".join(f"'{k}\\\\t' + {tip}['{k}']" for k in KEYS)
                encode["description"] = {"signal": text}
        for value in node.values():
            tooltips_as_descriptions(value)
    elif isinstance(node, list):
        for value in node:
            tooltips_as_descriptions(value)


vega = vl_convert.vegalite_to_vega(json.load(sys.stdin), vl_version="5.21")
tooltips_as_descriptions(vega)
sys.stdout.write(json.dumps(vl_convert.vega_to_scenegraph(vega)))
"""

_scenegraphs: dict[str, dict] = {}


def scenegraph(chart: dict, seconds: float = 60) -> dict:
    """The chart as vega draws it (its scenegraph: every drawn mark with its x, y, shape,
    opacity, stroke, fill, text, ...), by vl-convert in a fresh process as `draw` does, once
    per chart. Vega's scenegraph leaves tooltips out, so each mark's tooltip is drawn into its
    description instead ("key<TAB>text" lines, for the keys of TOOLTIP_KEYS; read them back
    with `tooltip`)."""
    pytest.importorskip("vl_convert", reason="vl-convert-python draws the chart")
    key = json.dumps(chart, sort_keys=True)
    if key not in _scenegraphs:
        out = in_fresh_process(SCENEGRAPH, key, json.dumps(TOOLTIP_KEYS), seconds=seconds)
        _scenegraphs[key] = json.loads(out)["scenegraph"]
    return _scenegraphs[key]


def find(node: dict, **wanted) -> list[dict]:
    """The marks under `node` (depth first, in drawing order) whose fields are `wanted`."""
    found = []
    if all(node.get(k) == v for k, v in wanted.items()) and "marktype" in node:
        found.append(node)
    for item in node.get("items", []):
        found += find(item, **wanted)
    return found


def tooltip(item: dict) -> dict[str, str]:
    """A drawn item's tooltip, from the description `scenegraph` drew it into."""
    lines = (line.split("\t", 1) for line in item["description"].split("\n"))
    return {k: v for k, v in lines if v != "undefined"}


def drawn_sweep(sweep_page) -> tuple[dict, list[dict]]:
    """The scenegraph of the chart on `summary --plot`'s page and its panels (cells) in order."""
    scene = scenegraph(page_chart(sweep_page[0].read_text(encoding="utf-8")))
    (cells,) = find(scene, name="cell")
    return scene, cells["items"]


def test_the_drawing_has_a_centred_title_and_a_panel_row_per_headline_metric(sweep_page):
    """The title once, centred; a row per headline metric these experiments have, in HEADLINE's
    order, each named by a bold label laid flat (angle 0) and starting at its left; each panel
    420 pixels wide; the group labels on y whole, up to 480 pixels (labelLimit)."""
    scene, cells = drawn_sweep(sweep_page)
    (title,) = [t for m in find(scene, role="title-text") for t in m["items"]
                if t["text"].startswith("Experiments over")]  # fmt: skip
    assert title["text"] == (
        "Experiments over train.seed: each run a point, each group's mean a diamond with its "
        "95% t interval"
    )
    assert title["align"] == "center"
    (headers,) = find(scene, role="row-header")
    labels = [t for m in find(headers, role="title-text") for t in m["items"]]
    assert [t["text"] for t in labels] == ["accuracy", "macro_f1", "accuracy_diff", "mcnemar_p"]
    assert {(t["angle"], t["align"], t["fontWeight"]) for t in labels} == {(0, "left", "bold")}
    assert [cell["width"] for cell in cells] == [420] * 4
    groups = ["Group 1: train.learning_rate=0.001", "Group 2: train.learning_rate=0.0005"]
    for cell in cells:
        (y_axis,) = [a for m in find(cell, role="axis") for a in m["items"]
                     if a["orient"] == "left"]  # fmt: skip
        (y_labels,) = find(y_axis, role="axis-label")
        assert [(t["text"], t["limit"]) for t in y_labels["items"]] == [(g, 480) for g in groups]


def test_the_drawing_puts_each_run_mean_and_interval_at_its_value(sweep_page):
    """The accuracy panel, by hand. Its x scale spans the intervals (0.455476 to 0.737062),
    not from zero, made nice in vega's ticks of 0.02 (about 420 / 40 = 11 ticks over 0.28):
    0.44 to 0.74, so a value v is drawn at x = 420 (v - 0.44) / 0.30. Runs: hollow points of
    opacity 0.8 at 0.50, 0.56, 0.53 (group 1) and 0.60, 0.62 (group 2): x 84, 168, 126, 224,
    252. Means: black filled diamonds of size 90 at 0.53 and 0.61: x 126, 238. Intervals:
    black rules 2 pixels wide from 0.455476 to 0.604524 (x 21.666 to 230.334) and 0.482938 to
    0.737062 (x 60.113 to 415.887). Each on its group's line."""
    _, cells = drawn_sweep(sweep_page)
    accuracy = cells[0]
    (x_axis,) = [a for m in find(accuracy, role="axis") for a in m["items"]
                 if a["orient"] == "bottom" and find(a, role="axis-label")]  # fmt: skip
    (x_labels,) = find(x_axis, role="axis-label")
    assert [t["text"] for t in x_labels["items"]] == [f"{v / 100:.2f}" for v in range(44, 76, 2)]
    (runs,) = find(accuracy, name="child_layer_0_marks")
    (rules,) = find(accuracy, name="child_layer_1_marks")
    (means,) = find(accuracy, name="child_layer_2_marks")
    assert [p["x"] for p in runs["items"]] == pytest.approx([84, 168, 126, 224, 252])
    assert {(p["shape"], p["opacity"], p["fill"]) for p in runs["items"]} == {
        ("circle", 0.8, "transparent")
    }
    assert [x for r in rules["items"] for x in (r["x"], r["x2"])] == pytest.approx(
        [21.666, 230.334, 60.113, 415.887], abs=1e-3
    )
    # CSS colour names are read in any case: "BLACK" draws the same black
    assert {(r["strokeWidth"], r["stroke"].lower()) for r in rules["items"]} == {(2, "black")}
    assert [d["x"] for d in means["items"]] == pytest.approx([126, 238])
    assert {(d["shape"], d["size"], d["fill"].lower()) for d in means["items"]} == {
        ("diamond", 90, "black")
    }
    one, two = (d["y"] for d in means["items"])
    assert one < two
    assert [p["y"] for p in runs["items"]] == [one] * 3 + [two] * 2
    assert [r["y"] for r in rules["items"]] == [one, two]


def test_the_drawing_s_tooltips_name_the_run_or_the_group_with_4_decimals(sweep_page):
    """Hovering a run names its experiment and value; a mean, its group, its number of runs,
    the mean and the interval's ends: numbers with 4 decimals (EXP_SHOW's accuracies; the
    interval ends by hand in test_each_run_is_a_point_and_each_group_s_mean_has_its_t_interval;
    McNemar's p is 0.5 in every run, so its interval is 0.5 to 0.5)."""
    _, cells = drawn_sweep(sweep_page)
    accuracy, mcnemar = cells[0], cells[3]
    (runs,) = find(accuracy, name="child_layer_0_marks")
    assert [tooltip(p) for p in runs["items"]] == [
        {"experiment": name, "value": value}
        for name, value in (("a0", "0.5000"), ("a1", "0.5600"), ("a2", "0.5300"),
                            ("b0", "0.6000"), ("b1", "0.6200"))
    ]  # fmt: skip
    (means,) = find(accuracy, name="child_layer_2_marks")
    assert [tooltip(d) for d in means["items"]] == [
        {"group": "Group 1: train.learning_rate=0.001", "runs": "3", "mean": "0.5300",
         "low": "0.4555", "high": "0.6045"},
        {"group": "Group 2: train.learning_rate=0.0005", "runs": "2", "mean": "0.6100",
         "low": "0.4829", "high": "0.7371"},
    ]  # fmt: skip
    (means,) = find(mcnemar, name="child_layer_2_marks")
    assert [{k: tooltip(d)[k] for k in ("mean", "low", "high")} for d in means["items"]] == [
        {"mean": "0.5000", "low": "0.5000", "high": "0.5000"}
    ] * 2
