"""`dvc plots show/diff` pages render with no network: the committed template inlines vega,
.dvc/config names it, the page DVC writes from it loads nothing from the network, its own
scripts draw its plots (in Node, where installed), and (where a headless Chromium is
installed) a screenshot of the page is not blank."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from tools import plots_template

from .conftest import NO_CHROMIUM

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / plots_template.TEMPLATE
CHROMIUM = Path("/usr/bin/chromium")

# Absolute URLs the bundle holds that are never loaded: XML namespaces, the `$schema` of the
# specs, vega-embed's "Open in Vega Editor" (only on a click), an issue cited in a message.
INERT_URLS = (
    "http://www.w3.org/",
    "https://vega.github.io/schema/",
    "https://vega.github.io/editor/",
    "https://github.com/vega/vega-lite/issues/",
)


def network_references(page: str) -> list[str]:
    """What in an HTML page could load something from the network."""
    found = []
    attribute = re.compile(r"""\b(?:src|href|action|data|poster)\s*=\s*["']?\s*(?:https?:)?//""")
    found += [m.group(0) for m in attribute.finditer(page)]
    found += [m.group(0) for m in re.compile(r"url\(\s*[\"']?\s*(?:https?:)?//").finditer(page)]
    found += [m.group(0) for m in re.compile(r"@import\s+[\"']?(?:https?:)?//").finditer(page)]
    found += [
        f"cdn: ...{page[m.start() - 40 : m.end() + 40]}..." for m in re.finditer("cdn", page, re.I)
    ]
    found += [
        url
        for url in re.findall(r"""https?://[^\s"'`)<>]+""", page)
        if not url.startswith(INERT_URLS)
    ]
    return found


def test_the_check_catches_what_it_guards():
    page = TEMPLATE.read_text(encoding="utf-8")
    assert network_references(page) == []
    for tag in (
        '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>',
        '<script src="//example.org/vega.js"></script>',
        '<link rel="stylesheet" href="http://example.org/a.css">',
        "<style>@import url(https://example.org/a.css);</style>",
        "<script>fetch('https://example.org/data.json')</script>",
    ):
        assert network_references(page.replace("</head>", tag + "\n</head>")) != [], tag


def test_the_committed_template_loads_nothing_from_the_network():
    page = TEMPLATE.read_text(encoding="utf-8")
    assert network_references(page) == []
    assert "{plot_divs}" in page
    assert "{scripts}" not in page  # where DVC puts its CDN script tags
    assert "window.vegaEmbed=" in page


def test_the_committed_template_is_what_the_builder_builds():
    pytest.importorskip("vl_convert", reason="vl-convert-python (dev extra) builds the template")
    assert TEMPLATE.read_text(encoding="utf-8") == plots_template.build(), (
        "reports/plots_template.html is stale: run `make plots-template` and commit it"
    )


def test_the_builder_bundles_the_vega_lite_dvc_render_emits():
    from dvc_render.vega_templates import LinearTemplate

    schema = LinearTemplate.DEFAULT_CONTENT["$schema"]
    major = plots_template.VEGA_LITE_VERSION.split(".")[0]
    assert schema.endswith(f"/vega-lite/v{major}.json"), schema


@pytest.mark.repo_files
def test_dvc_config_names_the_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    path = config["plots"]["html_template"]
    assert (ROOT / ".dvc" / path).resolve() == TEMPLATE.resolve()


