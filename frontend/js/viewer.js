// The cell viewer: a canvas at the image's own pixels, scaled up on screen (pixel-true by
// default, smooth on request), with an adjustable contrast gain and an optional relevance
// map laid over it. A fixed gain multiplies the recorded intensities (×1 = as acquired).
// "Auto" (the default) stretches each cell's own display range, from its darkest 1% to
// its brightest 0.5%, to black..white, so a dim "intermediate intensity" cell is as
// readable as a bright one; the readout always shows the range shown, so the intensity
// as recorded is never hidden.

import { loadImage } from "./api.js";

export const GAINS = [0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16];
const AUTO_LOW = 0.01;
const AUTO_HIGH = 0.995;
export const ZOOMS = [1, 1.5, 2, 3, 4, 6];

/** The gain that brings an image's brightest 0.5% to white (1 to 16), for thumbnails:
 *  apply it as CSS `filter: brightness(gain)`, the same multiplication the viewer does. */
export function autoGain(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  const { high } = levelsOf(context.getImageData(0, 0, canvas.width, canvas.height).data);
  return Math.round(10 * Math.min(16, Math.max(1, 255 / Math.max(1, high)))) / 10;
}

/** The intensities at the AUTO_LOW and AUTO_HIGH quantiles of an RGBA pixel array. */
function levelsOf(data) {
  const histogram = new Uint32Array(256);
  for (let i = 0; i < data.length; i += 4) histogram[Math.max(data[i], data[i + 1], data[i + 2])] += 1;
  const n = data.length / 4;
  let seen = 0;
  let low = null;
  let high = 255;
  for (let v = 0; v < 256; v += 1) {
    seen += histogram[v];
    if (low === null && seen >= AUTO_LOW * n) low = v;
    if (seen >= AUTO_HIGH * n) { high = v; break; }
  }
  low = Math.min(low ?? 0, high - 1);
  return { low: Math.max(0, low), high: Math.max(high, low + 1) };
}

/** Shows a cell in an <img> brightened by its automatic gain (dim cells stay readable). */
export function brighten(img) {
  const apply = () => { img.style.filter = `brightness(${autoGain(img)})`; };
  if (img.complete && img.naturalWidth) apply(); else img.addEventListener("load", apply, { once: true });
}

export class CellViewer {
  constructor(stage, { onChange = () => {} } = {}) {
    this.stage = stage;
    this.onChange = onChange;
    this.box = stage.querySelector(".zoom-box");
    this.canvas = stage.querySelector("canvas");
    this.overlay = stage.querySelector(".overlay-map");
    this.overlayContext = this.overlay.getContext("2d");
    this.message = stage.querySelector(".stage-message");
    this.context = this.canvas.getContext("2d", { willReadFrequently: true });
    this.gainIndex = GAINS.indexOf(1);
    this.auto = true;
    this.levels = { low: 0, high: 255 };
    this.zoomIndex = 0;
    this.smooth = false;
    this.overlayOn = false;
    this.source = null;
    new ResizeObserver(() => this.layout()).observe(stage);
    this.enablePanning();
    stage.addEventListener("wheel", (event) => {
      if (!this.source) return;
      event.preventDefault();
      this.zoomBy(event.deltaY < 0 ? 1 : -1);
    }, { passive: false });
  }

  /** The slope applied now: ×1 = as acquired. */
  get gain() {
    if (!this.auto) return GAINS[this.gainIndex];
    return Math.round(10 * 255 / (this.levels.high - this.levels.low)) / 10;
  }
  get zoom() { return ZOOMS[this.zoomIndex]; }

  /** Shows the image at `path`; resolves when it is on screen. Keeps zoom and gain. */
  async show(path) {
    this.message.hidden = true;
    let image;
    try {
      image = await loadImage(path);
    } catch (error) {
      this.clear(error.status ? `The image could not be loaded: ${error.detail}`
        : "This browser cannot display the image's file format (TIFF, for example). Ask an admin to import PNG files.");
      throw error;
    }
    this.source = image;
    this.canvas.width = image.naturalWidth;
    this.canvas.height = image.naturalHeight;
    this.canvas.hidden = false;
    this.context.drawImage(image, 0, 0);
    this.levels = levelsOf(this.context.getImageData(0, 0, this.canvas.width, this.canvas.height).data);
    this.draw();
    this.layout();
    this.stage.scrollTo(0, 0);
    return image;
  }

  clear(text = "") {
    this.source = null;
    this.canvas.hidden = true;
    this.overlay.hidden = true;
    this.message.textContent = text;
    this.message.hidden = !text;
  }

