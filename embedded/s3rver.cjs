'use strict';
// The object store of the embedded broker (`ingest run`): s3rver, with
// conditional PUTs enforced and every file it writes replaced whole.
//
// Tansu keeps each partition's next offset in watermark.json and updates it
// with If-Match (If-None-Match: * when it has not read it yet, as after a
// restart), creating each record batch with If-None-Match: *. s3rver 3.7.1
// ignores both headers, so a restarted Tansu would start every partition
// again at offset 0 and write its new batches over the old ones: everything
// acknowledged before the restart and not yet consumed would be gone. Here a
// PUT whose condition does not hold is answered 412 PreconditionFailed, as S3
// answers it, checked and written under a lock per key.
// s3rver 3.7.1 truncates a file and then writes
// it, so a process killed between the two leaves an empty watermark.json or
// batch behind, which Tansu cannot read after a restart. Here each file is
// written beside its target and renamed over it: a reader sees the old file
// or the new one, never half of one. s3rver answers a PUT only after its
// files are written, so what Tansu acknowledged is on disk (in the page cache:
// it survives the process, not a power cut; nothing here calls fsync).
//
// Tansu's object-store engine never deletes a record batch (it has no
// retention), so the log would grow on disk forever, and every fetch, which
// lists a partition's batches, would get slower with it. Each
// RETAIN_INTERVAL_MS this deletes, for every partition of each topic named on
// the command line, the batches that lie wholly below the offset every one of
// its consumer groups has committed: what no group will read again. A
// partition with a group that has not committed keeps everything; the last
// batch of a partition is always kept. It runs here, in the server, with
// synchronous file calls, because s3rver lists a directory synchronously: a
// listing sees a batch whole or not at all.
//
//   node s3rver.cjs <directory> <host> <port> <bucket> [<topic>=<group>[,<group>...]]...
//
// Prints one line once it listens; killed by signal (no state to flush).

const crypto = require('crypto');
const path = require('path');
const fs = require('fs/promises');
const fsSync = require('fs');
const S3rver = require('s3rver');
const FilesystemStore = require('s3rver/lib/stores/filesystem');
const S3Object = require('s3rver/lib/models/object');
const S3Error = require('s3rver/lib/models/error');

// Written here, beside the bucket on the same file system, then renamed into
// place: never in a directory s3rver lists, since its listing reads a
// directory and then stats each entry, and a file renamed away in between
// fails the whole listing (500).
let partialDir;

async function replaceWhole(target, content) {
  const partial = path.join(partialDir, `${process.pid}.${crypto.randomBytes(8).toString('hex')}.tmp`);
  await fs.writeFile(partial, content);
  await fs.rename(partial, target);
}

function readAll(stream) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', chunk => chunks.push(chunk));
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

FilesystemStore.prototype.putObject = async function putObject(object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.mkdir(path.dirname(objectPath), { recursive: true });
  // Tansu's objects are one record batch or a small JSON document each.
  const content = Buffer.isBuffer(object.content) ? object.content : await readAll(object.content);
  const md5 = crypto.createHash('md5').update(content).digest('hex');
  await replaceWhole(objectPath, content);
  await this.putMetadata(object.bucket, object.key, object.metadata, md5);
  return { size: content.length, md5 };
};

