// aws-sdk-js-v3's Pinpoint client (@aws-sdk/client-pinpoint) against ingest.
//
// Driven by one JSON object, from argv[2] or else stdin:
//   {"endpoint": "http://127.0.0.1:PORT", "region": "us-east-1",
//    "accessKeyId": "...", "secretAccessKey": "...", "sessionToken": null,
//    "mode": "roundtrip" | "calls", "deadlineMs": 30000, ...}
//
// mode "roundtrip" (needs "appId", "endpointIds"): UpdateEndpoint for each ID,
// GetEndpoint for each until it is readable (reads are eventually consistent)
// or the deadline passes, then one PutEvents with an event for each ID.
// mode "calls" (needs "calls": [{"command": "GetApps", "input": {...}}]): each
// call in turn, its outcome recorded whether it succeeds or fails: how 403s
// and 404s are checked.
//
// Prints ONE JSON object on stdout. An SDK error is recorded as
// {"ok": false, "name": err.name, "status": err.$metadata.httpStatusCode,
// "message": err.message}; anything else going wrong exits non-zero.
import * as pinpoint from "@aws-sdk/client-pinpoint";

const NOT_FOUND_POLL_MS = 100; // between GetEndpoint polls, not instead of one

async function readInput() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function outcome(err) {
  if (!err || typeof err !== "object" || !("$metadata" in err)) throw err;
  return {
    ok: false,
    name: err.name,
    status: err.$metadata?.httpStatusCode ?? null,
    requestId: err.$metadata?.requestId ?? null,
    message: err.message,
  };
}

async function send(client, command) {
  try {
    const output = await client.send(command);
    const { $metadata, ...rest } = output;
    return { ok: true, status: $metadata.httpStatusCode, requestId: $metadata.requestId ?? null, output: rest };
  } catch (err) {
    return outcome(err);
  }
}

function makeClient(cfg) {
  const credentials = {
    accessKeyId: cfg.accessKeyId,
    secretAccessKey: cfg.secretAccessKey,
    ...(cfg.sessionToken ? { sessionToken: cfg.sessionToken } : {}),
  };
  return new pinpoint.PinpointClient({
    endpoint: cfg.endpoint,
    region: cfg.region,
    credentials,
    // One attempt: a test sees the server's first answer, not a retry's.
    maxAttempts: cfg.maxAttempts ?? 1,
    // A client whose clock is off: the SDK corrects it from the answer's Date.
    systemClockOffset: cfg.systemClockOffsetMs ?? 0,
    requestHandler: { requestTimeout: cfg.requestTimeoutMs ?? 10000 },
  });
}

async function roundtrip(client, cfg) {
  const deadline = Date.now() + (cfg.deadlineMs ?? 30000);
  const app = cfg.appId;
  const updates = [];
  for (const id of cfg.endpointIds) {
    const result = await send(
      client,
      new pinpoint.UpdateEndpointCommand({
        ApplicationId: app,
        EndpointId: id,
        EndpointRequest: {
          ChannelType: "CUSTOM",
          Address: `address of ${id}`,
          Attributes: { source: ["aws-sdk-js-v3"] },
          User: { UserId: `user of ${id}` },
        },
      }),
    );
    updates.push({ id, ...result });
  }
  const gets = [];
  for (const id of cfg.endpointIds) {
    let result;
    for (;;) {
      result = await send(client, new pinpoint.GetEndpointCommand({ ApplicationId: app, EndpointId: id }));
      if (result.ok || result.name !== "NotFoundException" || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, NOT_FOUND_POLL_MS));
    }
    const found = result.ok ? result.output.EndpointResponse : undefined;
    delete result.output;
    gets.push({
      id,
      ...result,
      returnedId: found?.Id ?? null,
      address: found?.Address ?? null,
      userId: found?.User?.UserId ?? null,
    });
  }
  const batch = {};
  for (const [i, id] of cfg.endpointIds.entries()) {
    batch[id] = {
      Endpoint: {},
      Events: {
        [`event-${i}`]: { EventType: "js.sdk", Timestamp: new Date().toISOString(), Attributes: { id } },
      },
    };
  }
  const put = await send(
    client,
    new pinpoint.PutEventsCommand({ ApplicationId: app, EventsRequest: { BatchItem: batch } }),
  );
  const results = {};
  for (const [id, item] of Object.entries(put.ok ? put.output.EventsResponse.Results : {})) {
    results[id] = {
      endpoint: item.EndpointItemResponse?.StatusCode ?? null,
      events: Object.fromEntries(
        Object.entries(item.EventsItemResponse ?? {}).map(([eventId, r]) => [eventId, r.StatusCode]),
      ),
    };
  }
  delete put.output;
  return { updates, gets, putEvents: { ...put, results } };
}

async function calls(client, cfg) {
  const results = [];
  for (const call of cfg.calls) {
    const Command = pinpoint[`${call.command}Command`];
    if (!Command) throw new Error(`no such command in @aws-sdk/client-pinpoint: ${call.command}`);
    results.push({ command: call.command, ...(await send(client, new Command(call.input ?? {}))) });
  }
  return { calls: results };
}

const cfg = await readInput();
const client = makeClient(cfg);
const modes = { roundtrip, calls };
if (!modes[cfg.mode]) throw new Error(`unknown mode ${JSON.stringify(cfg.mode)}`);
const result = await modes[cfg.mode](client, cfg);
client.destroy();
process.stdout.write(`${JSON.stringify(result)}\n`);
