// The same assistant/thread/message flows, plus a streamed and a polled run, driven by the
// official Node SDK (`openai` on npm). Usage: node flows.mjs BASE_URL MODEL
// Prints one line per flow and "N passed, N failed"; exits non-zero on failure.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
// OPENGROVE_TEST_KEY: a real key, for a server with keys.
const client = new OpenAI({ apiKey: process.env.OPENGROVE_TEST_KEY ?? "node-compat", baseURL, maxRetries: 0 });

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const flows = {
  async assistants() {
    const created = await client.beta.assistants.create({ model, name: "node", metadata: { sdk: "node" } });
    check(created.id.startsWith("asst_"), "assistant id");
    const updated = await client.beta.assistants.update(created.id, { name: "node-2" });
    check(updated.name === "node-2", "update");
    const ids = [];
    for await (const a of client.beta.assistants.list({ limit: 2 })) ids.push(a.id);
    check(ids.includes(created.id), "auto-paginated list");
    check((await client.beta.assistants.delete(created.id)).deleted, "delete");
    try {
      await client.beta.assistants.retrieve(created.id);
      check(false, "deleted assistant retrievable");
    } catch (err) {
      check(err instanceof OpenAI.NotFoundError, `404 class: ${err}`);
    }
  },
  async threadsAndMessages() {
    const thread = await client.beta.threads.create({ messages: [{ role: "user", content: "first" }] });
    const message = await client.beta.threads.messages.create(thread.id, { role: "user", content: "second" });
    const got = await client.beta.threads.messages.retrieve(message.id, { thread_id: thread.id });
    check(got.content[0].text.value === "second", "message retrieve");
    const page = await client.beta.threads.messages.list(thread.id, { order: "asc" });
    check(page.data.map((m) => m.content[0].text.value).join() === "first,second", "message order");
    check((await client.beta.threads.delete(thread.id)).deleted, "thread delete");
  },
  async streamedRun() {
    const assistant = await client.beta.assistants.create({ model });
    const thread = await client.beta.threads.create({ messages: [{ role: "user", content: "node stream" }] });
    let text = "";
    const stream = client.beta.threads.runs
      .stream(thread.id, { assistant_id: assistant.id })
      .on("textDelta", (delta) => { text += delta.value; });
    const run = await stream.finalRun();
    check(run.status === "completed", `run status ${run.status}`);
    check(text === "Echo: node stream", `streamed text ${JSON.stringify(text)}`);
  },
  async polledRun() {
    const assistant = await client.beta.assistants.create({ model });
    const run = await client.beta.threads.createAndRunPoll({
      assistant_id: assistant.id,
      thread: { messages: [{ role: "user", content: "node poll" }] },
    });
    check(run.status === "completed", `run status ${run.status}`);
    const messages = await client.beta.threads.messages.list(run.thread_id, { run_id: run.id });
    check(messages.data[0].content[0].text.value === "Echo: node poll", "polled reply");
  },
};

let passed = 0;
let failed = 0;
for (const [name, flow] of Object.entries(flows)) {
  try {
    await flow();
    passed += 1;
    console.log(`ok   ${name} (node openai)`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name} (node openai): ${err.stack ?? err}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
