// Judges a conformance run against the allowlist of expected failures.
//
//   node evaluate.mjs <runs.tsv> <expected-failures.txt>
//
// runs.tsv: one line per (scenario, version) run: scenario, version, path to the checks.json
// the suite wrote (empty when the run produced none), and a note (the suite's exit code).
// A check counts as passed (SUCCESS), failed (FAILURE), a warning (WARNING, SHOULD-level:
// reported, never fatal) or neither (SKIPPED, INFO). A FAILURE is expected only when its check
// id is allowlisted (for every version, or `id@version`). An allowlisted id that ran and passed
// everywhere it was allowed to fail is stale and fails the run, so the list stays exact.
// Last line: `N passed, M failed`, M being unexpected failures plus stale entries; exit 1 if M > 0.

import { readFileSync, existsSync } from 'node:fs';

const [runsPath, allowPath] = process.argv.slice(2);
if (!runsPath || !allowPath) {
  console.error('usage: node evaluate.mjs <runs.tsv> <expected-failures.txt>');
  process.exit(2);
}

/** @type {{id: string, version: string | null, reason: string, line: number, hits: string[]}[]} */
const allow = [];
readFileSync(allowPath, 'utf8').split('\n').forEach((raw, i) => {
  const line = raw.trim();
  if (!line || line.startsWith('#')) return;
  const hash = line.indexOf('#');
  const entry = (hash === -1 ? line : line.slice(0, hash)).trim();
  const reason = hash === -1 ? '' : line.slice(hash + 1).trim();
  if (!reason || /\s/.test(entry)) {
    console.error(`${allowPath}:${i + 1}: expected "<check-id>[@<version>]  # reason", got: ${line}`);
    process.exit(2);
  }
  const at = entry.indexOf('@');
  allow.push({
    id: at === -1 ? entry : entry.slice(0, at),
    version: at === -1 ? null : entry.slice(at + 1),
    reason,
    line: i + 1,
    hits: [],
  });
});
const allowed = (id, version) => allow.find((a) => a.id === id && (a.version === null || a.version === version));

const SEVERITY = { FAILURE: 4, WARNING: 3, SUCCESS: 2, SKIPPED: 1, INFO: 0 };
const mark = { ok: '\u2713', bad: '\u2717' };

let passed = 0;
let expected = 0;
let warnings = 0;
const unexpected = [];
const warned = [];
const stale = [];
const rows = [];

for (const raw of readFileSync(runsPath, 'utf8').split('\n')) {
  if (!raw.trim()) continue;
  const [scenario, version, checksPath, note] = raw.split('\t');
  const pair = `${scenario}@${version}`;
  if (!checksPath || !existsSync(checksPath)) {
    unexpected.push(`${pair}: the suite produced no results (${note || 'no checks.json'})`);
    rows.push(`${mark.bad} ${pair}: no results`);
    continue;
  }
  const checks = JSON.parse(readFileSync(checksPath, 'utf8'));
  const worst = new Map();
  let p = 0;
  let e = 0;
  let u = 0;
  let w = 0;
  for (const c of checks) {
    const prev = worst.get(c.id);
    if (!prev || SEVERITY[c.status] > SEVERITY[prev]) worst.set(c.id, c.status);
    if (c.status === 'SUCCESS') p++;
    if (c.status === 'WARNING') {
      w++;
      warned.push(`${pair} ${c.id}: ${c.errorMessage ?? c.description}`);
    }
    if (c.status === 'FAILURE') {
      const entry = allowed(c.id, version);
      if (entry) {
        e++;
      } else {
        u++;
        const details = c.details ? ` ${JSON.stringify(c.details).slice(0, 600)}` : '';
        unexpected.push(`${pair} ${c.id}: ${c.errorMessage ?? c.description}${details}`);
      }
    }
  }
  for (const [id, status] of worst) {
    const entry = allowed(id, version);
    if (!entry) continue;
    entry.hits.push(`${pair}=${status}`);
    if (status === 'SUCCESS') stale.push(`${allowPath}:${entry.line} ${id}: passed at ${pair}; remove it`);
  }
  passed += p;
  expected += e;
  warnings += w;
  rows.push(
    `${u === 0 ? mark.ok : mark.bad} ${pair}: ${p} passed` +
      (e ? `, ${e} expected failure${e > 1 ? 's' : ''}` : '') +
      (w ? `, ${w} warning${w > 1 ? 's' : ''}` : '') +
      (u ? `, ${u} UNEXPECTED failure${u > 1 ? 's' : ''}` : ''),
  );
}

console.log('\n=== conformance summary ===');
rows.forEach((r) => console.log(r));
const unused = allow.filter((a) => a.hits.length === 0);
if (unused.length) {
  console.log('\nAllowlist entries that did not run (scenario absent from this suite build):');
  unused.forEach((a) => console.log(`  - ${a.id}${a.version ? `@${a.version}` : ''}: ${a.reason}`));
}
if (warned.length) {
  console.log('\nWarnings (SHOULD-level, not failures):');
  warned.forEach((x) => console.log(`  ! ${x}`));
}
if (stale.length) {
  console.log('\nStale expected failures:');
  stale.forEach((x) => console.log(`  ${mark.bad} ${x}`));
}
if (unexpected.length) {
  console.log('\nUnexpected failures:');
  unexpected.forEach((x) => console.log(`  ${mark.bad} ${x}`));
}
const failed = unexpected.length + stale.length;
console.log(`\n${expected} expected failures (allowlisted), ${warnings} warnings`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
