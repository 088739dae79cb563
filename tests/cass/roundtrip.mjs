// A framework built offline with the cassproject library (CaSS's own JavaScript objects:
// Framework, Competency, Relation, Level) is imported into a tenant with
// `ceredis framework import`, exported again with `ceredis framework export`, and the
// export is read back into cassproject objects: ids, names, descriptions, relations and
// levels survive. Runs the real binary (BIN_CEREDIS).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
require("cassproject");
const bin = process.env.BIN_CEREDIS;

function build() {
  const base = "https://cass.academie.example/api/";
  const f = new EcFramework();
  f.generateId(base);
  f.setName("Anglais oral, cycle 4");
  f.setDescription("Compréhension et expression orales");
  const objects = [];
  const competency = (name, description) => {
    const c = new EcCompetency();
    c.generateId(base);
    c.setName(name);
    if (description) c.setDescription(description);
    f.addCompetency(c.shortId());
    objects.push(c);
    return c;
  };
  const listening = competency("Écouter et comprendre", "Comprendre des messages oraux");
  const speaking = competency("Parler en continu");
  const d1 = competency("Comprendre une annonce en gare");
  const d2 = competency("Comprendre une consigne de classe");
  const d3 = competency("Se présenter en quelques phrases");
  const relation = (s, t, type) => {
    const r = new EcAlignment();
    r.generateId(base);
    r.source = s.shortId();
    r.target = t.shortId();
    r.relationType = type;
    f.addRelation(r.shortId());
    objects.push(r);
  };
  relation(d1, listening, EcAlignment.NARROWS);
  relation(d2, listening, EcAlignment.NARROWS);
  relation(d3, speaking, EcAlignment.NARROWS);
  relation(d1, d2, EcAlignment.REQUIRES);
  relation(d2, d3, EcAlignment.IS_EQUIVALENT_TO);
  for (const skill of [listening, speaking]) {
    for (const [code, title] of [["A1", "Découverte"], ["A2", "Intermédiaire"], ["B1", "Seuil"]]) {
      const l = new EcLevel();
      l.generateId(base);
      l.competency = skill.shortId();
      l.name = code;
      l.title = title;
      l.description = `${title} (${code})`;
      f.addLevel(l.shortId());
      objects.push(l);
    }
  }
  return { framework: f, objects };
}

const ceredis = (dataDir, ...args) => execFileSync(bin, [...args, "--data-dir", dataDir], { encoding: "utf8" });

test("a CaSS framework built with cassproject survives import and export", () => {
  assert.ok(bin, "BIN_CEREDIS must name the ceredis binary");
  const dir = mkdtempSync(join(tmpdir(), "ceredis-cass-"));
  try {
    const dataDir = join(dir, "data");
    ceredis(dataDir, "init", "--listen", "127.0.0.1:0");
    ceredis(dataDir, "tenant", "create", "ecole");
    const { framework, objects } = build();
    const file = join(dir, "framework.jsonld");
    writeFileSync(file, JSON.stringify([framework, ...objects].map((o) => JSON.parse(o.toJson()))));
    const imported = ceredis(dataDir, "framework", "import", "--tenant", "ecole", file);
    assert.match(imported, /5 competencies, 5 relations, 6 levels/);

    const exported = JSON.parse(ceredis(dataDir, "framework", "export", "--tenant", "ecole", framework.shortId()));
    const byId = new Map(exported.map((o) => [o["@id"], o]));
    const back = new EcFramework();
    back.copyFrom(byId.get(framework.shortId()));
    assert.equal(back.getName(), "Anglais oral, cycle 4");
    assert.equal(back.getDescription(), "Compréhension et expression orales");
    assert.deepEqual([...back.competency].sort(), [...framework.competency].sort());
    assert.deepEqual([...back.relation].sort(), [...framework.relation].sort());
    assert.deepEqual([...back.level].sort(), [...framework.level].sort());
    for (const original of objects) {
      const copy = byId.get(original.shortId());
      assert.ok(copy, `${original.shortId()} is exported`);
      assert.equal(copy["@type"], original.type);
      if (original.isAny(new EcCompetency().getTypes())) {
        const c = new EcCompetency();
        c.copyFrom(copy);
        assert.equal(c.getName(), original.getName());
        assert.equal(c.getDescription() ?? null, original.getDescription() ?? null);
      } else if (original.isAny(new EcAlignment().getTypes())) {
        const r = new EcAlignment();
        r.copyFrom(copy);
        assert.deepEqual([r.source, r.target, r.relationType], [original.source, original.target, original.relationType]);
      } else {
        const l = new EcLevel();
        l.copyFrom(copy);
        assert.deepEqual([l.competency, l.name, l.title, l.description], [original.competency, original.name, original.title, original.description]);
      }
    }
    // Importing the export again changes nothing.
    writeFileSync(file, JSON.stringify(exported));
    assert.match(ceredis(dataDir, "framework", "import", "--tenant", "ecole", file), /5 competencies/);
    const again = JSON.parse(ceredis(dataDir, "framework", "export", "--tenant", "ecole", framework.shortId()));
    assert.deepEqual(again, exported);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
