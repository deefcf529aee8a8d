// code_interpreter through the official Node SDK. Usage: node code_interpreter.mjs BASE_URL MODEL
// The test scripts the model: run 1 computes x = 6 * 7 and prints it; run 2 prints x + 1 on the
// same thread (the kernel keeps state). Prints "N passed, N failed"; exits non-zero on failure.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ apiKey: "node-compat", baseURL, maxRetries: 0 });

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function codeCall(threadId, assistantId) {
  const run = await client.beta.threads.runs.createAndPoll(
    threadId,
    { assistant_id: assistantId },
    { pollIntervalMs: 50 },
  );
  check(run.status === "completed", `run status ${run.status} ${JSON.stringify(run.last_error)}`);
  const steps = await client.beta.threads.runs.steps.list(run.id, { thread_id: threadId, order: "asc" });
  const call = steps.data[0].step_details.tool_calls[0];
  check(call.type === "code_interpreter", `tool call type ${call.type}`);
  const logs = call.code_interpreter.outputs.filter((o) => o.type === "logs").map((o) => o.logs).join("");
  return { call, logs };
}

let passed = 0;
let failed = 0;
try {
  const assistant = await client.beta.assistants.create({ model, tools: [{ type: "code_interpreter" }] });
  const thread = await client.beta.threads.create({ messages: [{ role: "user", content: "Run it." }] });
  const first = await codeCall(thread.id, assistant.id);
  check(first.call.code_interpreter.input === "x = 6 * 7\nprint(x)", "code input");
  check(first.logs === "42\n", `logs ${JSON.stringify(first.logs)}`);
  const second = await codeCall(thread.id, assistant.id);
  check(second.logs === "43\n", `state kept: ${JSON.stringify(second.logs)}`);
  passed += 1;
  console.log("ok   computation and state");
} catch (err) {
  failed += 1;
  console.log(`FAIL computation and state: ${err.message}`);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