// s3rver reads an object's metadata with three asynchronous file calls, and a
// listing does so for every object it lists. Tansu lists a partition's
// batches on every fetch and gives up listing when the fetch's wait has passed
// (50 ms for ingest's consumers): once a listing takes longer, as a backlog
// of a few hundred batches did on a busy machine, the consumer gets nothing
// and is stuck. The same, with synchronous calls on these small local files.
FilesystemStore.prototype.getMetadata = async function getMetadata(bucket, key) {
  const objectPath = this.getResourcePath(bucket, key, 'object');
  const stat = fsSync.statSync(objectPath); // throws ENOENT for a missing object, as the original
  let stored;
  try {
    stored = JSON.parse(fsSync.readFileSync(this.getResourcePath(bucket, key, 'metadata.json'), 'utf8'));
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  let md5;
  try {
    md5 = fsSync.readFileSync(`${objectPath}.md5`, 'utf8');
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
    md5 = crypto.createHash('md5').update(fsSync.readFileSync(objectPath)).digest('hex');
  }
  return {
    ...stored,
    etag: JSON.stringify(md5),
    'last-modified': stat.mtime.toUTCString(),
    'content-length': stat.size,
  };
};

FilesystemStore.prototype.putMetadata = async function putMetadata(bucket, key, metadata, md5) {
  // As the original, with both files replaced whole.
  const json = Object.fromEntries(
    Object.entries(metadata).filter(
      ([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-'),
    ),
  );
  if (md5) await replaceWhole(this.getResourcePath(bucket, key, 'object.md5'), md5);
  await replaceWhole(this.getResourcePath(bucket, key, 'metadata.json'), JSON.stringify(json, null, 2));
};

const locks = new Map(); // key path → the tail of its chain of conditional PUTs

// The ETag S3 would answer for the object at `objectPath` now (undefined when
// there is none), from its bytes: right even when a crash came between
// writing an object and writing its .md5.
async function currentEtag(objectPath) {
  try {
    return crypto.createHash('md5').update(await fs.readFile(objectPath)).digest('hex');
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

function conditionalPuts(store) {
  return async function conditional(ctx, next) {
    const ifMatch = ctx.get('if-match');
    const ifNoneMatch = ctx.get('if-none-match');
    if (ctx.method !== 'PUT' || (!ifMatch && !ifNoneMatch)) return next();
    const [bucket, ...parts] = decodeURIComponent(ctx.path).split('/').filter(Boolean);
    const objectPath = store.getResourcePath(bucket, parts.join('/'), 'object');
    const previous = locks.get(objectPath) || Promise.resolve();
    let release;
    const held = new Promise(resolve => (release = resolve));
    const mine = previous.then(() => held);
    locks.set(objectPath, mine);
    await previous;
    try {
      const etag = await currentEtag(objectPath);
      const unquoted = ifMatch.replace(/"/g, '');
      if ((ifNoneMatch === '*' && etag !== undefined) || (ifMatch && etag !== unquoted)) {
        throw new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', {
          Condition: ifMatch ? 'If-Match' : 'If-None-Match',
        });
      }
      await next();
    } finally {
      release();
      if (locks.get(objectPath) === mine) locks.delete(objectPath);
    }
  };
}

// Once a second: measured 3,957 accepted events/s against 3,351 with a pass
// every 10 s (each fetch lists fewer batches), and a pass costs a few
// directory reads.
const RETAIN_INTERVAL_MS = 1_000;
const OBJECT = '._S3rver_object';
const SIDE_FILES = [OBJECT, `${OBJECT}.md5`, '._S3rver_metadata.json'];

function listing(dir) {
  try {
    return fsSync.readdirSync(dir);
  } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
}

function committed(cluster, group, topic, partition) {
  const file = path.join(cluster, 'groups', 'consumers', group, 'offsets', topic, 'partitions', `${partition}.json${OBJECT}`);
  try {
    return JSON.parse(fsSync.readFileSync(file, 'utf8')).offset;
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
}

// One pass over every cluster, topic and partition: → batches deleted.
function retain(bucketDir, retained) {
  let deleted = 0;
  const clusters = path.join(bucketDir, 'clusters');
  for (const clusterName of listing(clusters)) {
    const cluster = path.join(clusters, clusterName);
    for (const [topic, groups] of retained) {
      const partitions = path.join(cluster, 'topics', topic, 'partitions');
      for (const partition of listing(partitions)) {
        const offsets = groups.map(group => committed(cluster, group, topic, partition));
        if (offsets.some(offset => typeof offset !== 'number')) continue;
        const below = Math.min(...offsets);
        const records = path.join(partitions, partition, 'records');
        const bases = listing(records)
          .filter(name => name.endsWith(`.batch${OBJECT}`))
          .map(name => name.slice(0, -`.batch${OBJECT}`.length))
          .sort();
        // Batch i ends where batch i + 1 begins: wholly below `below` when that is at or under it.
        for (let i = 0; i + 1 < bases.length && Number(bases[i + 1]) <= below; i++) {
          for (const suffix of SIDE_FILES) {
            try {
              fsSync.unlinkSync(path.join(records, `${bases[i]}.batch${suffix}`));
            } catch (err) {
              if (err.code !== 'ENOENT') throw err;
            }
          }
          deleted++;
        }
      }
    }
  }
  return deleted;
}

// At start: an object whose .md5 does not match its bytes gets its .md5
// rewritten. A kill between writing an object and writing its .md5 leaves
// the old ETag beside the new bytes; GET answers that ETag, Tansu's next
// conditional PUT carries it, the check (on the bytes) refuses it with 412,
// and Tansu retries for ever: produces stall after a restart. Retention
// keeps the bucket to a few files per partition, so the walk is short.
function repairEtags(dir) {
  let repaired = 0;
  for (const entry of fsSync.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      repaired += repairEtags(full);
    } else if (entry.name.endsWith(OBJECT)) {
      const md5 = crypto.createHash('md5').update(fsSync.readFileSync(full)).digest('hex');
      let stored;
      try {
        stored = fsSync.readFileSync(`${full}.md5`, 'utf8');
      } catch (err) {
        if (err.code !== 'ENOENT') throw err;
      }
      if (stored !== md5) {
        fsSync.writeFileSync(`${full}.md5`, md5); // before any request: no reader to race
        repaired++;
      }
    }
  }
  return repaired;
}

// SIGTERM (the broker has stopped): nothing is buffered, so exit at once.
process.on('SIGTERM', () => process.exit(0));

async function main() {
  const [directory, address, port, bucket, ...retainArgs] = process.argv.slice(2);
  const retained = retainArgs.map(arg => arg.split('=')).map(([topic, groups]) => [topic, (groups || '').split(',').filter(Boolean)]);
  if (!bucket || retained.some(([topic, groups]) => !topic || groups.length === 0)) {
    process.stderr.write('usage: node s3rver.cjs <directory> <host> <port> <bucket> [<topic>=<group>[,<group>...]]...\n');
    process.exit(2);
  }
  await fs.mkdir(directory, { recursive: true });
  partialDir = path.join(directory, '.partial');
  await fs.rm(partialDir, { recursive: true, force: true }); // what a killed server left half written
  await fs.mkdir(partialDir);
  const repaired = repairEtags(directory);
  if (repaired) process.stdout.write(`s3rver: ${repaired} stale ETag(s) rewritten from their objects' bytes\n`);
  const server = new S3rver({
    directory,
    address,
    port: Number(port),
    silent: true, // its request log would grow by a line per produce
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  // Just before the router: after s3rver's error handling and authentication.
  server.middleware.splice(server.middleware.length - 1, 0, conditionalPuts(server.store));
  const { address: host, port: bound } = await server.run();
  process.stdout.write(`s3rver listening on http://${host}:${bound}, directory ${directory}\n`);
  if (retained.length) {
    const bucketDir = path.join(directory, bucket);
    setInterval(() => {
      try {
        retain(bucketDir, retained);
      } catch (err) {
        // The next pass tries again; a failing one is worth a line in the log.
        process.stderr.write(`retention pass failed: ${err && err.stack ? err.stack : err}\n`);
      }
    }, RETAIN_INTERVAL_MS);
  }
}

main().catch(err => {
  process.stderr.write(`s3rver failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
