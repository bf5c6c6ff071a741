// Amplify JS v6 (aws-amplify) against ingest, as a rebuilt app would run it:
// its Cognito Identity endpoint configured to point at us
// (Auth.Cognito.identityPoolEndpoint), and the Pinpoint host it hard-codes
// (@aws-amplify/core awsClients/pinpoint/base: https://pinpoint.${region}.amazonaws.com)
// redirected to us by wrapping globalThis.fetch, the one thing Amplify's
// transfer handler calls (core clients/handlers/fetch). Nothing else changes:
// the requests stay signed for the Pinpoint host, as a real app's would.
//
// Driven by one JSON object, from argv[2] or else stdin:
//   {"endpoint": "http://127.0.0.1:PORT", "identityPoolId": "us-east-1:UUID",
//    "appId": "...", "region": "us-east-1", "events": ["a", "b"],
//    "userId": "...", "deadlineMs": 30000,
//    "identityPoolEndpoint": "http://127.0.0.1:PORT"}   (optional; default: endpoint)
//
// Prints ONE JSON object on stdout: every request Amplify made (method,
// host it was built for, path, X-Amz-Target, status, what it carried), the
// Cognito identity ID and credentials it was given, and the events it sent.
// A request for any host other than ours or the Pinpoint one is refused
// before it leaves the process and makes the script exit 3: no request may
// leave 127.0.0.1.
import { Amplify } from "aws-amplify";
import { flushEvents, identifyUser, record } from "aws-amplify/analytics/pinpoint";
import { fetchAuthSession } from "aws-amplify/auth";
import { cognitoUserPoolsTokenProvider } from "aws-amplify/auth/cognito";
import { sharedInMemoryStorage } from "aws-amplify/utils";

const POLL_MS = 50; // between checks of a condition, not instead of one
const EXIT_FOREIGN_HOST = 3;
const EXIT_INCOMPLETE = 4;

async function readInput() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const cfg = await readInput();
const region = cfg.region ?? "us-east-1";
const ours = new URL(cfg.endpoint);
if (ours.pathname !== "/" || !["127.0.0.1", "localhost", "[::1]"].includes(ours.hostname)) {
  throw new Error(`endpoint must be a local origin with no path: ${cfg.endpoint}`);
}
const cognito = new URL(cfg.identityPoolEndpoint ?? cfg.endpoint);
if (!["127.0.0.1", "localhost", "[::1]"].includes(cognito.hostname)) {
  throw new Error(`identityPoolEndpoint must be local: ${cognito.href}`);
}
const pinpointOrigin = `https://pinpoint.${region}.amazonaws.com`;
const deadline = Date.now() + (cfg.deadlineMs ?? 30000);

const requests = [];
const foreign = [];
const realFetch = globalThis.fetch;

function summarize(target, body) {
  let parsed;
  try {
    parsed = body ? JSON.parse(body) : undefined;
  } catch {
    return { bodyBytes: body.length };
  }
  if (target) return { body: parsed }; // Cognito: small, and the test reads it
  const batch = parsed?.BatchItem;
  if (batch) {
    return {
      endpointIds: Object.keys(batch),
      events: Object.values(batch).flatMap((item) => Object.values(item.Events ?? {}).map((e) => e.EventType)),
    };
  }
  return { userId: parsed?.User?.UserId ?? null, channelType: parsed?.ChannelType ?? null };
}

globalThis.fetch = async (input, init = {}) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const method = (init.method ?? (input instanceof Request ? input.method : "GET")).toUpperCase();
  let sent;
  if (url.origin === pinpointOrigin) {
    sent = new URL(`${ours.origin}${url.pathname}${url.search}`);
  } else if (url.origin === ours.origin || url.origin === cognito.origin) {
    sent = url;
  } else {
    foreign.push({ method, url: url.href });
    process.stderr.write(`amplify.mjs: REFUSED a request to a foreign host: ${method} ${url.href}\n`);
    throw new Error(`refused: ${url.href} is not ${ours.origin}, ${cognito.origin} or ${pinpointOrigin}`);
  }
  const headers = new Headers(init.headers ?? {});
  const target = headers.get("x-amz-target");
  const authorization = headers.get("authorization");
  const entry = {
    method,
    builtFor: url.host,
    path: url.pathname,
    target,
    contentType: headers.get("content-type"),
    signed: authorization !== null,
    credentialScope: authorization?.match(/Credential=[^/]+\/([^,]+)/)?.[1] ?? null,
    signedHeaders: authorization?.match(/SignedHeaders=([^,]+)/)?.[1] ?? null,
    // The host Amplify signed for; node's fetch drops a caller's Host header and
    // sends the origin it connects to (127.0.0.1:PORT) instead.
    signedHost: headers.get("host"),
    sessionToken: headers.has("x-amz-security-token"),
    ...summarize(target, typeof init.body === "string" ? init.body : undefined),
    status: null,
    errorType: null,
    response: null,
  };
  requests.push(entry);
  const response = await realFetch(sent, init);
  entry.status = response.status;
  entry.errorType = response.headers.get("x-amzn-errortype");
  if (target) {
    // Cognito answers are small; the test reads the error or the identity.
    entry.response = await response
      .clone()
      .json()
      .catch(() => null);
  } else if (entry.path.endsWith("/events")) {
    entry.response = await response
      .clone()
      .json()
      .catch(() => null);
  }
  return response;
};

