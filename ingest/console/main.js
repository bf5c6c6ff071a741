// The console: sign-in, then pages by the URL's hash. Each page is a
// function that fetches what it shows and returns its content; the page in
// view is fetched again every REFRESH_MS (as "refresh" requests), or every
// LIVE_MS while it shows a job still running.
import * as api from "./api.js";
import { h, message, number, table } from "./dom.js";
import { kpiSection } from "./charts.js";

const REFRESH_MS = 30_000;
const LIVE_MS = 3_000;
// Set by a page showing something that moves (a running job).
let live = false;
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const stamp = document.getElementById("stamp");
let me = null;
let timer = null;

// Overview KPIs, in the order Pinpoint's Analytics pages showed them.
const OVERVIEW = [
  ["daily-active-endpoints", "Daily active endpoints"],
  ["daily-active-users", "Daily active users"],
  ["monthly-active-endpoints", "Monthly active endpoints"],
  ["monthly-active-users", "Monthly active users"],
  ["new-endpoints", "New endpoints"],
  ["sessions-grouped-by-date", "Sessions"],
  ["average-session-duration-grouped-by-date", "Average session duration (ms)"],
  ["revenue-grouped-by-date", "Revenue per currency"],
  ["units-sold-grouped-by-date", "Units sold"],
  ["paying-endpoints-grouped-by-date", "Paying endpoints"],
  ["sign-ins-grouped-by-date", "Sign-ins"],
  ["sign-ups-grouped-by-date", "Sign-ups"],
  ["auth-failures-grouped-by-date", "Authentication failures"],
];

// Dates -----------------------------------------------------------------

const DAY_MS = 86_400_000;
const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
const todayMs = () => Date.parse(`${isoDay(Date.now())}T00:00:00Z`);

// A custom range's longest: each 31 days of it costs every KPI one more call.
const MAX_DAYS = 366;

/** The range a page shows, from its query (?days=7|30|90 or ?from=&to=). */
function range(query) {
  const from = query.get("from");
  const to = query.get("to");
  if (from && to && /^\d{4}-\d{2}-\d{2}$/.test(from) && /^\d{4}-\d{2}-\d{2}$/.test(to) && from <= to) {
    const span = { first: Date.parse(`${from}T00:00:00Z`), last: Date.parse(`${to}T00:00:00Z`), label: "custom" };
    if ((span.last - span.first) / DAY_MS + 1 > MAX_DAYS) throw new RangeError(`A range is at most ${MAX_DAYS} days`);
    return span;
  }
  const days = [7, 30, 90].includes(Number(query.get("days"))) ? Number(query.get("days")) : 7;
  return { first: todayMs() - (days - 1) * DAY_MS, last: todayMs(), label: String(days) };
}

const daysOf = ({ first, last }) => {
  const out = [];
  for (let day = first; day <= last; day += DAY_MS) out.push(isoDay(day));
  return out;
};

/** The range cut in windows the API takes (at most 31 days each). */
function windows({ first, last }) {
  const out = [];
  for (let start = first; start <= last; start += 31 * DAY_MS) {
    const end = Math.min(start + 30 * DAY_MS, last);
    out.push([new Date(start).toISOString(), new Date(end + DAY_MS - 1).toISOString()]);
  }
  return out;
}

async function rowsOver(appId, name, span, refresh) {
  const parts = await api.bounded(windows(span).map(([s, e]) => () => api.kpi(appId, name, s, e, refresh)));
  return parts.flatMap((p) => p.KpiResult.Rows);
}

function rangePicker(path, span, query) {
  const links = [7, 30, 90].map((d) =>
    h("a", { href: `#${path}?days=${d}`, "aria-current": span.label === String(d) ? "page" : null }, `Last ${d} days`),
  );
  const from = h("input", { type: "date", name: "from", value: query.get("from") || isoDay(span.first), "aria-label": "From" });
  const to = h("input", { type: "date", name: "to", value: query.get("to") || isoDay(span.last), "aria-label": "To" });
  const form = h(
    "form",
    { class: "custom", onsubmit: (e) => { e.preventDefault(); location.hash = `#${path}?from=${from.value}&to=${to.value}`; } },
    from, to, h("button", { type: "submit" }, "Show"),
  );
  return h("div", { class: "range", dataset: { start: new Date(span.first).toISOString(), end: new Date(span.last + DAY_MS - 1).toISOString() } }, ...links, form);
}

