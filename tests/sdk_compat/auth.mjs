// Keys through the official Node SDK. Usage: node auth.mjs BASE_URL GOOD_KEY REVOKED_KEY
// Prints one line per check and "N passed, N failed"; exits non-zero on failure.
import OpenAI from "openai";

const [baseURL, goodKey, revokedKey] = process.argv.slice(2);
const client = (apiKey, extra = {}) => new OpenAI({ apiKey, baseURL, maxRetries: 0, ...extra });

async function refused(makeClient, what) {
  try {
    await makeClient().beta.assistants.list();
  } catch (err) {
    if (!(err instanceof OpenAI.AuthenticationError)) throw new Error(`${what}: ${err}`);
    if (err.status !== 401 || err.code !== "invalid_api_key") {
      throw new Error(`${what}: status ${err.status} code ${err.code}`);
    }
    if (JSON.stringify(err.error).includes(goodKey)) throw new Error(`${what}: key echoed`);
    return;
  }
  throw new Error(`${what}: accepted`);
}

const checks = {
  missing: () => refused(() => client("unused", { defaultHeaders: { Authorization: null } }), "missing"),
  wrong: () => refused(() => client("sk-og-not-a-key-at-all-0000000000000000000000"), "wrong"),
  revoked: () => refused(() => client(revokedKey), "revoked"),
  async good() {
    const assistants = await client(goodKey).beta.assistants.list();
    if (!Array.isArray(assistants.data)) throw new Error("good key: no list");
  },
};

let passed = 0;
let failed = 0;
for (const [name, check] of Object.entries(checks)) {
  try {
    await check();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err.message}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
