// @ts-check
// WebGL2 renderer: one instanced quad per point. Zoomed in, each quad samples its thumbnail from one
// texture of thumbnail pages (thumbs.js fills it on demand; a per-point attribute says which tile, or
// none yet: then a filled mark); zoomed out, quads are drawn as small marks. Real images are squares, generated images discs (thumbnail
// cropped to a circle), with a ring in the colour-by colour; the selection gets a yellow ring.

// Two ways to draw the same marks: instanced quads (gl_InstanceID picks the tile) and point sprites
// (gl_VertexID picks it). Quads are the default; software WebGL (SwiftShader, llvmpipe) draws
// instanced geometry about 20x slower than points, so "auto" uses points there. Points are clipped
// by their centre at the canvas edge, so thumbnails there pop in and out; quads do not.
import { rasterMarks, rasterThumbs, tileLevels } from "./raster.js";

const VS_HEAD = (points) => `#version 300 es
#define POINTS ${points ? 1 : 0}
`;
// Everything that is the same for a whole mark (its shape, band edges, colours, alpha) is worked out once
// per point here and handed over flat; the fragment shader, run for every pixel of every mark (on the CPU
// in software WebGL), is left with the shape's distance, one texture read and a chain of selects.
const VS = `
layout(location=0) in vec2 a_pos;
layout(location=1) in vec4 a_color;
layout(location=2) in uvec4 a_state; // kind (0 real, 1 generated, 2 held-out test), selected, hidden, feedback (0 none, 1 good, 2 bad, 3 removed)
layout(location=3) in uint a_slot;   // the point's tile in the thumbnail texture; 0xffffffff: not loaded
uniform vec2 u_scale;   // data -> clip
uniform vec2 u_offset;
uniform vec2 u_viewport; // px
uniform float u_size;    // px
uniform int u_pass;      // 0: all points, 1: selected only (drawn on top)
uniform int u_cols;
uniform float u_dpr;
uniform highp int u_thumbs; // 1: draw thumbnails
uniform float u_dim;      // alpha for unselected points when a selection exists
flat out vec4 v_edges;  // band edges from the outside in (d beyond: that band), x: first, y: second, z: third; w: hollow below
flat out vec4 v_c1;     // band colours, a: the shape (0 square, 1 disc, 2 diamond)
flat out vec4 v_c2;     // a: 1 when the fill is the thumbnail
flat out vec4 v_c3;     // a: how far the thumbnail is greyed (held-out test images)
flat out vec4 v_fill;   // the fill without a thumbnail, a: alpha
flat out vec2 v_tile;
#if !POINTS
out vec2 v_local;
#endif
void main() {
  bool sel = a_state.y > 0u;
  if ((u_pass == 1 && !sel) || a_state.z > 0u) { gl_Position = vec4(2.0, 2.0, 2.0, 1.0); return; }
  float s = u_size * (sel ? 1.2 : 1.0);
  vec2 clip = a_pos * u_scale + u_offset;
#if POINTS
  gl_Position = vec4(clip, 0.0, 1.0);
  gl_PointSize = s * u_dpr;
#else
  vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 2.0 - 1.0;
  gl_Position = vec4(clip + corner * s / u_viewport, 0.0, 1.0);
  v_local = corner;
#endif
  bool generated = a_state.x == 1u;
  bool test = a_state.x == 2u;
  uint fb = a_state.w;
  float px = 2.0 / (u_size * (sel ? 1.2 : 1.0)); // one pixel in local units
  vec3 yellow = vec3(1.0, 0.8, 0.0);
  vec3 fbColor = fb == 1u ? vec3(0.10, 0.66, 0.25) : fb == 2u ? vec3(0.86, 0.10, 0.12) : vec3(0.35, 0.35, 0.35);
  float alpha = sel ? 1.0 : u_dim;
  if (test) alpha *= 0.65;
  float shape = generated ? 1.0 : test ? 2.0 : 0.0;
  bool has = a_slot != 0xffffffffu;
  if (u_thumbs == 1) {
    // Bands from the edge inwards: the selection (yellow) or colour-by ring, then a thick feedback band,
    // so a mark stays visible on a selected image; inside, the thumbnail (a filled mark until it arrives).
    float ringW = (sel ? 3.0 : 2.0) * px;
    float fbW = fb > 0u ? max(4.0 * px, 0.16) : 0.0;
    v_edges = vec4(1.0 - ringW, 1.0 - ringW - fbW, 2.0, -1.0);
    v_c1 = vec4(sel ? yellow : (fb > 0u ? fbColor : a_color.rgb), shape);
    v_c2 = vec4(fbColor, has ? 1.0 : 0.0);
    v_c3 = vec4(fbColor, test ? 0.45 : 0.0);
    v_fill = vec4(a_color.rgb, alpha);
  } else {
    // Marks: filled shape with a dark edge; a feedback mark is a thick coloured edge (40% of the
    // radius), the selection a yellow outer edge; test images are hollow.
    float edge = 1.5 * px;
    v_edges = vec4(sel ? 1.0 - edge : 2.0, fb > 0u ? 0.6 : 2.0, 1.0 - edge, test ? 1.0 - max(3.0 * px, 0.45) : -1.0);
    v_c1 = vec4(yellow, shape);
    v_c2 = vec4(fbColor, 0.0);
    v_c3 = vec4(a_color.rgb * 0.55, 0.0);
    v_fill = vec4(sel ? mix(a_color.rgb, yellow, 0.35) : a_color.rgb, alpha);
  }
  uint id = has ? a_slot : 0u;
  uint cols = uint(u_cols);
  v_tile = vec2(float(id % cols), float(id / cols));
}`;

