// A Node.js agent on memory_tiers: it remembers states by XADD, waits until the daemon stored
// them, recalls by state over the HTTP API, and runs a raw KNN in Redis with a stored vector.
//
//   MT_REDIS_URL=redis://localhost:6379/0 MT_API_URL=http://127.0.0.1:8080 MT_API_KEY=... \
//     node agent.mjs [AGENT_ID]
//
// It prints one JSON object: the entry ids, the recalled hits and the raw KNN hits.
import { createClient, RESP_TYPES } from "redis";

const redisUrl = need("MT_REDIS_URL");
const apiUrl = need("MT_API_URL").replace(/\/$/, "");
const apiKey = need("MT_API_KEY");
const prefix = process.env.MT_PREFIX || "mt";
const agentId = process.argv[2] || "node-bot-1";

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

// RediSearch TAG values: escape punctuation and spaces with a backslash, or `node-bot-1`
// is a syntax error (and `a|b` a union). Same set as redisvl's TokenEscaper for tags.
export function escapeTag(value) {
  return value.replace(/[,.<>{}[\]\\"':;!@#$%^&*()\-+=~|/ ?]/g, "\\$&");
}

async function api(method, path, body) {
  const reply = await fetch(apiUrl + path, {
    method,
    headers: { Authorization: `Bearer ${apiKey}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30_000),
  });
  const payload = await reply.json();
  if (!reply.ok) throw new Error(`${method} ${path}: ${reply.status} ${JSON.stringify(payload)}`);
  return payload;
}

// 1. Remember: every field is a string on the wire; state is JSON text.
async function remember(redis, states) {
  const ids = [];
  for (const [step, state] of states.entries()) {
    ids.push(await redis.xAdd(`${prefix}:states`, "*", {
      agent_id: agentId, step: String(step), state: JSON.stringify(state),
    }));
  }
  return ids;
}

// 2. Was it stored or dead-lettered? The API says: stored (tier), dead_letter (error),
// pending (not yet), unknown.
async function waitStored(ids, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await Promise.all(ids.map((id) => api("GET", `/v1/entries/${id}`)));
    const dead = found.filter((f) => f.state === "dead_letter");
    if (dead.length) throw new Error(`dead-lettered: ${JSON.stringify(dead)}`);
    if (found.every((f) => f.state === "stored")) return found;
    if (Date.now() > deadline) throw new Error(`not stored in time: ${JSON.stringify(found)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// 4. Raw KNN: a stored vector read as bytes (Buffer, not a UTF-8 string, which corrupts it),
// sent back as a PARAMS blob; DIALECT 2 for $vec and the KNN clause.
async function rawKnn(redis, key, k) {
  const binary = redis.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  const vec = await binary.hGet(key, "vec"); // 384 float32 little-endian: 1536 bytes
  const query = `(@agent_id:{${escapeTag(agentId)}})=>[KNN ${k} @vec $vec AS dist]`;
  const reply = await redis.sendCommand([
    "FT.SEARCH", `${prefix}:idx:stm`, query, "SORTBY", "dist", "RETURN", "2", "dist", "step",
    "DIALECT", "2", "PARAMS", "2", "vec", vec,
  ]);
  // RESP2: [total, key, [field, value, ...], key, [...], ...]
  const hits = [];
  for (let i = 1; i < reply.length; i += 2) {
    const fields = Object.fromEntries(pairs(reply[i + 1]));
    hits.push({ key: String(reply[i]), dist: Number(fields.dist), step: Number(fields.step) });
  }
  return { bytes: vec.length, floats: Array.from(floats(vec).slice(0, 3)), hits };
}

function* pairs(list) {
  for (let i = 0; i < list.length; i += 2) yield [String(list[i]), String(list[i + 1])];
}

function floats(buffer) {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  return Float32Array.from({ length: buffer.length / 4 }, (_, i) => view.getFloat32(i * 4, true));
}

async function main() {
  const redis = createClient({ url: redisUrl, RESP: 2 });
  redis.on("error", (error) => console.error("redis:", error.message));
  await redis.connect();
  try {
    const states = [0, 1, 2, 3, 4].map((i) => ({
      health: 90 - 15 * i, energy: 40 + 10 * i, agent_type: "explorer",
      current_action: i % 2 ? "gather" : "move", x_position: 10 * i, y_position: -5 * i,
    }));
    const entryIds = await remember(redis, states);
    const statuses = await waitStored(entryIds);
    // 3. Recall by state: the API encodes the state with the model and re-sorts.
    const recall = await api("POST", "/v1/recall", {
      agent_id: agentId, state: { health: 62, energy: 58, agent_type: "explorer" }, k: 3,
    });
    const knn = await rawKnn(redis, statuses[0].key, 3);
    console.log(JSON.stringify({
      agent_id: agentId,
      entry_ids: entryIds,
      tiers: statuses.map((s) => s.tier),
      recall: recall.merged.map((h) => ({ key: h.key, step: h.step, distance: h.feature_distance })),
      knn,
    }));
  } finally {
    await redis.close();
  }
}

await main();
