// Planning a folder's import: which files go together, in batches the import route takes.
//
// The server reads each upload as the import API reads a zip (backend/core/readers.py): a
// labels.csv, when there is one, is the list of images, with paths relative to its own folder
// and a mask column or a mask beside each image; otherwise every image file, a class folder
// naming its class, and `<stem>_mask.<ext>` (or `_Mask`) beside `<stem>.<ext>` its mask. A
// request may carry at most 1,000 files (the server's multipart limit), so a folder is sent as
// zips of at most BATCH_FILES files: an image and its mask always in the same zip, and with a
// labels.csv, each zip holds the rows of its own images (the header and those rows, as written).

export const BATCH_FILES = 300;
export const BATCH_BYTES = 64 * 1024 * 1024;
export const IMAGE_SUFFIXES = [".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"];
const LABELS_CSV = "labels.csv";
const PATH_COLUMNS = ["image_path", "path", "file", "filename"];
const MASK_COLUMN = "mask_path";
const JUNK_NAMES = new Set(["thumbs.db", "desktop.ini"]);
const LISTED = 10; // problems named in one message

export class PlanError extends Error {}

/** entries: [{path, file}] ("/"-separated paths, the chosen folder's own name dropped). Resolves
 *  to {batches: [{entries, files (picked files it sends), bytes, csvLines?}], zips (sent as they
 *  are, one a request), picked, images, masks (images sent with their mask), unsent: [paths
 *  neither image nor listed, or junk], csv?};
 *  rejects with a PlanError saying what is wrong before anything is sent. */
export async function planImport(entries) {
  // in path order, as the server reads a folder: the batches, and which of two equal files
  // counts as the duplicate, do not depend on the order the browser lists the files in
  const files = entries.filter((entry) => !isJunk(entry.path)).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const zips = files.filter((entry) => entry.path.toLowerCase().endsWith(".zip"));
  const rest = files.filter((entry) => !entry.path.toLowerCase().endsWith(".zip"));
  const csvs = rest.filter((entry) => basename(entry.path).toLowerCase() === LABELS_CSV);
  if (csvs.length > 1) {
    throw new PlanError(`The folder has ${csvs.length} labels.csv files (${csvs.map((c) => c.path).join(", ")}); keep one.`);
  }
  const plan = await (csvs.length ? planFromCsv(rest, csvs[0], zips) : planFromFiles(rest, zips));
  const junk = entries.filter((entry) => isJunk(entry.path)).map((entry) => entry.path);
  return { ...plan, picked: entries.length, unsent: [...plan.unsent, ...junk] };
}

/** Every image with its mask; files that are neither are not sent. */
function planFromFiles(entries, zips) {
  const images = entries.filter((entry) => isImage(entry.path));
  const byStem = new Map(); // "dir\0stem" -> images
  for (const entry of images) {
    const key = `${dirname(entry.path)}\0${stem(entry.path)}`;
    if (!byStem.has(key)) byStem.set(key, []);
    byStem.get(key).push(entry);
  }
  const maskOf = new Map(); // image entry -> its mask entry
  for (const entry of images) {
    const s = stem(entry.path);
    if (!s.toLowerCase().endsWith("_mask")) continue;
    for (const partner of byStem.get(`${dirname(entry.path)}\0${s.slice(0, -5)}`) || []) maskOf.set(partner, entry);
  }
  const masks = new Set(maskOf.values());
  const units = images.filter((entry) => !masks.has(entry)).map((entry) => (maskOf.has(entry) ? [entry, maskOf.get(entry)] : [entry]));
  return {
    batches: batchesOf(units).map(({ units: chosen, files, bytes }) => ({ entries: chosen.flat(), files, bytes })),
    zips,
    images: units.length,
    masks: units.filter((unit) => unit.length > 1).length,
    unsent: entries.filter((entry) => !isImage(entry.path)).map((entry) => entry.path),
  };
}

/** The rows of the labels.csv, each with its image and mask; the CSV goes with every batch,
 *  cut to that batch's rows. */