const FS = (points) => `#version 300 es
#define POINTS ${points ? 1 : 0}
precision highp float;
flat in vec4 v_edges;
flat in vec4 v_c1;
flat in vec4 v_c2;
flat in vec4 v_c3;
flat in vec4 v_fill;
flat in vec2 v_tile;
#if !POINTS
in vec2 v_local;
#endif
uniform sampler2D u_atlas;
uniform vec2 u_tileUV;    // tile size in uv
uniform vec2 u_texel;     // one texel in uv
out vec4 outColor;
void main() {
#if POINTS
  vec2 v_local = vec2(gl_PointCoord.x * 2.0 - 1.0, 1.0 - gl_PointCoord.y * 2.0);
#endif
  // real: square, generated: disc, held-out test: diamond
  vec2 a = abs(v_local);
  float d = v_c1.a == 1.0 ? length(v_local) : v_c1.a == 2.0 ? a.x + a.y : max(a.x, a.y);
  if (d > 1.0 || d < v_edges.w) discard;
  // Selects rather than branches (the texture is read for marks too, and not used: v_c2.a is 0 there).
  vec2 f = v_local * 0.5 + 0.5;
  f.y = 1.0 - f.y;
  f = clamp(f, u_texel / u_tileUV * 0.5, 1.0 - u_texel / u_tileUV * 0.5);
  vec3 tex = texture(u_atlas, (v_tile + f) * u_tileUV).rgb;
  tex = v_c3.a > 0.0 ? mix(tex, vec3(0.5), v_c3.a) : tex;
  vec3 inner = v_c2.a > 0.0 ? tex : v_fill.rgb;
  vec3 rgb = d > v_edges.x ? v_c1.rgb : d > v_edges.y ? v_c2.rgb : d > v_edges.z ? v_c3.rgb : inner;
  outColor = vec4(rgb * v_fill.a, v_fill.a);
}`;

// Shows the cached frame on the canvas: each canvas pixel fetches its texel, shifted by u_offset. Software
// WebGL copies this way in ~2/3 of the time blitFramebuffer takes; the pixels are the same.
const COPY_VS = `#version 300 es
void main() { gl_Position = vec4(vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 4.0 - 1.0, 0.0, 1.0); }`;
const COPY_FS = `#version 300 es
precision highp float;
uniform highp sampler2D u_frame;
uniform ivec2 u_offset;
out vec4 outColor;
void main() { outColor = texelFetch(u_frame, ivec2(gl_FragCoord.xy) + u_offset, 0); }`;

function compile(gl, type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(s));
  return s;
}

