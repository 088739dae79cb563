// A real xAPI client library (@xapi/xapi, from npm) against the ceredis LRS over HTTPS:
// statements (with an attachment), voiding, paging, documents and the other resources.
// Runs the real binary (BIN_CEREDIS; not CEREDIS_*, which the binary reads as configuration).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import XAPI from "@xapi/xapi";
// (Its fetch transport reports a refused request as an Error carrying the response body.)
import { Agent, setGlobalDispatcher } from "undici";

const bin = process.env.BIN_CEREDIS;

function cli(dataDir, args) {
  return execFileSync(bin, ["--data-dir", dataDir, ...args], { encoding: "utf8" });
}

function serve(dataDir) {
  const child = spawn(bin, ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--redirect-listen", ""], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk;
      const m = out.match(/ceredis: listening on https:\/\/localhost:(\d+)/);
      if (m) resolve({ child, port: m[1] });
    });
    child.on("exit", (code) => reject(new Error(`ceredis exited with ${code}`)));
  });
}

test("@xapi/xapi stores and reads statements, attachments and documents", async (t) => {
  assert.ok(bin, "BIN_CEREDIS must name the ceredis binary");
  const dataDir = mkdtempSync(join(tmpdir(), "ceredis-xapi-"));
  cli(dataDir, ["init", "--listen", "127.0.0.1:0"]);
  cli(dataDir, ["tenant", "create", "ecole"]);
  const cred = cli(dataDir, ["credential", "add", "--tenant", "ecole", "--label", "quiz", "--scope", "all"]);
  const key = cred.match(/^key_id=(.*)$/m)[1];
  const secret = cred.match(/^secret=(.*)$/m)[1];
  // Trust the site's own CA, as a school PC does once it has installed /ca.crt.
  setGlobalDispatcher(new Agent({ connect: { ca: readFileSync(join(dataDir, "tls/ca.crt")) } }));
  const { child, port } = await serve(dataDir);
  t.after(() => {
    child.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  });

  const xapi = new XAPI({
    endpoint: `https://localhost:${port}/t/ecole/xapi/`,
    auth: XAPI.toBasicAuth(key, secret),
    version: "2.0.0",
    // The library's fetch transport: its axios transport in Node replaces the multipart
    // Content-Type of statements with attachments.
    adapter: "fetch",
  });
  const lea = { objectType: "Agent", name: "Léa", mbox: "mailto:lea@ecole.example" };
  const quiz = "https://ecole.example/activites/ecoute-1";

  const about = await xapi.getAbout();
  assert.ok(about.data.version.includes("2.0.0"));

  // A statement with a recorded answer as an attachment.
  const audio = Buffer.from("réponse orale de Léa");
  const sha2 = createHash("sha256").update(audio).digest("hex");
  const statement = {
    actor: lea,
    verb: XAPI.Verbs.ANSWERED,
    object: { objectType: "Activity", id: quiz, definition: { name: { "fr-FR": "Écoute 1" } } },
    result: { score: { scaled: 0.75 }, success: true, duration: "PT2M5S" },
    attachments: [{
      usageType: XAPI.AttachmentUsages.SUPPORTING_MEDIA,
      display: { "fr-FR": "Réponse orale" },
      contentType: "text/plain",
      length: audio.length,
      sha2,
    }],
  };
  const sent = await xapi.sendStatement({ statement, attachments: [audio] });
  assert.equal(sent.status, 200);
  const [id] = sent.data;
  const withParts = await xapi.getStatement({ statementId: id, attachments: true });
  assert.equal(withParts.data[0].id, id);
  assert.equal(withParts.data[0].result.score.scaled, 0.75);
  assert.equal(withParts.data[1], "réponse orale de Léa");

  // A batch, then paging through it with `more`.
  const registration = randomUUID();
  const batch = Array.from({ length: 5 }, (_, i) => ({
    actor: lea,
    verb: XAPI.Verbs.PROGRESSED,
    object: { id: `${quiz}/q${i}` },
    context: { registration },
  }));
  const ids = (await xapi.sendStatements({ statements: batch })).data;
  assert.equal(ids.length, 5);
  const seen = [];
  let page = (await xapi.getStatements({ registration, limit: 2 })).data;
  seen.push(...page.statements.map((s) => s.id));
  while (page.more) {
    page = (await xapi.getMoreStatements({ more: page.more })).data;
    seen.push(...page.statements.map((s) => s.id));
  }
  assert.deepEqual(seen, [...ids].reverse());

  // Voiding.
  await xapi.voidStatement({ actor: lea, statementId: ids[0] });
  await assert.rejects(xapi.getStatement({ statementId: ids[0] }), (e) => /"not_found"/.test(e.message));
  assert.equal((await xapi.getVoidedStatement({ voidedStatementId: ids[0] })).data.id, ids[0]);

  // Documents: state with ETags and merge, profiles, the Activities and Agents resources.
  await xapi.setState({ agent: lea, activityId: quiz, stateId: "progress", state: { page: 3 } });
  const state = await xapi.getState({ agent: lea, activityId: quiz, stateId: "progress" });
  assert.deepEqual(state.data, { page: 3 });
  await assert.rejects(
    xapi.setState({ agent: lea, activityId: quiz, stateId: "progress", state: { page: 9 }, etag: '"stale"', matchHeader: "If-Match" }),
    (e) => /"xapi_precondition"/.test(e.message),
  );
  await xapi.setState({ agent: lea, activityId: quiz, stateId: "progress", state: { page: 4 }, etag: state.headers.etag, matchHeader: "If-Match" });
  await xapi.createState({ agent: lea, activityId: quiz, stateId: "progress", state: { done: false } });
  assert.deepEqual((await xapi.getState({ agent: lea, activityId: quiz, stateId: "progress" })).data, { page: 4, done: false });
  assert.deepEqual((await xapi.getStates({ agent: lea, activityId: quiz })).data, ["progress"]);
  await xapi.setActivityProfile({ activityId: quiz, profileId: "bareme", profile: { max: 20 }, etag: "*", matchHeader: "If-None-Match" });
  assert.deepEqual((await xapi.getActivityProfile({ activityId: quiz, profileId: "bareme" })).data, { max: 20 });
  await xapi.setAgentProfile({ agent: lea, profileId: "prefs", profile: { langue: "fr" }, etag: "*", matchHeader: "If-None-Match" });
  assert.deepEqual((await xapi.getAgentProfiles({ agent: lea })).data, ["prefs"]);
  await xapi.deleteAgentProfile({ agent: lea, profileId: "prefs" });
  assert.deepEqual((await xapi.getAgentProfiles({ agent: lea })).data, []);
  const activity = (await xapi.getActivity({ activityId: quiz })).data;
  assert.deepEqual(activity.definition.name, { "fr-FR": "Écoute 1" });
  const person = (await xapi.getAgent({ agent: lea })).data;
  assert.deepEqual(person, { objectType: "Person", name: ["Léa"], mbox: ["mailto:lea@ecole.example"] });

  // A broken statement is refused with the property named, and nothing is stored.
  await assert.rejects(
    xapi.sendStatement({ statement: { actor: lea, verb: { id: "answered" }, object: { id: quiz } } }),
    (e) => /"xapi_invalid".*statement\.verb\.id/.test(e.message),
  );
});