// Pages -----------------------------------------------------------------

async function appsPage(refresh) {
  const found = await api.apps(me, refresh);
  if (!found.length) return [h("h2", {}, "Apps"), message("empty", "No apps yet: CreateApp makes one.")];
  const today = [new Date(todayMs()).toISOString(), new Date(todayMs() + DAY_MS - 1).toISOString()];
  const counts = await api.bounded(
    found.map((a) => () => api.kpi(a.Id, "events-grouped-by-date", ...today, refresh)),
  );
  const rows = found.map((a, i) => [
    h("a", { href: `#/apps/${encodeURIComponent(a.Id)}` }, a.Name),
    h("code", {}, a.Id),
    a.CreationDate || "",
    number(counts[i].KpiResult.Rows.reduce((sum, r) => sum + Number(r.Values[0].Value), 0)),
  ]);
  return [h("h2", {}, "Apps"), table("Apps this key may see", ["Name", "ID", "Created", "Events today (UTC)"], rows, { id: "apps" })];
}

async function appTitle(appId, refresh) {
  const found = await api.app(appId, refresh);
  return h("h2", {}, found.Name, " ", h("small", {}, h("code", {}, found.Id)));
}

async function overviewPage(appId, query, refresh) {
  const span = range(query);
  const days = daysOf(span);
  const title = await appTitle(appId, refresh);
  const results = await api.bounded(OVERVIEW.map(([name]) => () => rowsOver(appId, name, span, refresh)));
  const sections = OVERVIEW.map(([name, label], i) => kpiSection({ title: label, name, rows: results[i], days, fallbackColumns: ["Date", label] }));
  return [title, rangePicker(`/apps/${encodeURIComponent(appId)}`, span, query), h("div", { class: "grid" }, sections)];
}

async function eventsPage(appId, query, refresh) {
  const span = range(query);
  const days = daysOf(span);
  const title = await appTitle(appId, refresh);
  const rows = await rowsOver(appId, "events-grouped-by-event-type", span, refresh);
  const totals = new Map();
  for (const row of rows) totals.set(row.GroupedBys[0].Value, (totals.get(row.GroupedBys[0].Value) || 0) + Number(row.Values[0].Value));
  const path = `/apps/${encodeURIComponent(appId)}/events`;
  const content = [title, rangePicker(path, span, query)];
  if (!totals.size) return [...content, message("empty", "No events in this range.")];
  const types = [...totals.keys()].sort();
  content.push(table("Events by type", ["Event type", "Events"], types.map((t) => [t, number(totals.get(t))]), { id: "event-types", class: "numbers" }));
  const chosen = types.includes(query.get("type")) ? query.get("type") : types[0];
  const select = h("select", { "aria-label": "Event type", onchange: () => { query.set("type", select.value); location.hash = `#${path}?${query}`; } },
    types.map((t) => h("option", { value: t, selected: t === chosen }, t)));
  // Per day: the same KPI, asked for one day at a time.
  const perDay = await api.bounded(days.map((d) => () => api.kpi(appId, "events-grouped-by-event-type", `${d}T00:00:00.000Z`, `${d}T23:59:59.999Z`, refresh)));
  const dayRows = [];
  days.forEach((d, i) => {
    const row = perDay[i].KpiResult.Rows.find((r) => r.GroupedBys[0].Value === chosen);
    if (row) dayRows.push({ GroupedBys: [{ Key: "Date", Type: "String", Value: d }], Values: row.Values });
  });
  content.push(h("label", {}, "Per day for ", select));
  content.push(kpiSection({ title: `${chosen} per day`, name: "events-per-day", rows: dayRows, days, fallbackColumns: ["Date", "Events"] }));
  return content;
}

