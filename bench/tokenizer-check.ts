// npm run check:tokenizer — Verity's tokenizers against llama.cpp itself (node-llama-cpp 3.22.1,
// prebuilt CPU binary, installed by bench/peer/install.mjs into bench/.peer).
//
// For each byte-level BPE vocabulary (tests/engine/bpe-models.ts) it writes a tiny GGUF, loads it
// in Verity (the real GGUF path) and in llama.cpp (vocab only), tokenizes every line of
// tests/engine/tokenizer-corpus.json with and without special parsing and with and without BOS,
// prints the agreement and every mismatch, and records llama.cpp's ids in
// tests/golden/tokenizer-<name>.json (what tests/engine/tokenizer-bpe.test.ts checks in npm test).
// The SentencePiece path (stories260K.gguf) is compared the same way and reported.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadModel, tokenize, type Tokenizer } from '../src/engine/index.js';
import { BPE_MODELS, bpeTokenizer, tinyBpeGguf, type TokenizerGolden } from '../tests/engine/bpe-models.js';
import { goldenDir, projectRoot, stories260KGguf } from '../tests/helpers.js';

interface PeerModel {
  tokenize(text: string, special: boolean): number[];
  tokens: { bos: number | null; shouldPrependBosToken: boolean };
  dispose(): Promise<void>;
}
interface Peer {
  loadModel(options: { modelPath: string; vocabOnly: boolean }): Promise<PeerModel>;
}

const corpus = JSON.parse(readFileSync(join(projectRoot, 'tests', 'engine', 'tokenizer-corpus.json'), 'utf8')) as string[];

async function peer(): Promise<Peer> {
  const { installPeer, DEFAULT_PEER_DIR, PEER_ENV } = (await import(pathToFileURL(join(projectRoot, 'bench', 'peer', 'install.mjs')).href)) as {
    installPeer(dir: string): Promise<unknown>;
    DEFAULT_PEER_DIR: string;
    PEER_ENV: Record<string, string>;
  };
  Object.assign(process.env, PEER_ENV);
  await installPeer(DEFAULT_PEER_DIR);
  const entry = join(DEFAULT_PEER_DIR, 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
  const { getLlama, LlamaLogLevel } = (await import(pathToFileURL(entry).href)) as {
    getLlama(o: object): Promise<Peer>;
    LlamaLogLevel: Record<string, string>;
  };
  return getLlama({ gpu: false, build: 'never', usePrebuiltBinaries: true, logLevel: LlamaLogLevel.error });
}

const same = (a: number[], b: number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const show = (s: string): string => JSON.stringify(s.length > 60 ? `${s.slice(0, 60)}…` : s);

interface Row {
  name: string;
  lines: number;
  plain: number;
  special: number;
  bos: number;
  bosSpecial: number;
}

function compare(name: string, t: Tokenizer, llama: PeerModel, rows: Row[]): { plain: number[][]; special: number[][] } {
  const bos = llama.tokens.shouldPrependBosToken && llama.tokens.bos !== null ? [llama.tokens.bos] : [];
  const row: Row = { name, lines: corpus.length, plain: 0, special: 0, bos: 0, bosSpecial: 0 };
  const plain: number[][] = [];
  const special: number[][] = [];
  corpus.forEach((text, i) => {
    const ref = { plain: llama.tokenize(text, false), special: llama.tokenize(text, true) };
    plain.push(ref.plain);
    special.push(ref.special);
    const checks: [keyof Row, number[], number[]][] = [
      ['plain', tokenize(t, text, { addSpecial: false, parseSpecial: false }), ref.plain],
      ['special', tokenize(t, text, { addSpecial: false, parseSpecial: true }), ref.special],
      ['bos', tokenize(t, text, { addSpecial: true, parseSpecial: false }), [...bos, ...ref.plain]],
      ['bosSpecial', tokenize(t, text, { addSpecial: true, parseSpecial: true }), [...bos, ...ref.special]],
    ];
    for (const [key, ours, theirs] of checks) {
      if (same(ours, theirs)) (row[key] as number)++;
      else console.log(`  MISMATCH ${name} ${key} line ${i} ${show(text)}\n    llama.cpp ${JSON.stringify(theirs)}\n    verity    ${JSON.stringify(ours)}`);
    }
  });
  rows.push(row);
  return { plain, special };
}

async function main(): Promise<void> {
  const llama = await peer();
  const dir = mkdtempSync(join(tmpdir(), 'verity-tokcheck-'));
  const rows: Row[] = [];
  try {
    for (const spec of BPE_MODELS) {
      const file = join(dir, `${spec.name}.gguf`);
      writeFileSync(file, tinyBpeGguf(bpeTokenizer(spec)));
      const ours = loadModel(file).tokenizer; // through the GGUF loader, as a node would load it
      const theirs = await llama.loadModel({ modelPath: file, vocabOnly: true });
      const ids = compare(spec.name, ours, theirs, rows);
      const golden: TokenizerGolden = {
        name: spec.name, pre: spec.pre, note: spec.note,
        addBos: theirs.tokens.shouldPrependBosToken, bosId: theirs.tokens.bos, ...ids,
      };
      writeFileSync(join(goldenDir, `tokenizer-${spec.name}.json`), `${JSON.stringify(golden)}\n`);
      await theirs.dispose();
    }
    const sp = await llama.loadModel({ modelPath: stories260KGguf, vocabOnly: true });
    compare('stories260K (SentencePiece)', loadModel(stories260KGguf).tokenizer, sp, rows);
    await sp.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const pct = (n: number, of: number): string => `${n}/${of} (${((100 * n) / of).toFixed(1)} %)`;
  console.log(`\nagreement with llama.cpp over ${corpus.length} corpus lines (plain | parse_special | +BOS | +BOS parse_special):`);
  for (const r of rows) console.log(`  ${r.name.padEnd(28)} ${pct(r.plain, r.lines)} | ${pct(r.special, r.lines)} | ${pct(r.bos, r.lines)} | ${pct(r.bosSpecial, r.lines)}`);
  const bpeExact = rows.filter((r) => !r.name.includes('SentencePiece')).every((r) => r.plain === r.lines && r.special === r.lines && r.bos === r.lines && r.bosSpecial === r.lines);
  process.exitCode = bpeExact ? 0 : 1;
}

await main();