/** The WebGL renderer's name, e.g. "ANGLE (..., SwiftShader driver)". */
export function rendererName(gl) {
  const ext = gl.getExtension("WEBGL_debug_renderer_info");
  return String(ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
}

export class Renderer {
  /** primitive: "auto" (quads on a GPU, points on software WebGL), "quads" or "points". */
  constructor(canvas, primitive = "auto") {
    const gl = canvas.getContext("webgl2", { antialias: false, premultipliedAlpha: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error("WebGL2 is not available in this browser");
    this.gl = gl;
    this.canvas = canvas;
    this.name = rendererName(gl);
    const software = /swiftshader|llvmpipe|software/i.test(this.name);
    this.primitive = primitive === "auto" ? (software ? "points" : "quads") : primitive;
    const points = this.primitive === "points";
    this.maxPointSize = gl.getParameter(gl.ALIASED_POINT_SIZE_RANGE)[1];
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS_HEAD(points) + VS));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS(points)));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error("link: " + gl.getProgramInfoLog(prog));
    this.prog = prog;
    const copy = gl.createProgram();
    gl.attachShader(copy, compile(gl, gl.VERTEX_SHADER, COPY_VS));
    gl.attachShader(copy, compile(gl, gl.FRAGMENT_SHADER, COPY_FS));
    gl.linkProgram(copy);
    if (!gl.getProgramParameter(copy, gl.LINK_STATUS)) throw new Error("link: " + gl.getProgramInfoLog(copy));
    this.copy = { prog: copy, vao: gl.createVertexArray(), frame: gl.getUniformLocation(copy, "u_frame"), offset: gl.getUniformLocation(copy, "u_offset") };
    this.u = {};
    for (const name of ["u_scale", "u_offset", "u_viewport", "u_size", "u_pass", "u_cols", "u_atlas", "u_thumbs", "u_tileUV", "u_texel", "u_dim", "u_dpr"]) {
      this.u[name] = gl.getUniformLocation(prog, name);
    }
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    this.posBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    const div = points ? 0 : 1; // per instance for quads, per vertex for points
    gl.vertexAttribDivisor(0, div);
    this.colorBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colorBuf);
    gl.enableVertexAttribArray(1);
    gl.vertexAttribPointer(1, 4, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.vertexAttribDivisor(1, div);
    this.stateBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.stateBuf);
    gl.enableVertexAttribArray(2);
    gl.vertexAttribIPointer(2, 4, gl.UNSIGNED_BYTE, 0, 0);
    gl.vertexAttribDivisor(2, div);
    this.slotBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.slotBuf);
    gl.enableVertexAttribArray(3);
    gl.vertexAttribIPointer(3, 1, gl.UNSIGNED_INT, 0, 0);
    gl.vertexAttribDivisor(3, div);
    gl.bindVertexArray(null);
    this.n = 0;
    this.texture = null;
    this.atlas = null; // {cols, tile, width, height} of the thumbnail page texture
    this.maxTextureSize = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    // Pan cache: above `cacheFrom` points, a frame is drawn once into a texture larger than the canvas
    // (a margin on every side) and a pan within the margin only shifts that texture (one quad) instead of
    // drawing every point again. Software WebGL needs ~1.7 us per point, so 50,000 points take ~85 ms
    // a frame; the shifted texture ~1 ms. Any change of data, scale, size or selection redraws it.
    this.cacheFrom = software ? 10000 : Infinity;
    this.cacheMargin = 256; // CSS px on each side
    this.version = 0; // bumped by every data upload: a cached frame of an older version is stale
    this.cache = null; // {key, tx, ty, fbo, tex, w, h (device px), margin}
    this.cacheStats = { draws: 0, blits: 0, scaled: 0, rastered: 0, thumbsRastered: 0 };
    // On software WebGL the cached frame is written by raster.js instead (~15x cheaper there): its marks,
    // and zoomed in its thumbnails, from a copy of the thumbnail pages' pixels kept here (`mirror`, one
    // entry per page block). The point arrays are kept (references, not copies) for it.
    this.software = software;
    this.raster = software;
    this.rasterBuf = null;
    this.cpu = { xy: null, colors: null, state: null, slots: null };
    this.mirror = [];
    // Zoomed in on software WebGL, a new cached frame draws the canvas's area first (what the person sees)
    // and its margins afterwards in slices when the page is idle; a pan or zoom gesture that needs a margin
    // not drawn yet draws that part first. Off: the whole frame at once.
    this.visibleFirst = software;
    this.cacheStats.slices = 0;
  }

  setPositions(xy) {
    const gl = this.gl;
    this.version++;
    this.n = xy.length >> 1;
    this.cpu.xy = xy;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
    gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
    if ((this.slotCount || 0) < this.n) this.setSlots(new Uint32Array(this.n).fill(0xffffffff)); // none until thumbs.js says
  }

  setColors(rgba) {
    const gl = this.gl;
    this.version++;
    this.cpu.colors = rgba;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.colorBuf);
    gl.bufferData(gl.ARRAY_BUFFER, rgba, gl.DYNAMIC_DRAW);
  }

  setState(state) {
    const gl = this.gl;
    this.version++;
    this.cpu.state = state;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.stateBuf);
    gl.bufferData(gl.ARRAY_BUFFER, state, gl.DYNAMIC_DRAW);
  }

  /** The per-point tile index into the thumbnail texture (Uint32Array, 0xffffffff: none). */
  setSlots(slots) {
    const gl = this.gl;
    this.version++;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.slotBuf);
    gl.bufferData(gl.ARRAY_BUFFER, slots, gl.DYNAMIC_DRAW);
    this.slotCount = slots.length;
    this.cpu.slots = slots;
  }

  /** An empty side x side texture of `tile` px tiles, `cols` to a row, that pages are uploaded into (0: none),
   *  each page into its own block of `block` x `block` tiles. */
  setThumbTexture(side, tile, cols, block = cols) {
    const gl = this.gl;
    this.version++;
    if (this.texture) gl.deleteTexture(this.texture);
    this.texture = null;
    this.atlas = null;
    this.mirror = [];
    if (!side) return;
    this.atlas = { cols, tile, width: side, height: side, block: Math.max(1, block) };
    // Software WebGL: raster.js draws the thumbnails from `mirror`, so the texture (side² x 4 bytes, 64 MB at
    // 4096) is only made, from the mirror, if WebGL draws them after all (a map under `cacheFrom` points).
    if (!this.software) this.makeThumbTexture();
  }

  /** The thumbnail texture, with every page the mirror holds. */
  makeThumbTexture() {
    const gl = this.gl, a = this.atlas;
    if (!a || this.texture) return;
    const tex = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.RGBA8, a.width, a.height);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    this.texture = tex;
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    const T = a.tile;
    for (const m of this.mirror) {
      if (!m) continue;
      const L = m.levels[0], bytes = new Uint8Array(L.data.buffer, L.data.byteOffset, L.data.byteLength);
      for (let k = 0; k < m.cols * m.rows; k++) {
        const x = (m.col + (k % m.cols)) * T, y = (m.row + Math.floor(k / m.cols)) * T;
        gl.texSubImage2D(gl.TEXTURE_2D, 0, x, y, T, T, gl.RGBA, gl.UNSIGNED_BYTE, bytes.subarray(4 * k * T * T, 4 * (k + 1) * T * T));
      }
    }
  }

  /** Uploads one page (a sprite sheet: an ImageBitmap, or ImageData on software WebGL, whose pixels
   *  raster.js then reads) with its top-left corner at texel (x, y), the corner of its block. */
  uploadPage(x, y, source) {
    const gl = this.gl, a = this.atlas;
    if (!a) return;
    this.version++;
    const side = a.block * a.tile, id = Math.floor(y / side) * Math.floor(a.cols / a.block) + Math.floor(x / side);
    this.mirror[id] = this.software && "data" in source ? { ...tileLevels(source, a.tile), col: x / a.tile, row: y / a.tile } : null;
    if (!this.mirror[id]) this.makeThumbTexture(); // pixels kept nowhere else: into the texture
    if (!this.texture) return;
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, x, y, gl.RGBA, gl.UNSIGNED_BYTE, source);
  }

  /** Texture slot `slot`'s tile at mip level `level` (0: full size, 1: half), for raster.js:
   *  {data, base (its first texel in data), size (px)}; null when its pixels are not kept here. */
  texelsOf(slot, level) {
    const a = this.atlas;
    if (!a) return null;
    const col = slot % a.cols, row = Math.floor(slot / a.cols);
    const m = this.mirror[Math.floor(row / a.block) * Math.floor(a.cols / a.block) + Math.floor(col / a.block)];
    if (!m) return null;
    const c = col - m.col, r = row - m.row;
    if (c < 0 || r < 0 || c >= m.cols || r >= m.rows) return null;
    const L = m.levels[Math.min(level, m.levels.length - 1)];
    return { data: L.data, base: (r * m.cols + c) * L.size * L.size, size: L.size };
  }

  /** Texture slot `slot`'s tile as ImageData (software WebGL keeps no bitmap: the gallery draws this). */
  tileImage(slot) {
    const t = this.texelsOf(slot, 0);
    if (!t) return null;
    const px = new Uint8ClampedArray(t.data.buffer, t.data.byteOffset + 4 * t.base, 4 * t.size * t.size).slice();
    return new ImageData(px, t.size, t.size);
  }

  /**
   * view: {k, tx, ty} maps data to CSS px: sx = x*k + tx, sy = -y*k + ty.
   * opts: {width, height (CSS px), dpr, size (px), thumbs (bool), dim (0..1), background [r,g,b]}.
   */
  draw(view, opts) {
    if (this.n < this.cacheFrom) {
      this.dropCache();
      this.drawPoints(view, opts);
      return;
    }
    const gl = this.gl;
    const { width, height } = opts;
    const dpr = opts.dpr || 1;
    const bg = opts.background || [1, 1, 1];
    const scaleKey = JSON.stringify([this.version, width, height, dpr, opts.dim, Boolean(opts.anySelected), bg]);
    const key = JSON.stringify([scaleKey, view.k, opts.size, Boolean(opts.thumbs && this.atlas)]);
    let c = this.cache;
    const m = this.cacheMargin;
    // During a zoom gesture (opts.interactive) the cached frame is shown scaled; the widget draws a sharp
    // frame when the gesture ends. Zoomed out so far that the scaled frame leaves a gap, it draws anew.
    const r = c ? view.k / c.k : 1;
    if (opts.interactive && c && c.key !== key && c.scaleKey === scaleKey && r >= 0.72 && r <= 4) {
      // The part of the cached frame the scaled copy shows (cache CSS px) must be drawn.
      const u = (s) => (s - view.tx) / r + c.tx + c.margin, w = (t) => (t - view.ty) / r + c.ty + c.margin;
      this.fillPending(c, [u(0), w(0), u(width), w(height)]);
      this.scaledBlit(c, view, width, height, dpr, bg);
      return;
    }
    // Device-pixel shift of the cached frame; whole pixels, so the shifted frame is the drawn one exactly.
    const ex = c ? (view.tx - c.tx) * dpr : 0, ey = c ? (view.ty - c.ty) * dpr : 0;
    const shift = c && c.key === key ? [Math.round(ex), Math.round(ey)] : null;
    if (!shift || Math.abs(shift[0]) > c.margin * dpr || Math.abs(shift[1]) > c.margin * dpr
        || Math.abs(shift[0] - ex) > 1e-6 || Math.abs(shift[1] - ey) > 1e-6) {
      c = this.renderCache(view, { ...opts, scaleKey }, key, m);
      this.blit(c, 0, 0, width, height, dpr, bg);
    } else {
      const dx = shift[0] / dpr, dy = shift[1] / dpr;
      this.fillPending(c, [m - dx, m - dy, m - dx + width, m - dy + height]);
      this.blit(c, shift[0], shift[1], width, height, dpr, bg);
    }
  }

  /** Draws the frame of `view` into the cache texture: the canvas plus `m` CSS px on every side. */
  renderCache(view, opts, key, m) {
    const gl = this.gl;
    const dpr = opts.dpr || 1;
    const w = Math.round((opts.width + 2 * m) * dpr), h = Math.round((opts.height + 2 * m) * dpr);
    let c = this.cache;
    if (!c || c.w !== w || c.h !== h) {
      this.dropCache();
      const tex = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, w, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      const fbo = gl.createFramebuffer();
      gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
      gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      c = this.cache = { fbo, tex, w, h };
    }
    const frame = { k: view.k, tx: view.tx + m, ty: view.ty + m }, fopts = { ...opts, width: opts.width + 2 * m, height: opts.height + 2 * m };
    c.fill = null;
    if (this.canRaster(opts)) {
      this.rasterInto(c, frame, fopts);
    } else if (this.visibleFirst && this.primitive === "points" && opts.inView && m > 0) {
      // The canvas's area now; the margins (strips cut in pieces of ~256 px) when idle or when needed.
      const W = opts.width, H = opts.height, Wc = W + 2 * m, Hc = H + 2 * m;
      const pending = [];
      const cut = (x0, y0, x1, y1) => {
        const along = x1 - x0 >= y1 - y0, len = along ? x1 - x0 : y1 - y0, parts = Math.max(1, Math.round(len / 256));
        for (let p = 0; p < parts; p++) {
          const a = Math.round((len * p) / parts), b = Math.round((len * (p + 1)) / parts);
          pending.push(along ? [x0 + a, y0, x0 + b, y1] : [x0, y0 + a, x1, y0 + b]);
        }
      };
      cut(0, 0, Wc, m); cut(0, m + H, Wc, Hc); cut(0, m, m, m + H); cut(m + W, m, Wc, m + H);
      c.fill = { frame, fopts, pending };
      this.drawRegion(c, [m, m, m + W, m + H]);
      this.scheduleFill(c);
    } else if (this.canRasterThumbs(opts)) {
      this.rasterRegion(c, frame, fopts, [0, 0, fopts.width, fopts.height]);
    } else {
      gl.bindFramebuffer(gl.FRAMEBUFFER, c.fbo);
      this.drawPoints(frame, fopts);
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    }
    Object.assign(c, { key, scaleKey: opts.scaleKey, k: view.k, tx: view.tx, ty: view.ty, margin: m });
    this.cacheStats.draws++;
    return c;
  }

  /** Draws the part `rect` ([x0, y0, x1, y1], CSS px of the cached frame, y down) of c's frame into it. */
  drawRegion(c, rect) {
    const gl = this.gl, { frame, fopts } = c.fill;
    if (this.canRasterThumbs(fopts)) { this.rasterRegion(c, frame, fopts, rect); return; }
    gl.bindFramebuffer(gl.FRAMEBUFFER, c.fbo);
    this.drawPoints(frame, { ...fopts, region: rect });
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  }

  /** Draws the margin pieces of c not drawn yet that meet `rect` (cache CSS px): what a blit shows. */
  fillPending(c, rect) {
    if (!c.fill || !c.fill.pending.length) return;
    const [x0, y0, x1, y1] = rect;
    c.fill.pending = c.fill.pending.filter((p) => {
      if (p[0] >= x1 || p[2] <= x0 || p[1] >= y1 || p[3] <= y0) return true;
      this.drawRegion(c, p);
      return false;
    });
  }

  /** Fills c's margins a piece at a time while the page is idle (each piece ~1/10 of the canvas's area).
   *  The drawing itself runs after the script (in the GPU process), so a piece is drawn only once the
   *  previous one is done (a fence): a frame asked for meanwhile waits for one piece at most. */
  scheduleFill(c) {
    const gl = this.gl;
    const idle = window.requestIdleCallback || ((f) => setTimeout(f, 16));
    const fill = c.fill; // a newer frame in the same texture has its own
    const step = () => {
      if (this.cache !== c || c.fill !== fill || this.destroyed) { if (fill.fence) gl.deleteSync(fill.fence); return; }
      if (fill.fence) {
        if (gl.getSyncParameter(fill.fence, gl.SYNC_STATUS) !== gl.SIGNALED) { idle(step, { timeout: 50 }); return; }
        gl.deleteSync(fill.fence);
        fill.fence = null;
      }
      const p = fill.pending.shift();
      if (!p) return;
      this.drawRegion(c, p);
      this.cacheStats.slices++;
      fill.fence = gl.fenceSync(gl.SYNC_GPU_COMMANDS_COMPLETE, 0);
      gl.flush();
      idle(step, { timeout: 50 });
    };
    idle(step, { timeout: 50 });
  }

  /** Whether raster.js can draw this frame: software WebGL, marks (no thumbnails), every array at hand. */
  canRaster(opts) {
    return this.raster && this.primitive === "points" && !(opts.thumbs && this.atlas) && this.cpuArrays(false);
  }

  /** Whether raster.js can draw this frame's thumbnails: software WebGL, zoomed in, every array at hand. */
  canRasterThumbs(opts) {
    return this.raster && this.primitive === "points" && Boolean(opts.thumbs && this.atlas) && this.cpuArrays(true);
  }

  /** Whether the point arrays raster.js reads cover every point (and the thumbnail slots, `slots`). */
  cpuArrays(slots) {
    const c = this.cpu, n = this.n;
    return Boolean(c.xy && c.colors && c.state && c.xy.length >= 2 * n && c.colors.length >= 4 * n && c.state.length >= 4 * n
      && (!slots || (c.slots && c.slots.length >= n)));
  }

  /** The part `rect` ([x0, y0, x1, y1], CSS px of the cached frame, y down) of the frame `view` with its
   *  thumbnails, written by raster.js and uploaded into the cache texture `c`. */
  rasterRegion(c, view, opts, rect) {
    const gl = this.gl, dpr = opts.dpr || 1;
    const X0 = Math.round(rect[0] * dpr), Y0 = Math.round(rect[1] * dpr), X1 = Math.round(rect[2] * dpr), Y1 = Math.round(rect[3] * dpr);
    const w = Math.min(X1, c.w) - X0, h = Math.min(Y1, c.h) - Y0;
    if (w <= 0 || h <= 0) return;
    if (!this.rasterBuf || this.rasterBuf.length < w * h * 4) this.rasterBuf = new Uint8Array(w * h * 4);
    const buf = this.rasterBuf.subarray(0, w * h * 4);
    const part = { k: view.k, tx: view.tx - X0 / dpr, ty: view.ty - Y0 / dpr };
    const some = opts.inView ? opts.inView(part, w / dpr, h / dpr) : null;
    this.lastDrawn = some ? some.length : this.n;
    const size = Math.min(opts.size, this.maxPointSize / dpr / 1.2);
    // Thumbnails drawn at most 3/4 of their size read the half-size level (a 2 x 2 box filter): nearer one
    // texel per pixel, as a mipmap gives, and a quarter of the memory to go through.
    const level = size * dpr <= 0.75 * this.atlas.tile ? 1 : 0;
    rasterThumbs(buf, [X0, c.h - Y0 - h, w, h], c.h, { ...this.cpu, n: this.n }, view, {
      dpr, size, dim: opts.dim, anySelected: Boolean(opts.anySelected),
      background: opts.background || [1, 1, 1], some, tex: (slot) => this.texelsOf(slot, level),
    });
    gl.bindTexture(gl.TEXTURE_2D, c.tex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, X0, c.h - Y0 - h, w, h, gl.RGBA, gl.UNSIGNED_BYTE, buf);
    this.cacheStats.thumbsRastered++;
  }

  /** The frame's marks written by raster.js and uploaded into the cache texture `c`. */
  rasterInto(c, view, opts) {
    const gl = this.gl;
    const n = c.w * c.h * 4;
    if (!this.rasterBuf || this.rasterBuf.length < n) this.rasterBuf = new Uint8Array(n);
    const buf = this.rasterBuf.subarray(0, n);
    const dpr = opts.dpr || 1;
    const some = opts.inView ? opts.inView(view, opts.width, opts.height) : null;
    this.lastDrawn = some ? some.length : this.n;
    rasterMarks(buf, c.w, c.h, { ...this.cpu, n: this.n }, view, {
      dpr, size: Math.min(opts.size, this.maxPointSize / dpr / 1.2), dim: opts.dim, anySelected: Boolean(opts.anySelected),
      background: opts.background || [1, 1, 1], some,
    });
    gl.bindTexture(gl.TEXTURE_2D, c.tex);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, c.w, c.h, gl.RGBA, gl.UNSIGNED_BYTE, buf);
    this.cacheStats.rastered++;
  }

  /** Shows the cached frame shifted by (dx, dy) device px (screen y down) on the canvas: a framebuffer copy. */
  blit(c, dx, dy, width, height, dpr, bg) {
    const gl = this.gl;
    const W = Math.round(width * dpr), H = Math.round(height * dpr);
    gl.viewport(0, 0, W, H);
    gl.clearColor(bg[0], bg[1], bg[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    // canvas pixel (fx, fy) (GL, y up) shows cache texel (fx + ox, fy + oy)
    const md = Math.round(c.margin * dpr), ox = md - dx, oy = md + dy;
    const sx0 = Math.max(0, ox), sy0 = Math.max(0, oy), sx1 = Math.min(c.w, ox + W), sy1 = Math.min(c.h, oy + H);
    if (sx1 > sx0 && sy1 > sy0) { // the canvas pixels that the cached frame covers fetch their texel
      const p = this.copy;
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.enable(gl.SCISSOR_TEST);
      gl.scissor(sx0 - ox, sy0 - oy, sx1 - sx0, sy1 - sy0);
      gl.disable(gl.BLEND);
      gl.useProgram(p.prog);
      gl.bindVertexArray(p.vao);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, c.tex);
      gl.uniform1i(p.frame, 0);
      gl.uniform2i(p.offset, ox, oy);
      gl.drawArrays(gl.TRIANGLES, 0, 3);
      gl.bindVertexArray(null);
      gl.disable(gl.SCISSOR_TEST);
    }
    this.cacheStats.blits++;
  }

  /** Shows the cached frame scaled to `view` (a zoom gesture in progress): a scaled framebuffer copy. */
  scaledBlit(c, view, width, height, dpr, bg) {
    const gl = this.gl;
    const W = Math.round(width * dpr), H = Math.round(height * dpr);
    gl.viewport(0, 0, W, H);
    gl.clearColor(bg[0], bg[1], bg[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    // cache CSS px (u, v), y down -> screen: s = (u - tx_c - m) * r + tx, t = (v - ty_c - m) * r + ty
    const r = view.k / c.k, wc = c.w / dpr, hc = c.h / dpr;
    const sx = (u) => ((u - c.tx - c.margin) * r + view.tx) * dpr;
    const ty = (v) => H - ((v - c.ty - c.margin) * r + view.ty) * dpr;
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, c.fbo);
    gl.bindFramebuffer(gl.DRAW_FRAMEBUFFER, null);
    gl.blitFramebuffer(0, 0, c.w, c.h, Math.round(sx(0)), Math.round(ty(hc)), Math.round(sx(wc)), Math.round(ty(0)),
      gl.COLOR_BUFFER_BIT, gl.NEAREST); // for a moment only: NEAREST is ~2x cheaper than LINEAR in software
    gl.bindFramebuffer(gl.READ_FRAMEBUFFER, null);
    this.cacheStats.scaled++;
  }

  dropCache() {
    if (!this.cache) return;
    this.gl.deleteFramebuffer(this.cache.fbo);
    this.gl.deleteTexture(this.cache.tex);
    this.cache = null;
  }

  /** Draws the points of `view` into the bound framebuffer (width x height CSS px); opts.region
   *  ([x0, y0, x1, y1], CSS px, y down) draws only that part (the rest of the framebuffer stays). */
  drawPoints(view, opts) {
    const gl = this.gl;
    const { width, height, dpr, region } = opts;
    const Wd = Math.round(width * dpr), Hd = Math.round(height * dpr);
    gl.viewport(0, 0, Wd, Hd);
    let rv = view, rw = width, rh = height; // the part drawn, as a frame of its own (for the points in it)
    if (region) {
      const X0 = Math.round(region[0] * dpr), Y0 = Math.round(region[1] * dpr);
      const X1 = Math.round(region[2] * dpr), Y1 = Math.round(region[3] * dpr);
      gl.enable(gl.SCISSOR_TEST);
      gl.scissor(X0, Hd - Y1, X1 - X0, Y1 - Y0);
      rv = { k: view.k, tx: view.tx - X0 / dpr, ty: view.ty - Y0 / dpr };
      rw = (X1 - X0) / dpr;
      rh = (Y1 - Y0) / dpr;
    }
    const bg = opts.background || [1, 1, 1];
    gl.clearColor(bg[0], bg[1], bg[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (this.n === 0) { gl.disable(gl.SCISSOR_TEST); return; }
    gl.useProgram(this.prog);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    // clip = (sx / width) * 2 - 1, clipY = 1 - (sy / height) * 2
    gl.uniform2f(this.u.u_scale, (2 * view.k) / width, (2 * view.k) / height);
    gl.uniform2f(this.u.u_offset, (2 * view.tx) / width - 1, 1 - (2 * view.ty) / height);
    gl.uniform2f(this.u.u_viewport, width, height);
    const size = this.primitive === "points" ? Math.min(opts.size, this.maxPointSize / dpr / 1.2) : opts.size;
    gl.uniform1f(this.u.u_size, size);
    gl.uniform1f(this.u.u_dpr, dpr);
    gl.uniform1f(this.u.u_dim, opts.dim);
    const thumbs = opts.thumbs && this.atlas ? 1 : 0;
    if (thumbs) this.makeThumbTexture(); // software WebGL makes it only now
    gl.uniform1i(this.u.u_thumbs, thumbs);
    if (this.atlas) {
      const a = this.atlas;
      gl.uniform1i(this.u.u_cols, Math.max(1, a.cols));
      gl.uniform2f(this.u.u_tileUV, a.tile / a.width, a.tile / a.height);
      gl.uniform2f(this.u.u_texel, 1 / a.width, 1 / a.height);
    } else {
      gl.uniform1i(this.u.u_cols, 1);
      gl.uniform2f(this.u.u_tileUV, 1, 1);
      gl.uniform2f(this.u.u_texel, 1, 1);
    }
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.texture);
    gl.uniform1i(this.u.u_atlas, 0);
    gl.bindVertexArray(this.vao);
    // Software WebGL pays for every point, drawn or off screen: zoomed in, only the points in this frame's
    // area (opts.inView: sorted indices, so the drawing order stays) go through, as an element list.
    const some = this.primitive === "points" && opts.inView ? opts.inView(rv, rw, rh) : null;
    const { xy, state } = this.cpu;
    const cpu = xy && state && xy.length >= 2 * this.n && state.length >= 4 * this.n;
    // With nothing dimmed and no translucent (held-out) point among them, every mark is opaque: the
    // blend would give the source colour anyway, and software WebGL spends a read per fragment on it.
    let opaque = false;
    if (some && cpu && !opts.anySelected && opts.dim >= 1) {
      opaque = true;
      for (let j = 0; j < some.length; j++) { const q = 4 * some[j]; if (state[q] === 2 && !state[q + 2]) { opaque = false; break; } }
    }
    if (opaque) gl.disable(gl.BLEND); else gl.enable(gl.BLEND);
    if (some) {
      if (!this.elementBuf) this.elementBuf = gl.createBuffer();
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.elementBuf);
      gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, some, gl.STREAM_DRAW);
    }
    this.lastDrawn = some ? some.length : this.n;
    const drawAll = () => {
      if (some) gl.drawElements(gl.POINTS, some.length, gl.UNSIGNED_INT, 0);
      else if (this.primitive === "points") gl.drawArrays(gl.POINTS, 0, this.n);
      else gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, this.n);
    };
    gl.uniform1i(this.u.u_pass, 0);
    drawAll();
    if (opts.anySelected) {
      gl.uniform1i(this.u.u_pass, 1); // the selection on top
      drawAll();
    }
    gl.bindVertexArray(null);
    gl.disable(gl.SCISSOR_TEST);
  }

  destroy() {
    this.destroyed = true;
    const gl = this.gl;
    this.dropCache();
    if (this.texture) gl.deleteTexture(this.texture);
    gl.deleteBuffer(this.posBuf);
    gl.deleteBuffer(this.colorBuf);
    gl.deleteBuffer(this.stateBuf);
    gl.deleteBuffer(this.slotBuf);
    if (this.elementBuf) gl.deleteBuffer(this.elementBuf);
    gl.deleteVertexArray(this.vao);
    gl.deleteProgram(this.prog);
    gl.deleteProgram(this.copy.prog);
    gl.deleteVertexArray(this.copy.vao);
  }
}

