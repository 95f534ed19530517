// Bundles the anywidget front end (widget.js + its imports, CSS included) into the Python package's static folder.
// `node build.mjs` builds once (minified); `node build.mjs --watch` rebuilds on change, which
// together with ANYWIDGET_HMR=1 in the kernel gives hot reloading.
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const watch = process.argv.includes("--watch");
// --outdir=DIR writes the bundle elsewhere (the tests rebuild into a temp folder and compare).
const outdirArg = process.argv.find((a) => a.startsWith("--outdir="));
const outdir = outdirArg ? path.resolve(outdirArg.slice(9)) : path.join(here, "..", "datacrafter_widget", "static");
const options = {
  entryPoints: [path.join(here, "widget.js")],
  bundle: true,
  format: "esm",
  target: ["es2020"],
  outfile: path.join(outdir, "widget.js"),
  minify: !watch,
  sourcemap: false,
  legalComments: "none",
  logLevel: "info",
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