  /** Applies the gain to the pixels (cheap: cells are about 70 x 70 pixels). */
  draw() {
    if (!this.source) return;
    const { width, height } = this.canvas;
    this.context.drawImage(this.source, 0, 0);
    const offset = this.auto ? this.levels.low : 0;
    const slope = this.auto ? 255 / (this.levels.high - this.levels.low) : this.gain;
    if (offset === 0 && slope === 1) return;
    const pixels = this.context.getImageData(0, 0, width, height);
    const data = pixels.data;
    for (let i = 0; i < data.length; i += 4) {
      data[i] = (data[i] - offset) * slope; // the clamped array clips to 0..255
      data[i + 1] = (data[i + 1] - offset) * slope;
      data[i + 2] = (data[i + 2] - offset) * slope;
    }
    this.context.putImageData(pixels, 0, 0);
  }

  layout() {
    if (!this.source) return;
    const padding = 24;
    const availableWidth = this.stage.clientWidth - padding;
    const availableHeight = this.stage.clientHeight - padding;
    const fit = Math.max(0.1, Math.min(availableWidth / this.canvas.width, availableHeight / this.canvas.height));
    const width = Math.round(this.canvas.width * fit * this.zoom);
    const height = Math.round(this.canvas.height * fit * this.zoom);
    this.box.style.width = `${width}px`;
    this.box.style.height = `${height}px`;
    this.stage.classList.toggle("zoomed", this.zoom > 1);
    this.stage.classList.toggle("smooth", this.smooth);
    this.onChange(this);
  }

  zoomBy(steps) {
    const before = this.zoom;
    this.zoomIndex = Math.max(0, Math.min(ZOOMS.length - 1, this.zoomIndex + steps));
    if (this.zoom === before) return;
    const ratio = this.zoom / before;
    const centreX = this.stage.scrollLeft + this.stage.clientWidth / 2;
    const centreY = this.stage.scrollTop + this.stage.clientHeight / 2;
    this.layout();
    this.stage.scrollTo(centreX * ratio - this.stage.clientWidth / 2, centreY * ratio - this.stage.clientHeight / 2);
  }

  resetZoom() {
    this.zoomIndex = 0;
    this.layout();
  }

  setGainIndex(index) {
    this.auto = false;
    this.gainIndex = Math.max(0, Math.min(GAINS.length - 1, index));
    this.draw();
    this.onChange(this);
  }

  /** One step up or down from the gain applied now (leaving auto). */
  gainBy(steps) {
    if (this.auto) {
      const gain = this.gain;
      const nearest = GAINS.reduce((best, g, i) => (Math.abs(g - gain) < Math.abs(GAINS[best] - gain) ? i : best), 0);
      const from = steps > 0 ? (GAINS[nearest] > gain ? nearest - 1 : nearest) : (GAINS[nearest] < gain ? nearest + 1 : nearest);
      this.setGainIndex(from + steps);
    } else {
      this.setGainIndex(this.gainIndex + steps);
    }
  }

  setAuto() {
    this.auto = true;
    this.draw();
    this.onChange(this);
  }

  setSmooth(smooth) {
    this.smooth = smooth;
    this.layout();
  }

  /** Lays a map (object URL) over the cell, or removes it (null). The maps are diverging
   *  (white = no relevance), so white is made transparent: only relevant pixels tint the cell. */
  async setOverlay(url) {
    this.overlayOn = Boolean(url);
    this.overlayUrl = url;
    if (url) {
      const map = new Image();
      map.src = url;
      await map.decode();
      if (this.overlayUrl !== url) return;
      this.overlay.width = map.naturalWidth;
      this.overlay.height = map.naturalHeight;
      this.overlayContext.drawImage(map, 0, 0);
      const pixels = this.overlayContext.getImageData(0, 0, map.naturalWidth, map.naturalHeight);
      const data = pixels.data;
      for (let i = 0; i < data.length; i += 4) {
        const whiteness = Math.min(data[i], data[i + 1], data[i + 2]);
        data[i + 3] = Math.max(0, Math.min(220, 1.6 * (215 - whiteness))); // faint relevance stays clear
      }
      this.overlayContext.putImageData(pixels, 0, 0);
    }
    this.overlay.hidden = !url || !this.source;
    this.onChange(this);
  }

  enablePanning() {
    let start = null;
    this.stage.addEventListener("pointerdown", (event) => {
      if (this.zoom === 1 || event.button !== 0) return;
      start = { x: event.clientX, y: event.clientY, left: this.stage.scrollLeft, top: this.stage.scrollTop };
      this.stage.setPointerCapture(event.pointerId);
      this.stage.classList.add("panning");
    });
    this.stage.addEventListener("pointermove", (event) => {
      if (!start) return;
      this.stage.scrollLeft = start.left - (event.clientX - start.x);
      this.stage.scrollTop = start.top - (event.clientY - start.y);
    });
    const end = () => { start = null; this.stage.classList.remove("panning"); };
    this.stage.addEventListener("pointerup", end);
    this.stage.addEventListener("pointercancel", end);
  }
}