async function until(what, done) {
  while (!done()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return true;
}

// Under node there is no localStorage: Amplify falls back to memory on its
// own (core storage/utils), and the documented way to say so for tokens is
// setKeyValueStorage. No user pool is configured, so only guest credentials.
cognitoUserPoolsTokenProvider.setKeyValueStorage(sharedInMemoryStorage);
Amplify.configure({
  Auth: {
    Cognito: {
      identityPoolId: cfg.identityPoolId,
      identityPoolEndpoint: cognito.href,
      allowGuestAccess: true,
    },
  },
  Analytics: { Pinpoint: { appId: cfg.appId, region } },
});

const waited = {};
let session = { identityId: null, credentials: null };
let sessionError = null;
try {
  session = await fetchAuthSession();
} catch (err) {
  sessionError = { name: err.name, message: err.message };
}

const events = cfg.events ?? ["js.amplify.first", "js.amplify.second", "js.amplify.third"];
const updateEndpoints = () => requests.filter((r) => r.method === "PUT" && r.path.includes("/endpoints/"));
// The first record() resolves the endpoint: an UpdateEndpoint, then the event
// is buffered. Waiting for that answer keeps the later calls on the cached
// endpoint ID instead of racing to create it.
record({ name: events[0], attributes: { n: "0" } });
waited.firstUpdateEndpoint = await until("UpdateEndpoint of record()", () =>
  updateEndpoints().some((r) => r.status !== null),
);
let identifyError = null;
try {
  await identifyUser({
    userId: cfg.userId ?? "amplify-user",
    userProfile: { email: "amplify@example.com", customProperties: { plan: ["free"] } },
  });
} catch (err) {
  identifyError = { name: err.name, message: err.message };
}
for (const [i, name] of events.slice(1).entries()) record({ name, attributes: { n: String(i + 1) } });
// record() hands an event to the buffer after credentials resolve
// (asynchronously); flushEvents() sends what is buffered then, and the
// buffer's own interval sends the rest. Wait until every event went out.
const putEvents = () => requests.filter((r) => r.method === "POST" && r.path.endsWith("/events"));
const sentEvents = () => putEvents().flatMap((r) => (r.status === null ? [] : r.events ?? []));
const flushStarted = Date.now();
let flushes = 0;
waited.allEventsSent = await until("PutEvents of every event", () => {
  if (Date.now() - flushStarted >= flushes * 1000) {
    flushes += 1; // flush about once a second until all went out
    flushEvents();
  }
  return events.every((name) => sentEvents().includes(name));
});

const accepted = [];
for (const r of putEvents()) {
  for (const item of Object.values(r.response?.Results ?? {})) {
    for (const res of Object.values(item.EventsItemResponse ?? {})) accepted.push(res.StatusCode);
  }
}
const result = {
  identityId: session.identityId ?? null,
  credentials: session.credentials
    ? {
        accessKeyId: session.credentials.accessKeyId,
        secretAccessKey: session.credentials.secretAccessKey,
        sessionToken: session.credentials.sessionToken ?? null,
        expiration: session.credentials.expiration?.toISOString?.() ?? null,
      }
    : null,
  sessionError,
  identifyError,
  waited,
  requests,
  foreign,
  eventsSent: sentEvents(),
  eventStatuses: accepted,
};
process.stdout.write(`${JSON.stringify(result)}\n`);
// The event buffer's interval timer would keep node running.
process.exit(foreign.length ? EXIT_FOREIGN_HOST : Object.values(waited).every(Boolean) ? 0 : EXIT_INCOMPLETE);
