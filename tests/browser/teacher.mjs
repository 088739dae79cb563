// A teacher signs in to the demo school for the first time with the one-time password that
// `ceredis demo` printed, chooses a password, sees the class and its pupils and browses
// their learning records; a pupil reads her own activity history. Then, on a fresh demo, a
// teacher observes the class on a descriptor and decides a pupil's level, and the pupil sees
// her level and descriptors with no number on the page. Last, the demo's admin finds the
// example apps the demo installed, removes the quiz and installs it again from its files
// (upload, review of what it asks for, grant); a pupil opens it from her home page and
// answers, and her teacher sees the new evidence.
// Runs the real binary (BIN_CEREDIS; not CEREDIS_*, which the binary reads as configuration) and Debian's Chromium (CHROMIUM, default /usr/bin/chromium).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const bin = process.env.BIN_CEREDIS;
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";
const shots = process.env.SCREENSHOT_DIR;

function launchBrowser() {
  return chromium.launch({
    executablePath: browserPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

// A fresh French-speaking page that accepts the appliance's own CA (not in Chromium's
// store) and records every console error into `errors`.
async function newPage(browser, errors) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, locale: "fr-FR" });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  return page;
}

function startDemo(dataDir) {
  const child = spawn(bin, ["demo", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--redirect-listen", ""], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  return new Promise((resolve, reject) => {
    const found = { child };
    const timer = setTimeout(() => reject(new Error("ceredis demo did not start")), 60000);
    lines.on("line", (line) => {
      const url = line.match(/^ceredis: listening on https:\/\/localhost:(\d+)/);
      if (url) found.base = `https://127.0.0.1:${url[1]}`;
      const teacher = line.match(/^\s+teacher\s+(\S+)\s+(\S+)$/);
      if (teacher) found.teacher = { username: teacher[1], otp: teacher[2] };
      const pupil = line.match(/^\s+student\s+(\S+)\s+(\S+)$/);
      if (pupil) (found.pupils ||= []).push({ username: pupil[1], otp: pupil[2] });
      const setup = line.match(/^Demo school admin setup link \(once\): \S+?(\/t\/demo\/setup\/\S+)$/);
      if (setup) found.adminSetup = setup[1];
      const app = line.match(/^Example app `([a-z-]+)` (\S+) installed/);
      if (app) (found.apps ||= []).push(app[1]);
      if (line.startsWith("Sign in at")) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`ceredis demo exited with ${code}`));
    });
  });
}