async function planFromCsv(entries, csv, zips) {
  const text = (await csv.file.text()).replace(/^\uFEFF/, "");
  const records = csvRecords(text, delimiterOf(text));
  if (!records.length) throw new PlanError(`${csv.path} is empty.`);
  const [header, ...rows] = records;
  const columns = new Map(header.fields.map((name, i) => [name.trim().toLowerCase(), i]));
  const pathColumn = PATH_COLUMNS.map((c) => columns.get(c)).find((i) => i !== undefined);
  if (pathColumn === undefined) {
    throw new PlanError(`${csv.path} has no image-path column: name one ${PATH_COLUMNS.join(", ")} (its columns are: ${header.fields.join(", ") || "none"}).`);
  }
  const maskColumn = columns.get(MASK_COLUMN);
  const byPath = new Map(entries.map((entry) => [entry.path, entry]));
  const base = dirname(csv.path);
  const problems = [];
  const units = [];
  for (const row of rows) {
    if (row.fields.length === 1 && row.fields[0] === "") continue; // a blank line, as Python's csv skips it
    const reference = (row.fields[pathColumn] || "").trim();
    if (!reference) { problems.push(`line ${row.line}: no image path`); continue; }
    const image = inside(base, reference);
    if (image === null) { problems.push(`line ${row.line}: ${reference} lies outside the CSV's folder`); continue; }
    if (!byPath.has(image)) { problems.push(`line ${row.line}: ${reference} is not in the folder`); continue; }
    const unit = { row, files: [byPath.get(image)] };
    const maskReference = maskColumn === undefined ? "" : (row.fields[maskColumn] || "").trim();
    if (maskReference) {
      const mask = inside(base, maskReference);
      if (mask === null || !byPath.has(mask)) { problems.push(`line ${row.line}: mask ${maskReference} is not in the folder`); continue; }
      unit.files.push(byPath.get(mask));
    } else if (maskColumn === undefined) {
      const mask = maskBeside(image, byPath);
      if (mask) unit.files.push(mask);
    }
    units.push(unit);
  }
  if (problems.length) {
    throw new PlanError(`${csv.path}: ${problems.length} row${problems.length === 1 ? "" : "s"} cannot be used, so nothing was sent: ` +
      `${problems.slice(0, LISTED).join("; ")}${problems.length > LISTED ? ` (and ${problems.length - LISTED} more)` : ""}.`);
  }
  if (!units.length) throw new PlanError(`${csv.path} lists no images.`);
  const sent = new Set([csv, ...units.flatMap((unit) => unit.files)]);
  const batches = batchesOf(units.map((unit) => unit.files), { reserve: 1 }).map((batch, index) => {
    const lines = [header, ...batch.indexes.map((i) => units[i].row)];
    const body = `${lines.map((line) => line.raw).join("\n")}\n`;
    const file = new Blob([body], { type: "text/csv" });
    // the server names a CSV problem by its line in the batch's CSV; csvLines maps it back
    const csvLines = new Map();
    let line = 0;
    for (const record of lines) {
      line += record.raw.split("\n").length;
      csvLines.set(line, record.line);
    }
    // files: the picked files it sends (the CSV counts once, with the first batch)
    return { entries: [{ path: csv.path, file }, ...batch.units.flat()], files: batch.files + (index === 0 ? 1 : 0), bytes: batch.bytes + file.size, csvLines };
  });
  return {
    batches,
    zips,
    images: units.length,
    masks: units.filter((unit) => unit.files.length > 1).length,
    unsent: entries.filter((entry) => !sent.has(entry)).map((entry) => entry.path),
    csv: csv.path,
  };
}

/** Groups units (an image with its mask: [entry, ...]) in order into batches of at most
 *  BATCH_FILES files and BATCH_BYTES bytes, `reserve` files of each kept for a labels.csv:
 *  [{units, indexes (into `units`), files, bytes}]. */
function batchesOf(units, { reserve = 0 } = {}) {
  const batches = [];
  let batch = null;
  units.forEach((unit, index) => {
    const bytes = unit.reduce((sum, entry) => sum + entry.file.size, 0);
    if (!batch || (batch.files && (batch.files + unit.length + reserve > BATCH_FILES || batch.bytes + bytes > BATCH_BYTES))) {
      batch = { units: [], indexes: [], files: 0, bytes: 0 };
      batches.push(batch);
    }
    batch.units.push(unit);
    batch.indexes.push(index);
    batch.files += unit.length;
    batch.bytes += bytes;
  });
  return batches;
}

/** CSV records of `text` (RFC 4180 quoting): {fields, raw, line}, raw as written (without its
 *  line break) and line the physical line it ends on, as Python's csv module counts them. */
export function csvRecords(text, delimiter = ",") {
  const records = [];
  let fields = [];
  let field = "";
  let quoted = false;
  let start = 0;
  let line = 1;
  const finish = (end) => {
    fields.push(field);
    records.push({ fields, raw: text.slice(start, end).replace(/\r$/, ""), line });
    fields = [];
    field = "";
  };
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 1; }
      else if (c === '"') quoted = false;
      else { field += c; if (c === "\n") line += 1; }
    } else if (c === '"') quoted = true;
    else if (c === delimiter) { fields.push(field); field = ""; }
    else if (c === "\n") { finish(i); line += 1; start = i + 1; }
    else if (c !== "\r") field += c;
  }
  if (start < text.length) finish(text.length);
  return records;
}

/** Comma, or what a spreadsheet wrote instead (semicolons, tabs), as the header line shows. */
function delimiterOf(text) {
  const header = text.split("\n", 1)[0];
  const counts = [",", ";", "\t"].map((d) => [d, header.split(d).length - 1]);
  counts.sort((a, b) => b[1] - a[1]);
  return counts[0][1] > 0 ? counts[0][0] : ",";
}

function maskBeside(image, byPath) {
  const dot = image.lastIndexOf(".");
  const [s, suffix] = [image.slice(0, dot), image.slice(dot)];
  for (const maskSuffix of [suffix, ...IMAGE_SUFFIXES, ...IMAGE_SUFFIXES.map((x) => x.toUpperCase())]) {
    for (const marker of ["_Mask", "_mask"]) if (byPath.has(s + marker + maskSuffix)) return byPath.get(s + marker + maskSuffix);
  }
  return null;
}

/** `reference` (relative to the folder `base`) as a path in the chosen folder, or null outside it. */
function inside(base, reference) {
  reference = reference.replace(/\\/g, "/");
  if (!reference || reference.startsWith("/") || /^[A-Za-z]:/.test(reference)) return null;
  const parts = [];
  for (const part of (base ? `${base}/${reference}` : reference).split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") { if (!parts.length) return null; parts.pop(); } else parts.push(part);
  }
  const path = parts.join("/");
  return base && !path.startsWith(`${base}/`) ? null : path;
}

export function isImage(path) {
  const lower = path.toLowerCase();
  return IMAGE_SUFFIXES.some((suffix) => lower.endsWith(suffix));
}

function isJunk(path) {
  const parts = path.split("/");
  return parts.some((part) => part.startsWith(".") || part === "__MACOSX") || JUNK_NAMES.has(parts.at(-1).toLowerCase());
}

function basename(path) {
  return path.slice(path.lastIndexOf("/") + 1);
}

function dirname(path) {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "" : path.slice(0, slash);
}

function stem(path) {
  const name = basename(path);
  const dot = name.lastIndexOf(".");
  return dot <= 0 ? name : name.slice(0, dot);
}
