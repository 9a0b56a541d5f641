// A game client of tiermesh in Node with @grpc/grpc-js, as a game's tools or a web
// backend would write it: health, a dialogue streamed under a deadline, a stream the
// player walks away from (cancelled), and a two-turn conversation over Converse.
//
//   node client.mjs [host:port]      (default 127.0.0.1:50051; exits 1 on any failure)
//
// docs/contract.md's Node snippets are the parts between "[START" and "[END" markers:
// a test keeps them equal.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const address = process.argv[2] ?? "127.0.0.1:50051";
const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");

// [START node-load]
const definition = protoLoader.loadSync(
  ["tiermesh/v1/mesh.proto", "grpc/health/v1/health.proto"],
  { includeDirs: [protos], keepCase: true, enums: String, longs: Number, defaults: true },
);
const { tiermesh, grpc: health } = grpc.loadPackageDefinition(definition);
const mesh = new tiermesh.v1.Mesh(address, grpc.credentials.createInsecure());
// [END node-load]
const healthClient = new health.health.v1.Health(address, grpc.credentials.createInsecure());

function check() {
  return new Promise((resolve, reject) => {
    healthClient.Check({ service: "" }, { deadline: Date.now() + 2000 }, (error, reply) =>
      error ? reject(error) : resolve(reply.status),
    );
  });
}

// [START node-generate]
// A streamed answer with the player's patience as the deadline: the router answers in
// time (shaped to the deadline, or the NPC's canned line) instead of failing.
function generate(request, deadlineMs) {
  return new Promise((resolve, reject) => {
    const call = mesh.Generate(request, { deadline: Date.now() + deadlineMs });
    const answer = { text: "", tier: "", finish: "" };
    call.on("data", (chunk) => {
      answer.text += chunk.text;
      answer.tier = chunk.tier || answer.tier;
      answer.finish = chunk.finish_reason || answer.finish;
    });
    call.on("error", reject); // a grpc status: error.code, error.details
    call.on("end", () => resolve(answer));
  });
}
// [END node-generate]

// [START node-cancel]
// The player walked away: cancel, and the router aborts the tier's work.
function cancelAfterFirstToken(request) {
  return new Promise((resolve, reject) => {
    const call = mesh.Generate(request, { deadline: Date.now() + 10000 });
    call.once("data", () => call.cancel());
    call.on("error", (error) =>
      error.code === grpc.status.CANCELLED ? resolve("CANCELLED") : reject(error),
    );
    call.on("end", () => resolve("ended before the cancel"));
  });
}
// [END node-cancel]

// [START node-converse]
// One stream per conversation: each turn is answered by its tokens, then the session.
function converse(npcId, sessionId, lines) {
  return new Promise((resolve, reject) => {
    const stream = mesh.Converse({ deadline: Date.now() + 30000 });
    const replies = lines.map(() => "");
    let sessions = 0;
    stream.on("data", (event) => {
      if (event.delta) replies[event.turn] += event.delta.text;
      if (event.error) reject(new Error(`turn ${event.turn}: ${event.error.code} ${event.error.message}`));
      if (event.session && ++sessions === lines.length) {
        stream.end();
        resolve({ replies, turns: event.session.turns.length });
      }
    });
    stream.on("error", reject);
    for (const prompt of lines) {
      stream.write({ turn: { npc_id: npcId, session_id: sessionId, prompt, task: "TASK_DIALOGUE", max_tokens: 24 } });
    }
  });
}
// [END node-converse]

async function main() {
  const status = await check();
  console.log(`health: ${status}`);
  if (status !== "SERVING") throw new Error(`not serving: ${status}`);

  const dialogue = { npc_id: "guard-1", prompt: "Halt! Who goes there?", task: "TASK_DIALOGUE", max_tokens: 32 };
  const answer = await generate(dialogue, 2000);
  console.log(`dialogue (2 s): ${answer.tier} ${answer.finish} ${JSON.stringify(answer.text)}`);
  if (!answer.text) throw new Error("the dialogue came back empty");

  const intent = {
    npc_id: "guard-1", prompt: "The player draws a sword.", task: "TASK_INTENT",
    intents: ["GREET", "WARN", "ATTACK"], bypass_cache: true,
  };
  const label = await generate(intent, 500);
  console.log(`intent (500 ms): ${label.tier} ${label.text}`);
  if (!intent.intents.includes(label.text)) throw new Error(`not one of the labels: ${label.text}`);

  console.log(`cancelled: ${await cancelAfterFirstToken(dialogue)}`);

  const session = `node-${process.pid}-${Date.now()}`;
  const talk = await converse("innkeeper-1", session, ["Got a room for the night?", "How much for two nights?"]);
  console.log(`converse: ${talk.turns} turns in the session; ${talk.replies.map((r) => JSON.stringify(r)).join(" | ")}`);
  if (talk.turns < 2) throw new Error(`the session holds ${talk.turns} turns`);

  try {
    await generate({ npc_id: "nobody", prompt: "Hello?", task: "TASK_DIALOGUE" }, 1000);
    throw new Error("an unknown NPC was answered");
  } catch (error) {
    if (error.code !== grpc.status.NOT_FOUND) throw error;
    console.log(`unknown npc: NOT_FOUND (${error.details})`);
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`failed: ${error.code !== undefined ? `${error.code} ${error.details}` : error.message}`);
    process.exit(1);
  },
);