test("a teacher signs in with a one-time password and sees the class and its pupils", async () => {
  assert.ok(bin, "BIN_CEREDIS must name the ceredis binary");
  const dataDir = mkdtempSync(join(tmpdir(), "ceredis-browser-"));
  const demo = await startDemo(dataDir);
  const browser = await launchBrowser();
  try {
    const consoleErrors = [];
    const page = await newPage(browser, consoleErrors);

    await page.goto(`${demo.base}/t/demo/login`);
    assert.equal(await page.locator("h1").textContent(), "Connexion · École de démonstration");
    await page.getByLabel("Identifiant").fill(demo.teacher.username);
    await page.getByLabel("Mot de passe").fill(demo.teacher.otp);
    await page.getByRole("button", { name: "Se connecter" }).click();

    // One-time password: the teacher must choose their own first.
    await page.waitForURL("**/t/demo/password");
    await page.getByLabel("Nouveau mot de passe").fill("le chat de la classe dort");
    await page.getByLabel("Confirmez le mot de passe").fill("le chat de la classe dort");
    await page.getByRole("button", { name: "Enregistrer" }).click();

    await page.waitForURL("**/t/demo/");
    assert.equal(await page.locator("h1").textContent(), "Mes classes");
    const classLink = page.getByRole("link", { name: "CM2 A — Anglais" });
    assert.equal(await classLink.count(), 1, "the teacher's class is listed");
    const pupils = await page.locator("ol.pupils li").allTextContents();
    assert.equal(pupils.length, demo.pupils.length, "every pupil of the class is listed");
    for (const name of ["Benali Amel", "Bernard Lucas", "Dubois Inès", "Petit Noah", "Robert Léa", "Moreau Yanis"]) {
      assert.ok(pupils.includes(name), `${name} is in ${pupils}`);
    }
    if (shots) await page.screenshot({ path: join(shots, "teacher-home.png"), fullPage: true });

    // The class page, reached with the keyboard.
    await classLink.focus();
    await page.keyboard.press("Enter");
    await page.waitForURL(/\/t\/demo\/classes\/\d+$/);
    assert.equal(await page.locator("h1").textContent(), "CM2 A — Anglais");
    assert.match(await page.locator("main").textContent(), /Claire Martin/);

    // The learning records of the class: every pupil's sample activity, then one pupil's.
    await page.goto(`${demo.base}/t/demo/`);
    await page.getByRole("link", { name: "Traces d'apprentissage (xAPI)" }).click();
    await page.waitForURL("**/t/demo/statements");
    assert.equal(await page.locator("h1").textContent(), "Traces d'apprentissage");
    assert.equal(await page.locator("table.statements tbody tr").count(), 4 * demo.pupils.length);
    await page.getByLabel("Élève").selectOption({ label: "Robert Léa" });
    await page.getByRole("button", { name: "Filtrer" }).click();
    await page.waitForURL(/pupil=\d+/);
    const who = await page.locator("table.statements tbody tr td:nth-child(2)").allTextContents();
    assert.deepEqual(who, ["Léa Robert", "Léa Robert", "Léa Robert", "Léa Robert"]);
    assert.match(await page.locator("table.statements").textContent(), /Écoute : au marché/);
    assert.match(await page.locator("table.statements").textContent(), /\d+ %/, "teachers see scores");
    if (shots) await page.screenshot({ path: join(shots, "statement-browser.png"), fullPage: true });

    // English is one click away.
    await page.getByRole("link", { name: "English" }).click();
    await page.goto(`${demo.base}/t/demo/`);
    assert.equal(await page.locator("h1").textContent(), "My classes");

    // The old one-time password no longer works.
    const fresh = await browser.newContext({ ignoreHTTPSErrors: true, locale: "fr-FR" });
    const again = await fresh.newPage();
    await again.goto(`${demo.base}/t/demo/login`);
    await again.getByLabel("Identifiant").fill(demo.teacher.username);
    await again.getByLabel("Mot de passe").fill(demo.teacher.otp);
    await again.getByRole("button", { name: "Se connecter" }).click();
    assert.match(await again.locator("[role=alert]").textContent(), /incorrect/);

    // A pupil reads her own activity, never a score.
    const lea = demo.pupils.find((p) => p.username === "lea.robert");
    await again.getByLabel("Identifiant").fill(lea.username);
    await again.getByLabel("Mot de passe").fill(lea.otp);
    await again.getByRole("button", { name: "Se connecter" }).click();
    await again.waitForURL("**/t/demo/password");
    await again.getByLabel("Nouveau mot de passe").fill("mon poney s'appelle Caramel");
    await again.getByLabel("Confirmez le mot de passe").fill("mon poney s'appelle Caramel");
    await again.getByRole("button", { name: "Enregistrer" }).click();
    await again.waitForURL("**/t/demo/");
    await again.getByRole("link", { name: "Mon activité" }).click();
    await again.waitForURL("**/t/demo/history");
    const items = await again.locator("ol.history li").allTextContents();
    assert.equal(items.length, 4, `${items}`);
    assert.ok(items.some((i) => i.includes("Écoute : au marché")), `${items}`);
    assert.ok(!(await again.locator("main").textContent()).includes("%"), "no score reaches a pupil");
    if (shots) await again.screenshot({ path: join(shots, "pupil-history.png"), fullPage: true });
    assert.deepEqual(consoleErrors, [], "no script or CSP errors in the page");
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  }
});

