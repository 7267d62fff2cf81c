// The one way the UI talks to the server: the public REST API under /api, with the
// bearer token kept in sessionStorage after sign-in.

const SESSION_KEY = "xal.session";

export function currentSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY)) || null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

/** Revokes the page's token on the server (so a copy of it is useless), then forgets it. */
export async function signOut() {
  const session = currentSession();
  sessionStorage.removeItem(SESSION_KEY);
  if (session) {
    try {
      await fetch("/api/auth/signout", { method: "POST", headers: { Authorization: `Bearer ${session.token}` } });
    } catch {
      // offline: the token still expires (XAL_SIGNIN_TOKEN_HOURS)
    }
  }
  location.href = "index.html";
}

/** Sends the visitor to the sign-in page (and back here afterwards) when no token is held. */
export function requireSession() {
  const session = currentSession();
  if (!session) {
    location.href = `index.html?next=${encodeURIComponent(location.pathname.split("/").pop() + location.search)}`;
    throw new Error("not signed in");
  }
  return session;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
  /** A network failure or a server hiccup: worth trying again. A 4xx is the server's answer. */
  get retryable() {
    return this.status === 0 || this.status >= 500 || this.status === 429;
  }
}

function authHeaders(extra = {}) {
  const session = currentSession();
  return session ? { Authorization: `Bearer ${session.token}`, ...extra } : extra;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** fetch() with the token; resolves to the Response, or throws ApiError (status 0 = network). */
export async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, headers: authHeaders(headers), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "the server cannot be reached");
  }
  if (response.status === 401 && !path.endsWith("/auth/token")) {
    sessionStorage.removeItem(SESSION_KEY);
    requireSession();
  }
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  return response;
}

/** JSON in, JSON out. */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Calls fn until it succeeds or fails with an answer from the server (4xx). Network errors
 *  and 5xx are retried with backoff; onRetry(error, attempt) is told each time. */
export async function withRetry(fn, { onRetry = () => {}, maxDelayMs = 8000 } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await fn();
    } catch (error) {
      if (!(error instanceof ApiError) || !error.retryable) throw error;
      onRetry(error, attempt);
      await sleep(Math.min(maxDelayMs, 250 * 2 ** attempt));
    }
  }
}

// Images and maps are content-addressed and need the token, so they are fetched once as
// blobs and shown through object URLs. The cache keeps the most recent few hundred.
const blobCache = new Map();
const BLOB_CACHE_SIZE = 300;

export function blobUrl(path) {
  if (blobCache.has(path)) {
    const hit = blobCache.get(path);
    blobCache.delete(path);
    blobCache.set(path, hit);
    return hit;
  }
  const promise = withRetry(() => request(path))
    .then((response) => response.blob())
    .then((blob) => URL.createObjectURL(blob));
  promise.catch(() => blobCache.delete(path));
  blobCache.set(path, promise);
  while (blobCache.size > BLOB_CACHE_SIZE) {
    const [oldest, old] = blobCache.entries().next().value;
    blobCache.delete(oldest);
    old.then((url) => URL.revokeObjectURL(url), () => {});
  }
  return promise;
}

/** Decoded <img> for a blob URL (resolves once the browser has decoded it). */
export async function loadImage(path) {
  const url = await blobUrl(path);
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

/** Downloads an API file (e.g. the label export) with the token. */
export async function download(path, fallbackName) {
  const response = await request(path);
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = /filename="?([^"]+)"?/.exec(disposition)?.[1] || fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
