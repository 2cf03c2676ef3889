// Draws every plot of a `dvc plots show` page with the page's own inlined scripts, in Node,
// with no browser and no network: the first <script> (the vega bundle) runs in a bare context
// (a stub DOM, no fetch), then each plot's spec goes through vegaEmbed like the page's divs do,
// and its SVG is summarised as one JSON line: title, texts, line vertices, rect marks.
//   node tests/render_page.js dvc_plots/index.html
const fs = require("fs");
const vm = require("vm");

const page = fs.readFileSync(process.argv[2], "utf8");
const scripts = [...page.matchAll(/<script[^>]*>([\s\S]*?)<\/script>/g)].map((m) => m[1]);

function element() {
  return {
    childNodes: [], classList: { add() {}, remove() {} }, innerHTML: "", textContent: "",
    style: {}, appendChild: (child) => child, append() {}, prepend() {}, setAttribute() {},
    removeAttribute() {}, addEventListener() {}, removeEventListener() {},
    getBoundingClientRect: () => ({}),
  };
}

const context = {
  console: { log() {}, info() {}, warn() {}, error: console.error, debug() {} },
  setTimeout, clearTimeout, setInterval, clearInterval, structuredClone, URL,
  TextEncoder, TextDecoder,
  addEventListener() {}, removeEventListener() {},
  document: {
    createElement: element, createElementNS: element, querySelector: () => null,
    addEventListener() {}, removeEventListener() {}, body: element(), head: element(),
  },
};
context.window = context;
context.self = context;
vm.createContext(context);
vm.runInContext(scripts[0], context);
const parse = vm.runInContext("JSON.parse", context); // the specs' objects in the bundle's realm

(async () => {
  let plots = 0;
  for (const script of scripts.slice(1)) {
    const found = script.match(/var spec = ([\s\S]*?);\s*vegaEmbed\(/);
    if (!found) continue;
    const spec = parse(found[1]);
    // A spec's own embed options (usermeta.embedOptions: the browser draws SVG) would override
    // the options below; here vega draws without a DOM and the SVG is asked for after.
    if (spec.usermeta) delete spec.usermeta.embedOptions;
    const embedded = await context.vegaEmbed(element(), spec, {
      renderer: "none", actions: false, defaultStyle: false, tooltip: false,
    });
    const svg = await embedded.view.toSVG();
    const lines = [...svg.matchAll(/<g class="mark-line[^>]*>(<path[^>]*>)/g)].map(
      (m) => (m[1].match(/ d="([^"]*)"/) || ["", ""])[1].split(/[ML]/).filter(Boolean).length,
    );
    const rects = [...svg.matchAll(/<g class="mark-rect[^>]*>([\s\S]*?)<\/g>/g)].map(
      (m) => (m[1].match(/<path/g) || []).length,
    );
    const texts = [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
    console.log(JSON.stringify({
      title: typeof spec.title === "object" ? spec.title.text : spec.title,
      texts, line_vertices: Math.max(0, ...lines), rects: Math.max(0, ...rects),
    }));
    plots += 1;
  }
  if (!plots) throw new Error("no plot in the page");
})().catch((error) => {
  console.error(String(error && error.stack || error));
  process.exit(1);
});
