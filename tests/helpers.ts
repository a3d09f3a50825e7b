import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests run from dist/test/...). */
export const projectRoot = fileURLToPath(new URL('../../', import.meta.url));
export const sharedModels = join(projectRoot, '..', 'shared', 'models');
export const stories260K = join(sharedModels, 'stories260K.bin');
export const stories260KGguf = join(sharedModels, 'stories260K.gguf');
export const tok512 = join(sharedModels, 'tok512.bin');
export const llama2Tokenizer = join(sharedModels, 'llama2-tokenizer.bin');
export const goldenDir = join(projectRoot, 'tests', 'golden');

export interface CliResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs the installed `verity` bin as a user would; `input` is written to its standard input (closed either way). */
export function runCli(args: string[], timeoutMs = 60_000, env: Record<string, string> = {}, input = ''): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [join(projectRoot, 'bin', 'verity.js'), ...args],
      { encoding: 'buffer', timeout: timeoutMs, maxBuffer: 1 << 26, env: { ...process.env, ...env } },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ code, stdout, stderr: stderr.toString('utf8') });
      },
    );
    child.stdin?.end(input);
  });
}

/** Runs `work` over items with at most `limit` in flight. */
export async function pool<T, R>(items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** Runs `body` with a fresh temporary folder, removed when `body` (sync or async) is done. */
export function withTempDir<T>(body: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'verity-test-'));
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  let result: T;
  try {
    result = body(dir);
  } catch (e) {
    remove();
    throw e;
  }
  if (result instanceof Promise) return result.finally(remove) as T;
  remove();
  return result;
}

export interface ServingCli {
  child: ChildProcess;
  /** The JSON line the command printed once listening. */
  info: Record<string, string>;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** Ends it: SIGKILL (no cleanup) or SIGTERM; resolves when it has exited. */
  stop(signal?: 'SIGKILL' | 'SIGTERM'): Promise<void>;
}

// Served commands still running when a test file ends (a failure, a timeout) go with it.
const serving = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of serving) child.kill('SIGKILL');
});

/** Starts a long-running `verity … --json` command and waits until it prints its JSON line. */
export function serveCli(args: string[], timeoutMs = 30_000): Promise<ServingCli> {
  const child = spawn(process.execPath, [join(projectRoot, 'bin', 'verity.js'), ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  serving.add(child);
  child.once('exit', () => serving.delete(child));
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (signal: 'SIGKILL' | 'SIGTERM' = 'SIGTERM'): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop('SIGKILL');
      reject(new Error(`verity ${args[0]} did not start in ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      const line = out.split('\n');
      if (line.length < 2) return;
      clearTimeout(timer);
      resolve({ child, info: JSON.parse(line[0]) as Record<string, string>, stderr: () => err, stop });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`verity ${args[0]} exited with ${code} before listening: ${err}`));
    });
  });
}

/** Reads until `read` gives something truthy (every 200 ms), or throws after `ms` naming `what`. */
export async function eventually<T>(what: string, read: () => Promise<T | null | undefined>, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