async function firstSignIn(page, base, who, password) {
  await page.goto(`${base}/t/demo/login`);
  await page.getByLabel("Identifiant").fill(who.username);
  await page.getByLabel("Mot de passe").fill(who.otp);
  await page.getByRole("button", { name: "Se connecter" }).click();
  await page.waitForURL("**/t/demo/password");
  await page.getByLabel("Nouveau mot de passe").fill(password);
  await page.getByLabel("Confirmez le mot de passe").fill(password);
  await page.getByRole("button", { name: "Enregistrer" }).click();
  await page.waitForURL("**/t/demo/");
}

test("a teacher assesses the class and decides a level; the pupil sees it with no number", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "ceredis-browser-"));
  const demo = await startDemo(dataDir);
  const browser = await launchBrowser();
  try {
    const consoleErrors = [];
    const page = await newPage(browser, consoleErrors);
    await firstSignIn(page, demo.base, demo.teacher, "le chat de la classe dort");

    // The class, observed on one descriptor, from the keyboard for Léa.
    await page.getByRole("link", { name: "Évaluer la classe" }).click();
    await page.waitForURL(/\/t\/demo\/classes\/\d+\/assessment$/);
    assert.equal(await page.locator("h1").textContent(), "CM2 A — Anglais — Évaluation");
    await page.getByLabel("Descripteur").selectOption("urn:ceredis:cefr:reception:A2:1");
    const lea = page.getByRole("group", { name: "Robert Léa" });
    await lea.getByRole("radio", { name: "Pas encore" }).focus();
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowRight");
    assert.ok(await lea.getByRole("radio", { name: "Acquis" }).isChecked(), "arrow keys choose the level");
    await page.keyboard.press("Tab");
    await page.keyboard.type("Comprend l'annonce du quai");
    for (const name of ["Benali Amel", "Bernard Lucas", "Dubois Inès", "Petit Noah", "Moreau Yanis"]) {
      await page.getByRole("group", { name }).getByRole("radio", { name: "Débutant" }).check();
    }
    await page.getByRole("button", { name: "Enregistrer les observations" }).click();
    await page.waitForURL(/recorded=6/);
    assert.equal(await page.getByLabel("Descripteur").inputValue(), "urn:ceredis:cefr:reception:A2:1", "the descriptor stays chosen");
    assert.match(await page.locator("[role=status]").textContent(), /Observations enregistrées : 6/);
    if (shots) await page.screenshot({ path: join(shots, "class-assessment.png"), fullPage: true });

    // Léa's page: her evidence (the demo's quiz results and today's observation), then a level.
    await page.getByRole("link", { name: "Robert Léa" }).click();
    await page.waitForURL(/\/t\/demo\/pupils\/\d+$/);
    const evidence = await page.locator("table.evidence").textContent();
    assert.match(evidence, /Comprend l'annonce du quai/);
    assert.match(evidence, /Activité \(xAPI\)/, "the demo's quiz results became evidence");
    await page.getByLabel("Compétence").selectOption({ label: "Réception" });
    await page.getByLabel("Niveau", { exact: true }).selectOption({ label: "A2 — intermédiaire" });
    await page.getByLabel("Justification").fill("Comprend les annonces courtes ; observé en classe.");
    await page.locator("label.cite", { hasText: "Observation" }).first().getByRole("checkbox").check();
    await page.getByRole("button", { name: "Décider le niveau" }).click();
    await page.waitForURL(/decided=A2$/);
    assert.match(await page.locator("main").textContent(), /A2 — Comprend les annonces courtes/);
    if (shots) await page.screenshot({ path: join(shots, "pupil-assessment.png"), fullPage: true });

    // Léa sees her level and descriptors in words, and no number.
    const pupil = await newPage(browser, consoleErrors);
    await firstSignIn(pupil, demo.base, demo.pupils.find((p) => p.username === "lea.robert"), "mon poney s'appelle Caramel");
    await pupil.getByRole("link", { name: "Mes compétences" }).click();
    await pupil.waitForURL("**/t/demo/progress");
    const reception = pupil.locator("section.skill", { hasText: "Réception" });
    assert.match(await reception.locator("p.level").textContent(), /Mon niveau : A2 — intermédiaire/);
    const reached = reception.locator("li", { hasText: "Je saisis l'essentiel d'annonces" });
    assert.equal(await reached.locator(".status").textContent(), "Acquis");
    const later = reception.locator("li", { hasText: "Je lis sans effort tout type de texte" });
    assert.equal(await later.locator(".status").textContent(), "Pas encore");
    const production = pupil.locator("section.skill", { hasText: "Production" });
    assert.match(await production.locator("p.level").textContent(), /pas encore décidé/);
    const text = await pupil.locator("main").textContent();
    const withoutLevels = text.replace(/Pré-A1|Pre-A1|\b[ABC][12]\b/g, "");
    assert.doesNotMatch(withoutLevels, /\d/, "no number on the pupil's page");
    assert.doesNotMatch(await pupil.content(), /%|mastery|score/i, "nor in its markup");
    if (shots) await pupil.screenshot({ path: join(shots, "pupil-progress.png"), fullPage: true });
    assert.deepEqual(consoleErrors, [], "no script or CSP errors in the pages");
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test("the admin reinstalls the quiz from its files; a pupil answers it and her teacher sees the evidence", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "ceredis-browser-"));
  const demo = await startDemo(dataDir);
  assert.deepEqual(demo.apps, ["quiz", "portfolio", "class-summary"], "the demo installs the built example apps");
  const components = join(process.env.PLUGINS_TARGET_DIR || join(homedir(), ".cache/ceredis/plugins-target"), "wasm32-wasip2/release");
  const quizWasm = join(components, "quiz.wasm");
  const quizSha = createHash("sha256").update(readFileSync(quizWasm)).digest("hex");
  const browser = await launchBrowser();
  try {
    const consoleErrors = [];
    // The school's admin creates her account from the demo's setup link.
    const admin = await newPage(browser, consoleErrors);
    await admin.goto(`${demo.base}${demo.adminSetup}`);
    await admin.getByLabel("Identifiant").fill("direction");
    await admin.getByLabel("Prénom").fill("Nadia");
    await admin.getByLabel("Nom", { exact: true }).fill("Roux");
    await admin.getByLabel("Nouveau mot de passe").fill("la cour est pleine de marronniers");
    await admin.getByLabel("Confirmez le mot de passe").fill("la cour est pleine de marronniers");
    await admin.getByRole("button", { name: "Créer le compte" }).click();
    await admin.waitForURL("**/t/demo/admin");
    await admin.getByRole("link", { name: "Applications de l'établissement" }).click();
    await admin.waitForURL("**/t/demo/admin/apps");
    const quizCard = () => admin.locator("article.app", { hasText: "quiz 0.1.0" });
    assert.equal(await admin.locator("article.app").count(), 3);
    assert.match(await quizCard().textContent(), new RegExp(quizSha));

    // She removes the quiz; it is gone from the list.
    await quizCard().getByRole("button", { name: "Désinstaller (et effacer ses données)" }).click();
    await admin.waitForURL("**/t/demo/admin/apps/quiz/remove");
    assert.match(await admin.locator("main").textContent(), /Application désinstallée : quiz/);
    assert.equal(await quizCard().count(), 0);

    // A file that is not a component is refused on the spot, and nothing is installed.
    await admin.getByLabel("Manifeste").setInputFiles("plugins/quiz/ceredis-app.toml");
    await admin.getByLabel("Composant").setInputFiles("plugins/quiz/ceredis-app.toml");
    await admin.getByRole("button", { name: "Examiner" }).click();
    assert.match(await admin.locator("main").textContent(), /not a WebAssembly component/);
    assert.equal(await admin.locator("article.app").count(), 2);

    // She uploads the quiz, reads what it asks for in plain words, and grants it.
    await admin.getByLabel("Manifeste").setInputFiles("plugins/quiz/ceredis-app.toml");
    await admin.getByLabel("Composant").setInputFiles(quizWasm);
    await admin.getByRole("button", { name: "Examiner" }).click();
    await admin.waitForURL(/\/t\/demo\/admin\/apps\/review\/[^/]+$/);
    assert.match(await admin.locator("main").textContent(), new RegExp(quizSha));
    const grant = admin.getByRole("checkbox", { name: /xapi\/record/ });
    assert.equal(await grant.count(), 1, "the quiz asks for one capability");
    assert.ok(await grant.isChecked());
    if (shots) await admin.screenshot({ path: join(shots, "app-review.png"), fullPage: true });
    await admin.getByRole("button", { name: "Installer avec ces capacités" }).click();
    assert.match(await admin.locator("main").textContent(), new RegExp(`Application installée : quiz 0.1.0 \\(${quizSha.slice(0, 12)}\\)`));
    assert.match(await quizCard().textContent(), /xapi\/record/);

    const teacher = await newPage(browser, consoleErrors);
    await firstSignIn(teacher, demo.base, demo.teacher, "le chat de la classe dort");
    await teacher.getByRole("link", { name: "Évaluer la classe" }).click();
    await teacher.waitForURL(/\/t\/demo\/classes\/\d+\/assessment$/);
    await teacher.getByRole("link", { name: "Robert Léa" }).click();
    await teacher.waitForURL(/\/t\/demo\/pupils\/\d+$/);
    const leaPage = teacher.url();
    const xapiRows = async () => teacher.locator("table.evidence tr", { hasText: "Activité (xAPI)" }).count();
    const before = await xapiRows();

    const pupil = await newPage(browser, consoleErrors);
    await firstSignIn(pupil, demo.base, demo.pupils.find((p) => p.username === "lea.robert"), "mon poney s'appelle Caramel");
    await pupil.getByRole("link", { name: "Quiz : mes premiers mots d'anglais" }).click();
    await pupil.waitForURL("**/t/demo/apps/quiz/");
    const answers = [
      ["« red » veut dire…", "rouge"],
      ["« seven » veut dire…", "sept"],
      ["Quelle image va avec le mot « apple » ?", "🍎 une pomme"],
      ["Quelle image va avec le mot « dog » ?", "🐱 un chat"],
      ["Le panneau « EXIT » indique…", "la sortie"],
      ["Sur une porte, « CLOSED » veut dire…", "fermé"],
    ];
    for (const [question, choice] of answers) {
      await pupil.getByRole("group", { name: question }).getByLabel(choice).check();
    }
    await pupil.getByRole("button", { name: "Envoyer mes réponses" }).click();
    await pupil.waitForURL("**/t/demo/apps/quiz/answers");
    assert.equal(await pupil.locator("h1").textContent(), "Merci !");
    const thanks = await pupil.locator("main").textContent();
    assert.doesNotMatch(thanks, /\d\s*\/\s*\d|%|score|points/i, "no score for the pupil");
    if (shots) await pupil.screenshot({ path: join(shots, "quiz-thanks.png"), fullPage: true });

    await teacher.goto(leaPage);
    assert.equal(await xapiRows(), before + 6, "six answers, six pieces of evidence");
    if (shots) await teacher.screenshot({ path: join(shots, "quiz-evidence.png"), fullPage: true });
    assert.deepEqual(consoleErrors, [], "no script or CSP errors in the pages");
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
    rmSync(dataDir, { recursive: true, force: true });
  }
});
