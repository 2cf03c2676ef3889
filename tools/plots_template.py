"""The HTML page `dvc plots show` and `dvc plots diff` fill: vega, vega-lite and vega-embed
inlined, so the plots render with no network (DVC's own page loads them from a CDN).

The scripts are the bundle that the pinned vl-convert-python ships, with the vega-lite
version dvc-render's templates declare (`$schema` .../vega-lite/v5.json). The page has DVC's
`{plot_divs}` placeholder but no `{scripts}`: DVC puts its CDN script tags there. The bundle
runs in a function of its own, so its top-level names never clash with the `var spec` of DVC's
plot divs; it sets window.vegaEmbed, all those divs call (in this release window.vega and
window.vegaLite are null: vega-embed holds its own). vega-lite 5.21 compiles to Vega v5 specs
and the bundle's vega is 6.2.0: vega-embed warns so in the browser console; vl-convert draws
such specs with that same vega.

    python -m tools.plots_template        # (re)writes reports/plots_template.html

`.dvc/config` names the file (`[plots] html_template`, relative to `.dvc/`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pubmedqa_gpt2.core.paths import PLOTS_TEMPLATE

TEMPLATE = PLOTS_TEMPLATE

# The pinned bundle: vl-convert-python's version and the vega-lite in it (dvc-render emits v5).
VL_CONVERT_VERSION = "1.9.0.post1"
VEGA_LITE_VERSION = "5.21"

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots</title>
    <!-- Built by `python -m tools.plots_template`: vega {vega}, vega-lite {vega_lite},
         vega-embed {vega_embed}, from vl-convert-python {vl_convert}. Edit the builder, not this
         file. -->
    <script type="text/javascript">
(function () {{
"use strict";
{bundle}
}})();
    </script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def build() -> str:
    """The page, from the installed vl-convert-python (which must be the pinned version)."""
    from importlib.metadata import version

    import vl_convert as vlc

    installed = version("vl-convert-python")
    if installed != VL_CONVERT_VERSION:
        raise RuntimeError(
            f"vl-convert-python {installed} installed; the template is built from "
            f"{VL_CONVERT_VERSION} (pip install vl-convert-python=={VL_CONVERT_VERSION})"
        )
    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    if "</script" in bundle.lower():
        raise RuntimeError("the bundle would close its <script> element early")
    placeholders = ("{plot_divs}", "{scripts}", "{refresh_tag}")
    if any(p in bundle for p in placeholders):
        raise RuntimeError("the bundle holds one of DVC's placeholders")
    return PAGE.format(
        bundle=bundle.strip(),
        vega=vlc.get_vega_version(),
        vega_lite=VEGA_LITE_VERSION,
        vega_embed=vlc.get_vega_embed_version(),
        vl_convert=installed,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else TEMPLATE
    page = build()
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page.encode()) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
