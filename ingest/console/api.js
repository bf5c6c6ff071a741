// The console's calls: the Pinpoint API itself, carried by the session cookie.
// Every request says X-Ingest-Console (what the edge requires of a session's
// requests: a cross-site page cannot send it); the page's own refreshes say
// "refresh", so they do not keep an idle session alive.
import { signedHeaders } from "./sigv4.js";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  get sessionEnded() {
    return this.status === 403 && /UnrecognizedClient|MissingAuthenticationToken/.test(this.type);
  }
}

let signedOut = () => {};
export function onSessionEnded(handler) {
  signedOut = handler;
}

async function answer(response) {
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const type = response.headers.get("x-amzn-ErrorType") || "";
    const message = (data && (data.Message || data.message)) || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, type, message);
    if (error.sessionEnded) signedOut(error);
    throw error;
  }
  return data;
}

export async function call(path, { method = "GET", refresh = false } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "X-Ingest-Console": refresh ? "refresh" : "1" },
  });
  return answer(response);
}

// The server's clock minus ours, learnt from a skewed sign-in's Date header.
let skewMs = 0;

export async function signIn(accessKeyId, secret) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = signedHeaders({
      method: "POST",
      host: location.host,
      path: "/console/api/session",
      accessKeyId,
      secret,
      region: "us-east-1",
      when: new Date(Date.now() + skewMs),
    });
    const response = await fetch("/console/api/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { ...headers, "X-Ingest-Console": "1" },
    });
    const date = Date.parse(response.headers.get("Date") || "");
    if (response.status === 403 && attempt === 0 && !Number.isNaN(date)) {
      const type = response.headers.get("x-amzn-ErrorType") || "";
      if (type === "InvalidSignatureException" && Math.abs(date - Date.now()) > 5 * 60 * 1000) {
        skewMs = date - Date.now();
        continue;
      }
    }
    return answer(response);
  }
  return null;
}

export const signOut = () => call("/console/api/session", { method: "DELETE" });
export const whoAmI = (refresh = false) => call("/console/api/session", { refresh });

const enc = encodeURIComponent;

export async function apps(me, refresh) {
  // An admin key bound to apps may not list apps: it reads each of its own.
  if (me.Scope === "admin" && me.Apps.length) {
    return Promise.all(me.Apps.map((id) => call(`/v1/apps/${enc(id)}`, { refresh })));
  }
  const found = [];
  let token = "";
  do {
    const page = await call(`/v1/apps?page-size=100${token ? `&token=${enc(token)}` : ""}`, { refresh });
    found.push(...page.Item);
    token = page.NextToken || "";
  } while (token);
  return found;
}

export const app = (id, refresh) => call(`/v1/apps/${enc(id)}`, { refresh });

export function kpi(appId, name, start, end, refresh) {
  const query = `start-time=${enc(start)}&end-time=${enc(end)}`;
  return call(`/v1/apps/${enc(appId)}/kpis/daterange/${enc(name)}?${query}`, { refresh });
}

export const endpoint = (appId, id, refresh) =>
  call(`/v1/apps/${enc(appId)}/endpoints/${enc(id)}`, { refresh });
export const userEndpoints = (appId, id, refresh) =>
  call(`/v1/apps/${enc(appId)}/users/${enc(id)}`, { refresh });
// GetSegments, GetImportJobs, GetExportJobs: botocore's shapes (SegmentsResponse,
// ImportJobsResponse, ExportJobsResponse are the bodies themselves).
export const segments = (appId, refresh) => allBody(`/v1/apps/${enc(appId)}/segments`, refresh);
export const importJobs = (appId, refresh) => allBody(`/v1/apps/${enc(appId)}/jobs/import`, refresh);
export const exportJobs = (appId, refresh) => allBody(`/v1/apps/${enc(appId)}/jobs/export`, refresh);

async function allBody(path, refresh) {
  const found = [];
  let token = "";
  do {
    const page = await call(`${path}?page-size=100${token ? `&token=${enc(token)}` : ""}`, { refresh });
    found.push(...(page.Item || []));
    token = page.NextToken || "";
  } while (token && found.length < 1000);
  return found;
}

export const streamHealth = (appId, refresh) =>
  call(`/console/api/apps/${enc(appId)}/stream-health`, { refresh });
export const eventStream = (appId, refresh) => call(`/v1/apps/${enc(appId)}/eventstream`, { refresh });

/** Runs `tasks` (functions returning promises) at most `limit` at a time:
 * the edge admits a bounded number of requests per process. */
export async function bounded(tasks, limit = 4) {
  const results = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
