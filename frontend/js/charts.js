// Inline SVG charts, small and dependency-free. Colours are Okabe–Ito (colour-blind safe);
// series also differ by marker shape and dash, so no chart relies on colour alone.

export const OKABE_ITO = {
  black: "#000000", orange: "#E69F00", skyBlue: "#56B4E9", green: "#009E73",
  yellow: "#F0E442", blue: "#0072B2", vermillion: "#D55E00", purple: "#CC79A7",
};
const SERIES = [
  { color: OKABE_ITO.blue, marker: "circle", dash: "" },
  { color: OKABE_ITO.orange, marker: "square", dash: "6 4" },
  { color: OKABE_ITO.green, marker: "triangle", dash: "2 3" },
  { color: OKABE_ITO.purple, marker: "diamond", dash: "8 3 2 3" },
];
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) if (value !== undefined && value !== null) element.setAttribute(name, value);
  for (const child of children.flat()) if (child) element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return element;
}

function marker(shape, x, y, color) {
  const r = 4;
  if (shape === "square") return svg("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: color });
  if (shape === "triangle") return svg("path", { d: `M${x},${y - r - 1} L${x + r + 1},${y + r} L${x - r - 1},${y + r} Z`, fill: color });
  if (shape === "diamond") return svg("path", { d: `M${x},${y - r - 1} L${x + r + 1},${y} L${x},${y + r + 1} L${x - r - 1},${y} Z`, fill: color });
  return svg("circle", { cx: x, cy: y, r, fill: color });
}

/** The width in pixels of `text` as a chart draws it (.chart text: 12.5px; bold when strong). */
function textWidth(text, { bold = false, size = 12.5 } = {}) {
  const context = (textWidth.canvas ||= document.createElement("canvas")).getContext("2d");
  const family = getComputedStyle(document.documentElement).fontFamily || "sans-serif";
  context.font = `${bold ? 700 : 400} ${size}px ${family}`;
  return context.measureText(String(text)).width;
}

/**
 * Horizontal bars, one per item: [{label, value, highlight?, text?, extra?}]; `extra` is drawn
 * after the value in sky blue (a second part of the same bar, e.g. a step's reserve labels).
 * max: the value of a full bar (default: the largest value); min: the value of an empty bar
 * (default 0; a chart of values that differ little, such as distances, starts at the smallest,
 * and its empty bars keep a stub so that every bar is seen). The label column is as wide as
 * the longest label, bold where highlighted, so no label is clipped.
 */
export function barChart(items, { max, min = 0, width = 320, barHeight = 18, labelWidth = 110, format = (v) => v.toFixed(2), title = "" } = {}) {
  const top = max ?? Math.max(1e-9, ...items.map((item) => item.value));
  const gap = 5;
  const height = items.length * (barHeight + gap);
  labelWidth = Math.max(labelWidth, 10 + Math.max(0, ...items.map((item) => textWidth(item.label, { bold: item.highlight }))));
  const valueWidth = 10 + Math.max(0, ...items.map((item) => textWidth(item.text ?? format(item.value))));
  const barSpace = Math.max(100, width - labelWidth - valueWidth);
  width = labelWidth + barSpace + valueWidth;
  const range = top - min || 1;
  const stub = min > 0 ? 4 : 1;
  const chart = svg("svg", {
    class: "chart bar-chart", viewBox: `0 0 ${Math.ceil(width)} ${height}`, width: Math.ceil(width), height, role: "img",
    "aria-label": title || items.map((item) => `${item.label}: ${format(item.value)}`).join(", "),
  });
  items.forEach((item, i) => {
    const y = i * (barHeight + gap);
    const length = Math.max(stub, (barSpace * Math.max(0, Math.min(item.value, top) - min)) / range);
    chart.append(...[
      svg("text", { x: labelWidth - 6, y: y + barHeight * 0.72, "text-anchor": "end", class: item.highlight ? "label strong" : "label" }, item.label),
      svg("rect", { x: labelWidth, y, width: barSpace, height: barHeight, class: "track", rx: 2 }),
      svg("rect", { x: labelWidth, y, width: length, height: barHeight, rx: 2, class: "bar",
        fill: item.highlight ? OKABE_ITO.orange : OKABE_ITO.blue }),
      item.extra > 0 ? svg("rect", { x: labelWidth + length, y, width: Math.min(barSpace - length, (barSpace * item.extra) / range),
        height: barHeight, rx: 2, class: "bar extra", fill: OKABE_ITO.skyBlue }) : null,
      svg("text", { x: labelWidth + barSpace + 6, y: y + barHeight * 0.72, class: "value" }, item.text ?? format(item.value)),
    ].filter(Boolean));
  });
  return chart;
}

/**
 * A line chart of several series over a shared numeric x: series = [{name, points: [[x, y]]}].
 * y is in [0, yMax]. Each series has its own colour, marker and dash, and a legend.
 */
export function lineChart(series, { width = 400, height = 240, xLabel = "", yLabel = "", yMax = 1, yFormat = (v) => `${Math.round(100 * v)}%`, title = "" } = {}) {
  const pad = { left: 58, right: 16, top: 30, bottom: 38 };
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(1, ...xs);
  const sx = (x) => pad.left + ((x - xMin) / (xMax - xMin || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - (y / yMax) * (height - pad.top - pad.bottom);
  const chart = svg("svg", { class: "chart line-chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": title || series.map((s) => `${s.name}: ${s.points.map((p) => `${p[0]} → ${yFormat(p[1])}`).join(", ")}`).join("; ") });
  for (let i = 0; i <= 4; i += 1) {
    const value = (yMax * i) / 4;
    chart.append(
      svg("line", { x1: pad.left, x2: width - pad.right, y1: sy(value), y2: sy(value), class: "grid" }),
      svg("text", { x: pad.left - 6, y: sy(value) + 4, "text-anchor": "end", class: "tick" }, yFormat(value)),
    );
  }
  const xTicks = [...new Set(xs)].sort((a, b) => a - b);
  for (const x of xTicks) chart.append(svg("text", { x: sx(x), y: height - pad.bottom + 16, "text-anchor": "middle", class: "tick" }, x));
  chart.append(
    svg("line", { x1: pad.left, x2: width - pad.right, y1: sy(0), y2: sy(0), class: "axis" }),
    svg("text", { x: (pad.left + width - pad.right) / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel),
    svg("text", { x: 14, y: (pad.top + height - pad.bottom) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(pad.top + height - pad.bottom) / 2})` }, yLabel),
  );
  series.forEach((s, i) => {
    const style = SERIES[i % SERIES.length];
    const points = [...s.points].sort((a, b) => a[0] - b[0]);
    if (points.length > 1) {
      chart.append(svg("polyline", { points: points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
        stroke: style.color, "stroke-width": 2.5, "stroke-dasharray": style.dash || null }));
    }
    for (const p of points) {
      const dot = marker(style.marker, sx(p[0]), sy(p[1]), style.color);
      dot.append(svg("title", {}, `${s.name} at ${p[0]}: ${yFormat(p[1])}`));
      chart.append(dot);
    }
    const lx = pad.left + 8 + i * 90;
    chart.append(
      svg("line", { x1: lx, x2: lx + 22, y1: 12, y2: 12, stroke: style.color, "stroke-width": 2.5, "stroke-dasharray": style.dash || null }),
      marker(style.marker, lx + 11, 12, style.color),
      svg("text", { x: lx + 28, y: 16, class: "legend" }, s.name),
    );
  });
  return chart;
}

/** A confusion matrix as an HTML table, true classes in rows; shading is one blue hue by row share. */
export function confusionTable(matrix, classNames) {
  const table = document.createElement("table");
  table.className = "confusion";
  const head = table.createTHead().insertRow();
  head.append(Object.assign(document.createElement("th"), { textContent: "true \\ predicted", scope: "col" }));
  for (const name of classNames) head.append(Object.assign(document.createElement("th"), { textContent: name, scope: "col" }));
  const body = table.createTBody();
  matrix.forEach((row, i) => {
    const tr = body.insertRow();
    tr.append(Object.assign(document.createElement("th"), { textContent: classNames[i], scope: "row" }));
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((count, j) => {
      const td = tr.insertCell();
      const share = count / total;
      td.textContent = count;
      td.title = `${classNames[i]} predicted as ${classNames[j]}: ${count} (${Math.round(100 * share)}%)`;
      td.style.background = `rgba(0, 114, 178, ${(0.08 + 0.85 * share).toFixed(3)})`;
      if (share > 0.5) td.classList.add("dark");
      if (i === j) td.classList.add("diagonal");
    });
  });
  return table;
}

/** A labelled progress bar (a real <progress> element, so screen readers announce it). */
export function progressBar(label, value, max, { text } = {}) {
  const wrap = document.createElement("div");
  wrap.className = "progress";
  const id = `p-${Math.random().toString(36).slice(2, 9)}`;
  const caption = document.createElement("label");
  caption.htmlFor = id;
  caption.innerHTML = "";
  caption.append(Object.assign(document.createElement("span"), { textContent: label }),
    Object.assign(document.createElement("span"), { className: "figure", textContent: text ?? `${value} / ${max}` }));
  const bar = Object.assign(document.createElement("progress"), { id, max: Math.max(1, max), value: Math.min(value, max) });
  wrap.append(caption, bar);
  return wrap;
}

/** Okabe–Ito colours and marker shapes for categories (e.g. clusters), cycled; colour and shape differ together. */
const CATEGORY_COLOURS = [OKABE_ITO.blue, OKABE_ITO.orange, OKABE_ITO.green, OKABE_ITO.purple,
  OKABE_ITO.vermillion, OKABE_ITO.skyBlue, OKABE_ITO.yellow, OKABE_ITO.black];
const CATEGORY_MARKERS = ["circle", "square", "triangle", "diamond"];

export function categoryColour(index) {
  return CATEGORY_COLOURS[((index % CATEGORY_COLOURS.length) + CATEGORY_COLOURS.length) % CATEGORY_COLOURS.length];
}

/**
 * A scatter plot of points [{x, y, category, title?}], one colour and marker per category,
 * with a legend; names(category) gives the legend text.
 */
export function scatterChart(points, { width = 420, height = 320, names = (c) => `cluster ${c}`, xLabel = "PC1", yLabel = "PC2", title = "" } = {}) {
  const pad = { left: 30, right: 12, top: 30, bottom: 30 };
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [xMin, xMax, yMin, yMax] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad.left + ((x - xMin) / (xMax - xMin || 1)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - yMin) / (yMax - yMin || 1)) * (height - pad.top - pad.bottom);
  const categories = [...new Set(points.map((p) => p.category))].sort((a, b) => a - b);
  const chart = svg("svg", { class: "chart scatter-chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": title || `${points.length} cells in ${categories.length} groups: ` +
      categories.map((c) => `${names(c)} ${points.filter((p) => p.category === c).length}`).join(", ") });
  chart.append(
    svg("rect", { x: pad.left, y: pad.top, width: width - pad.left - pad.right, height: height - pad.top - pad.bottom, class: "track", fill: "none" }),
    svg("text", { x: (pad.left + width - pad.right) / 2, y: height - 8, "text-anchor": "middle", class: "axis-label" }, xLabel),
    svg("text", { x: 14, y: (pad.top + height - pad.bottom) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${(pad.top + height - pad.bottom) / 2})` }, yLabel),
  );
  for (const p of points) {
    const dot = marker(CATEGORY_MARKERS[p.category % CATEGORY_MARKERS.length] || "circle", sx(p.x), sy(p.y), categoryColour(p.category));
    dot.setAttribute("fill-opacity", "0.8");
    dot.append(svg("title", {}, p.title ?? names(p.category)));
    chart.append(dot);
  }
  categories.forEach((c, i) => {
    const lx = pad.left + 4 + (i % 4) * ((width - pad.left) / 4);
    const ly = 10 + Math.floor(i / 4) * 12;
    chart.append(marker(CATEGORY_MARKERS[c % CATEGORY_MARKERS.length] || "circle", lx + 4, ly, categoryColour(c)),
      svg("text", { x: lx + 12, y: ly + 4, class: "legend" }, names(c)));
  });
  return chart;
}
