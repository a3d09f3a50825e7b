// One Lua text from a file and the local modules it requires, as aos's `.load` makes it: every
// `require('name')` / `require "name"` whose `name.lua` (dots → slashes) lies next to the entry file
// (or next to the file that requires it) becomes a `package.preload['name']` entry ahead of the
// file's own source, so that `require` finds it in the process. `require('verity')` is the repo's
// Verity Lua client. A require of a module that is not here is left as it is (the process may have
// it already).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError } from 'commander';

export const MAX_BUNDLE_BYTES = 1024 * 1024;
export const MAX_BUNDLE_FILES = 64;

/** Built-in modules: name → file. */
const BUILTINS: Record<string, string> = {
  verity: fileURLToPath(new URL('../processes/lua/verity.lua', import.meta.url)),
};

export interface Bundle {
  source: string;
  /** The modules bundled, dependencies first: name and file. */
  modules: { name: string; file: string }[];
  /** Names required but not found here, left to the process. */
  missing: string[];
}

const REQUIRE = /\brequire\s*(?:\(\s*)?(["'])([^"'\n\\]+)\1/g;
const NAME = /^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*$/;

/** The names a Lua text requires with a literal string, in order, once each (comment lines skipped). */
export function requiredNames(source: string): string[] {
  const names = new Set<string>();
  for (const line of source.split('\n')) {
    if (line.trimStart().startsWith('--')) continue;
    for (const m of line.matchAll(REQUIRE)) names.add(m[2]);
  }
  return [...names];
}

function readLua(file: string, what: string): string {
  let size: number;
  try {
    size = statSync(file).size;
  } catch {
    throw new InvalidArgumentError(`${what} ${file} not found`);
  }
  if (size > MAX_BUNDLE_BYTES) throw new InvalidArgumentError(`${file} is ${size} bytes, over the ${MAX_BUNDLE_BYTES}-byte bundle limit`);
  return readFileSync(file, 'utf8').replace(/^#![^\n]*/, '');
}

/** The file a module name stands for, or undefined when there is none here. */
function locate(name: string, roots: string[]): string | undefined {
  const builtin = BUILTINS[name];
  if (builtin !== undefined) {
    if (!existsSync(builtin)) throw new InvalidArgumentError(`the built-in Lua module '${name}' (${builtin}) not found: build the repo (npm run build)`);
    return builtin;
  }
  if (!NAME.test(name)) return undefined;
  const relative = `${name.replace(/\./g, '/')}.lua`;
  return roots.map((root) => join(root, relative)).find((file) => existsSync(file));
}

const preload = (name: string, source: string): string =>
  `package.loaded[${JSON.stringify(name)}] = nil\npackage.preload[${JSON.stringify(name)}] = function(...)\n${source}\nend\n`;

export function bundleLua(entry: string): Bundle {
  const entryFile = resolve(entry);
  const root = dirname(entryFile);
  const done = new Set<string>(); // files bundled
  const names = new Map<string, string>(); // file → the name it was first required by
  const modules: Bundle['modules'] = [];
  const missing = new Set<string>();
  const parts: string[] = [];
  let bytes = 0;
  const add = (text: string): void => {
    bytes += Buffer.byteLength(text);
    if (bytes > MAX_BUNDLE_BYTES) throw new InvalidArgumentError(`the bundle of ${entry} is over ${MAX_BUNDLE_BYTES} bytes`);
    parts.push(text);
  };
  // Depth first, dependencies before the modules that need them; `stack` holds the files being read.
  const visit = (file: string, source: string, stack: string[]): void => {
    for (const name of requiredNames(source)) {
      const found = locate(name, [...new Set([root, dirname(file)])]);
      if (found === undefined) {
        missing.add(name);
        continue;
      }
      const at = stack.indexOf(found);
      if (at >= 0) {
        const chain = [...stack.slice(at), found].map((f) => (f === entryFile ? entry : names.get(f) ?? f));
        throw new InvalidArgumentError(`require cycle: ${chain.join(' → ')}`);
      }
      if (done.has(found)) continue;
      names.set(found, name);
      if (modules.length + 2 > MAX_BUNDLE_FILES) throw new InvalidArgumentError(`${entry} requires more than ${MAX_BUNDLE_FILES - 1} modules`);
      const text = readLua(found, `module '${name}':`);
      visit(found, text, [...stack, found]);
      done.add(found);
      modules.push({ name, file: found });
      add(preload(name, text));
    }
  };
  const source = readLua(entryFile, 'Lua file');
  visit(entryFile, source, [entryFile]);
  add(source);
  return { source: parts.join(''), modules, missing: [...missing] };
}