@pytest.mark.repo_files  # reads .dvc/plots/, which mutmut's copy leaves out
def test_plot_titles_and_labels_are_words():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    titles = {}
    for entry in pipeline["plots"]:
        ((plot_id, props),) = entry.items()
        if "title" in props:
            titles[plot_id] = props["title"]
            assert props.get("x_label") and props.get("y_label"), plot_id
    metrics = "dvclive/plots/metrics/"
    assert titles[metrics + "train/loss.tsv"] == "Training loss"
    assert titles[metrics + "eval/loss.tsv"] == "Dev loss"
    assert titles[metrics + "eval/accuracy.tsv"] == "Dev accuracy"
    evaluate = pipeline["stages"]["evaluate"]
    confusion, reliability = [next(iter(p.values())) for p in evaluate["do"]["plots"]]
    assert confusion["title"] == "Confusion matrix, ${item.title}"
    assert reliability["title"].startswith("Calibration, ${item.title} (")
    assert reliability["template"] == "reliability"
    names = {key: item["title"] for key, item in evaluate["foreach"].items()}
    assert names == {"base": "base", "finetuned": "fine-tuned"}
    for plot in (confusion, reliability):
        assert plot["x_label"] and plot["y_label"]
    # The answer to the project's question comes first on the page.
    forest = pipeline["plots"][0]["eval/compare_intervals.json"]
    assert forest["template"] == "forest" and forest["title"] and forest["x_label"]
    assert "eval/compare_intervals.json" in pipeline["stages"]["compare"]["outs"]
    # The custom templates are DVC's plot templates folder's, in git.
    for name in ("reliability", "forest"):
        assert (ROOT / ".dvc/plots" / f"{name}.json").is_file(), name


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots show` in a small git+dvc repository with this repository's config and
    template, a training curve and a confusion matrix like the pipeline's."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    (repo / "reports").mkdir()
    shutil.copy(TEMPLATE, repo / plots_template.TEMPLATE)
    curve = repo / "dvclive/plots/metrics/train/loss.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("timestamp\tstep\tloss\n1\t2\t2.5\n2\t4\t1.9\n3\t6\t1.2\n")
    (repo / "confusion.json").write_text(
        '[{"actual": "yes", "predicted": "yes"}, {"actual": "no", "predicted": "yes"},'
        ' {"actual": "maybe", "predicted": "no"}, {"actual": "no", "predicted": "no"}]'
    )
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    # The compare stage's forest plot rows and an evaluate stage's reliability bins.
    forest = [
        {"metric": metric, "series": series, "value": value, "low": value - 0.05,
         "high": value + 0.05}
        for metric, base, tuned in (("accuracy", 0.46, 0.55), ("macro-F1", 0.33, 0.24),
                                    ("ROUGE-L", 0.10, 0.12), ("METEOR", 0.02, 0.03))
        for series, value in (("base", base), ("fine-tuned", tuned), ("difference", tuned - base))
    ]  # fmt: skip
    (repo / "forest.json").write_text(json.dumps(forest))
    bins = [{"bin": "0.3-0.4", "confidence": 0.36, "accuracy": 0.31, "count": 120},
            {"bin": "0.4-0.5", "confidence": 0.44, "accuracy": 0.47, "count": 300},
            {"bin": "0.5-0.6", "confidence": 0.53, "accuracy": 0.61, "count": 80}]  # fmt: skip
    (repo / "calibration.json").write_text(json.dumps(bins))
    (repo / "dvc.yaml").write_text(
        "plots:\n"
        "  - dvclive/plots/metrics/train/loss.tsv:\n"
        "      {x: step, y: loss, title: Training loss, x_label: Optimizer step,"
        " y_label: Cross-entropy loss}\n"
        "  - confusion.json:\n"
        "      {template: confusion, x: actual, y: predicted,"
        " title: 'Confusion matrix, fine-tuned', x_label: Actual answer,"
        " y_label: Predicted answer}\n"
        "  - forest.json:\n"
        "      {template: forest, x: value, y: metric, title: Fine-tuned against base,"
        " x_label: Value (0 to 1), y_label: Metric}\n"
        "  - calibration.json:\n"
        "      {template: reliability, x: confidence, y: accuracy,"
        " title: 'Calibration, fine-tuned', x_label: Mean confidence, y_label: Accuracy}\n"
    )
    shown = run([sys.executable, "-m", "dvc", "plots", "show"], repo)
    assert "failed to load" not in shown.stderr + shown.stdout
    return repo / "dvc_plots/index.html"


@pytest.mark.child_process
def test_dvc_plots_show_writes_a_page_that_loads_nothing_from_the_network(page):
    html = page.read_text(encoding="utf-8")
    assert network_references(html) == []
    assert html.count("window.vegaEmbed=") == 1  # the inlined bundle
    assert html.count("vegaEmbed('#") == 4  # one per plot
    for words in ("Training loss", "Optimizer step", "Confusion matrix, fine-tuned",
                  "Fine-tuned against base", "Calibration, fine-tuned"):  # fmt: skip
        assert words in html, words


NODE = shutil.which("node")


@pytest.mark.child_process
@pytest.mark.skipif(NODE is None, reason="no node to run the page's scripts")
def test_the_page_s_own_scripts_draw_every_plot(page):
    """The inlined vega draws both plots (tests/render_page.js: Node, a stub DOM, no network):
    the curve's three points joined, the matrix's cells, the titles and labels in words."""
    out = subprocess.run(
        [NODE, str(ROOT / "tests/render_page.js"), str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    plots = {p["title"]: p for p in map(json.loads, out.stdout.splitlines())}
    assert sorted(plots) == ["Calibration, fine-tuned", "Confusion matrix, fine-tuned",
                             "Fine-tuned against base", "Training loss"]  # fmt: skip
    forest, reliability = plots["Fine-tuned against base"], plots["Calibration, fine-tuned"]
    for words in (
        "Each model, 95% bootstrap interval",
        "Fine-tuned minus base (0: no change)",
        "accuracy",
        "macro-F1",
        "ROUGE-L",
        "METEOR",
        "base",
        "fine-tuned",
    ):
        assert words in forest["texts"], words
    assert {"Mean confidence", "Accuracy", "120", "300", "80"} <= set(reliability["texts"])
    assert reliability["line_vertices"] >= 3  # the three bins joined
    curve, matrix = plots["Training loss"], plots["Confusion matrix, fine-tuned"]
    assert curve["line_vertices"] == 3
    assert {"Optimizer step", "Cross-entropy loss"} <= set(curve["texts"])
    assert matrix["rects"] >= 4
    assert {"Actual answer", "Predicted answer", "maybe", "no", "yes"} <= set(matrix["texts"])


def non_white_fraction(png: bytes) -> float:
    """The fraction of pixels of an 8-bit RGB/RGBA PNG that are not near-white (no PIL)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, color = header[8], header[9]
    assert depth == 8 and color in (2, 6), (depth, color)
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    previous, rows = bytearray(stride), []
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, data, row = line[0], line[1:], bytearray(stride)
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 0:
                p = 0
            elif kind == 1:
                p = a
            elif kind == 2:
                p = b
            elif kind == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else b if pb <= pc else c
            row[i] = (data[i] + p) & 0xFF
        rows.append(row)
        previous = row
    dark = sum(
        1 for row in rows for x in range(width) if min(row[x * channels : x * channels + 3]) < 200
    )
    return dark / (width * height)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with its caches and settings (dconf, ...) in the test's folder."""
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
             "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )  # fmt: skip


def screenshot(html: Path, tmp_path: Path) -> bytes:
    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=800,600", html.as_uri())
    return shot.read_bytes()


@pytest.mark.child_process
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_a_screenshot_of_the_page_is_not_blank(page, tmp_path):
    # Axes, lines and labels cover more than a sliver of the page; a page whose scripts
    # failed to load is white.
    assert non_white_fraction(screenshot(page, tmp_path)) > 0.005


@pytest.mark.child_process
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
@pytest.mark.parametrize("plot", ["forest.json", "calibration.json"])
def test_a_screenshot_of_each_new_plot_alone_is_not_blank(page, plot, tmp_path):
    """The forest plot and the reliability diagram, each on a page of its own (`dvc plots
    show <file>`), drawn by the browser: not a blank page."""
    repo = page.parent.parent
    run([sys.executable, "-m", "dvc", "plots", "show", plot, "-o", str(tmp_path / "one")], repo)
    assert non_white_fraction(screenshot(tmp_path / "one/index.html", tmp_path)) > 0.005


@pytest.mark.child_process
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_the_browser_draws_the_new_plots_titles_and_labels(page, tmp_path):
    """The custom templates ask vega-embed for SVG (`usermeta.embedOptions`), so the page the
    browser has drawn holds their words as text: titles, panels, axes, the bins' counts."""
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode()
    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", dom))
    for words in ("Fine-tuned against base", "Each model, 95% bootstrap interval",
                  "Fine-tuned minus base, paired 95% bootstrap interval",
                  "Fine-tuned minus base (0: no change)", "METEOR",
                  "Calibration, fine-tuned", "Mean confidence", "Accuracy", "300"):  # fmt: skip
        assert words in texts, words


def test_the_blank_check_tells_a_chart_from_a_blank_page():
    vlc = pytest.importorskip("vl_convert", reason="vl-convert-python renders the sample PNGs")
    values = [{"step": 2, "loss": 2.5}, {"step": 4, "loss": 1.9}, {"step": 6, "loss": 1.2}]
    chart = {
        "data": {"values": values},
        "mark": "line",
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": "loss", "type": "quantitative"},
        },
        "background": "white",
    }
    blank = {
        "data": {"values": []},
        "mark": "point",
        "width": 300,
        "height": 200,
        "background": "white",
    }
    assert non_white_fraction(vlc.vegalite_to_png(chart, vl_version="5.21")) > 0.005
    assert non_white_fraction(vlc.vegalite_to_png(blank, vl_version="5.21")) < 0.005


def test_the_builder_writes_the_page_where_asked(tmp_path, capsys):
    """`python -m tools.plots_template [PATH]`: the page, and one line saying where."""
    out = tmp_path / "page.html"
    assert plots_template.main([str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page == TEMPLATE.read_text(encoding="utf-8")
    assert capsys.readouterr().out == f"wrote {out} ({len(page.encode()) // 1024} KiB)\n"


def test_a_builder_of_another_bundle_version_is_refused(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1")
    with pytest.raises(RuntimeError, match=r"^vl-convert-python 0\.1 installed; the template is"):
        plots_template.build()


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ("a('</SCRIPT >')", "the bundle would close its <script> element early"),
        ("a('</script>')", "the bundle would close its <script> element early"),
        ("a('{plot_divs}')", "the bundle holds one of DVC's placeholders"),
        ("a('{scripts}')", "the bundle holds one of DVC's placeholders"),
        ("a('{refresh_tag}')", "the bundle holds one of DVC's placeholders"),
    ],
)
def test_a_bundle_that_would_break_the_page_is_refused(monkeypatch, bundle, message):
    import vl_convert

    monkeypatch.setattr(vl_convert, "javascript_bundle", lambda vl_version: bundle)
    with pytest.raises(RuntimeError) as err:
        plots_template.build()
    assert str(err.value) == message


def test_the_builder_reads_its_arguments_and_writes_the_committed_path_by_default(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    monkeypatch.setattr(sys, "argv", ["plots_template", "given.html"])
    assert plots_template.main() == 0 and (tmp_path / "given.html").is_file()
    monkeypatch.setattr(sys, "argv", ["plots_template"])
    assert plots_template.main() == 0
    assert (tmp_path / plots_template.TEMPLATE).read_text(encoding="utf-8") == (
        TEMPLATE.read_text(encoding="utf-8")
    )