function definition(rows) {
  return h("dl", {}, rows.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

const mapTable = (caption, values) =>
  Object.keys(values || {}).length
    ? table(caption, ["Name", "Value"], Object.entries(values).map(([k, v]) => [k, Array.isArray(v) ? v.join(", ") : String(v)]))
    : null;

function endpointCard(e) {
  return h(
    "article",
    { class: "endpoint" },
    h("h3", {}, e.Id),
    definition([
      ["Channel", e.ChannelType], ["Address", e.Address], ["Status", e.EndpointStatus], ["Opt-out", e.OptOut],
      ["User ID", e.User && e.User.UserId], ["Last activity", e.EffectiveDate], ["Created", e.CreationDate],
      ["Cohort", e.CohortId],
      ["Device", e.Demographic && [e.Demographic.Platform, e.Demographic.PlatformVersion, e.Demographic.Model].filter(Boolean).join(" ")],
      ["Location", e.Location && [e.Location.City, e.Location.Region, e.Location.Country].filter(Boolean).join(", ")],
    ]),
    mapTable("Attributes", e.Attributes),
    mapTable("Metrics", e.Metrics),
    mapTable("User attributes", e.User && e.User.UserAttributes),
  );
}

async function endpointsPage(appId, query, refresh) {
  const title = await appTitle(appId, refresh);
  const by = query.get("by") === "user" ? "user" : "endpoint";
  const id = query.get("id") || "";
  const kind = h("select", { name: "by", "aria-label": "Look up by" },
    h("option", { value: "endpoint", selected: by === "endpoint" }, "Endpoint ID"),
    h("option", { value: "user", selected: by === "user" }, "User ID"));
  const input = h("input", { name: "id", value: id, required: true, "aria-label": "ID", placeholder: "ID" });
  const path = `/apps/${encodeURIComponent(appId)}/endpoints`;
  const form = h("form", { class: "lookup", onsubmit: (e) => { e.preventDefault(); location.hash = `#${path}?by=${kind.value}&id=${encodeURIComponent(input.value)}`; } },
    kind, input, h("button", { type: "submit" }, "Look up"));
  const content = [title, form];
  if (!id) return [...content, message("empty", "Enter an endpoint ID or a user ID.")];
  try {
    const found = by === "user" ? (await api.userEndpoints(appId, id, refresh)).Item : [await api.endpoint(appId, id, refresh)];
    return [...content, ...found.map(endpointCard)];
  } catch (error) {
    if (error.status === 404) return [...content, message("empty", error.message)];
    throw error;
  }
}

// The destination kind of a stream's ARN, as the streams worker's metrics label it.
const kindOf = (arn) => (arn.match(/^arn:aws:(kinesis|firehose|kafka):/) || [])[1] || "";

function healthOf(health, kind) {
  if (health.Unavailable) return message("empty", `Delivery health is not available: ${health.Unavailable}.`);
  const figures = (health.Destinations || {})[kind];
  if (!figures) return message("empty", `No ${kind} deliveries recorded by the streams worker yet.`);
  const reasons = (by) => Object.entries(by).filter(([, n]) => n > 0).map(([r, n]) => `${r}: ${number(n)}`).join(", ") || "none";
  return h(
    "section",
    { id: "stream-health" },
    h("h3", {}, `Delivery health (every ${kind} stream)`),
    table("What the streams worker reports", ["Figure", "Value"], [
      ["Lag (records behind)", number(figures.LagRecords ?? 0)],
      ["Parked destinations", number(figures.ParkedDestinations ?? 0)],
      ["Records delivered", number(figures.DeliveredRecords ?? 0)],
      ["Records sent again", number(figures.RetriedRecords ?? 0)],
      ["Failures", reasons(figures.Failures)],
      ["Dead-lettered", reasons(figures.DeadLettered)],
    ], { class: "numbers" }),
    h("p", { class: "note" }, `Read ${new Date(health.ReadAt).toISOString().slice(11, 19)} UTC; the worker's figures are per destination kind, not per app.`),
  );
}

async function streamPage(appId, query, refresh) {
  const title = await appTitle(appId, refresh);
  try {
    const s = await api.eventStream(appId, refresh);
    const health = await api.streamHealth(appId, refresh);
    return [title, h("h3", {}, "Event stream"), definition([
      ["Destination", s.DestinationStreamArn], ["Role", s.RoleArn], ["Last modified", s.LastModifiedDate], ["Last updated by", s.LastUpdatedBy],
    ]), healthOf(health, kindOf(s.DestinationStreamArn))];
  } catch (error) {
    if (error.status === 404) return [title, message("empty", "This app has no event stream.")];
    if (error.type === "AccessDeniedException") return [title, message("empty", `A ${me.Scope} key does not see the event stream (it names an IAM role): sign in with an admin key.`)];
    throw error;
  }
}

const FINAL = new Set(["COMPLETED", "FAILED"]);

async function segmentsPage(appId, query, refresh) {
  const title = await appTitle(appId, refresh);
  const found = await api.segments(appId, refresh);
  if (!found.length) return [title, message("empty", "This app has no segments.")];
  const cards = found.map((s) =>
    h(
      "article",
      { class: "segment" },
      h("h3", {}, s.Name || s.Id),
      definition([
        ["ID", s.Id], ["Type", s.SegmentType], ["Version", s.Version], ["Created", s.CreationDate], ["Last modified", s.LastModifiedDate],
        ["Imported from", s.ImportDefinition && s.ImportDefinition.S3Url],
        ["Imported endpoints", s.ImportDefinition && s.ImportDefinition.Size !== undefined ? number(s.ImportDefinition.Size) : null],
      ]),
      s.Dimensions ? h("details", { open: true }, h("summary", {}, "Dimensions"), h("pre", {}, JSON.stringify(s.Dimensions, null, 2))) : null,
      s.SegmentGroups ? h("details", {}, h("summary", {}, "Segment groups"), h("pre", {}, JSON.stringify(s.SegmentGroups, null, 2))) : null,
    ),
  );
  return [title, h("p", {}, `${found.length} segment${found.length === 1 ? "" : "s"}`), ...cards];
}

function jobsTable(caption, jobs, source) {
  if (!jobs.length) return h("section", {}, h("h3", {}, caption), message("empty", `No ${caption.toLowerCase()}.`));
  const rows = jobs.map((j) => {
    const total = j.TotalPieces || 0;
    const done = j.CompletedPieces || 0;
    const progress = h("progress", { max: total || 1, value: FINAL.has(j.JobStatus) ? total || 1 : done, "aria-label": `${done} of ${total} pieces` });
    return [
      h("code", {}, j.Id), j.JobStatus, h("span", {}, progress, ` ${done}/${total}`), number(j.TotalProcessed || 0),
      number(j.TotalFailures || 0), j.CreationDate || "", j.CompletionDate || "", source(j.Definition || {}),
    ];
  });
  return h("section", {}, h("h3", {}, caption),
    table(caption, ["ID", "Status", "Pieces", "Processed", "Failures", "Created", "Completed", "Definition"], rows, { class: "jobs" }));
}

async function jobsPage(appId, query, refresh) {
  const title = await appTitle(appId, refresh);
  const [imports, exports] = await Promise.all([api.importJobs(appId, refresh), api.exportJobs(appId, refresh)]);
  live = [...imports, ...exports].some((j) => !FINAL.has(j.JobStatus));
  const newest = (a, b) => (b.CreationDate || "").localeCompare(a.CreationDate || "");
  return [
    title,
    jobsTable("Import jobs", imports.sort(newest), (d) => [d.S3Url, d.SegmentName && ` → ${d.SegmentName}`].filter(Boolean).join("")),
    jobsTable("Export jobs", exports.sort(newest), (d) => [d.SegmentId && `${d.SegmentId} → `, d.S3UrlPrefix].filter(Boolean).join("")),
  ];
}

// Routing ---------------------------------------------------------------

const ROUTES = [
  [/^\/apps\/([^/]+)$/, overviewPage, "Overview"],
  [/^\/apps\/([^/]+)\/events$/, eventsPage, "Events"],
  [/^\/apps\/([^/]+)\/endpoints$/, endpointsPage, "Endpoints"],
  [/^\/apps\/([^/]+)\/stream$/, streamPage, "Event stream"],
  [/^\/apps\/([^/]+)\/segments$/, segmentsPage, "Segments"],
  [/^\/apps\/([^/]+)\/jobs$/, jobsPage, "Jobs"],
];
const SUFFIXES = {
  Overview: "", Events: "/events", Endpoints: "/endpoints", "Event stream": "/stream", Segments: "/segments", Jobs: "/jobs",
};

function where() {
  const [path, search] = (location.hash.slice(1) || "/").split("?");
  return { path, query: new URLSearchParams(search || "") };
}

function renderNav(appId, current) {
  const links = [h("a", { href: "#/", "aria-current": appId ? null : "page" }, "Apps")];
  if (appId) {
    for (const [label, suffix] of Object.entries(SUFFIXES)) {
      links.push(h("a", { href: `#/apps/${encodeURIComponent(appId)}${suffix}`, "aria-current": label === current ? "page" : null }, label));
    }
  }
  nav.replaceChildren(...links);
}

// Each render's number: a slow one finishing after a newer one began is dropped.
let renders = 0;

async function render(refresh = false) {
  const mine = ++renders;
  const { path, query } = where();
  live = false;
  let page = () => appsPage(refresh);
  let appId = null;
  let current = "Apps";
  for (const [pattern, handler, label] of ROUTES) {
    const match = path.match(pattern);
    if (match) {
      appId = decodeURIComponent(match[1]);
      current = label;
      page = () => handler(appId, query, refresh);
    }
  }
  renderNav(appId, current);
  if (!refresh) {
    delete main.dataset.page;
    main.replaceChildren(message("loading", "Loading…"));
  }
  try {
    const content = await page();
    if (mine !== renders) return;
    main.replaceChildren(...content);
    const every = (live ? LIVE_MS : REFRESH_MS) / 1000;
    stamp.textContent = `Computed ${new Date().toISOString().slice(11, 19)} UTC; refreshes every ${every} s`;
  } catch (error) {
    if (error.sessionEnded || mine !== renders) return;
    stamp.textContent = "";
    const text =
      error.type === "AccessDeniedException" ? `This key may not see this: ${error.message}`
      : error instanceof RangeError ? `${error.message}: choose a shorter one.`
      : `Could not load this page: ${error.message}`;
    main.replaceChildren(message("error", text));
  }
  // The page is whole (what the browser tests wait for).
  main.dataset.page = current;
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if (me) timer = setTimeout(() => render(true), live ? LIVE_MS : REFRESH_MS);
}

// Sign-in ---------------------------------------------------------------

function showSignIn(note) {
  clearTimeout(timer);
  me = null;
  document.body.dataset.state = "signed-out";
  who.replaceChildren();
  nav.replaceChildren();
  stamp.textContent = "";
  const id = h("input", { id: "key-id", name: "key-id", autocomplete: "username", required: true, spellcheck: "false" });
  const secret = h("input", { id: "secret", name: "secret", type: "password", autocomplete: "current-password", required: true });
  const status = h("div", { class: "status" }, note ? message("error", note) : null);
  const form = h(
    "form",
    {
      id: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        status.replaceChildren(message("loading", "Signing in…"));
        try {
          await api.signIn(id.value.trim(), secret.value);
          secret.value = "";
          await start();
        } catch (error) {
          status.replaceChildren(message("error", `Sign-in refused: ${error.message}`));
        }
      },
    },
    h("h2", {}, "Sign in"),
    h("p", {}, "With an access key of read or admin scope (ingest keys create). The secret signs the request here in the page and is never sent."),
    h("label", { for: "key-id" }, "Access key ID"), id,
    h("label", { for: "secret" }, "Secret access key"), secret,
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  main.replaceChildren(form);
}

async function start() {
  me = await api.whoAmI();
  document.body.dataset.state = "signed-in";
  const out = h("button", { type: "button", id: "sign-out", onclick: async () => { await api.signOut().catch(() => null); showSignIn(); } }, "Sign out");
  who.replaceChildren(h("span", {}, `${me.AccessKeyId} (${me.Scope})`), out);
  await render();
}

api.onSessionEnded(() => showSignIn("Your session has ended (inactivity, sign-out, or the key was revoked): sign in again."));
window.addEventListener("hashchange", () => me && render());
start().catch((error) => {
  if (!error.sessionEnded) showSignIn(`The console could not start: ${error.message}`);
});
