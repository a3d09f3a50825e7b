import { execFile } from 'node:child_process';
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

/** Runs the installed `verity` bin as a user would. */
export function runCli(args: string[], timeoutMs = 60_000, env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(projectRoot, 'bin', 'verity.js'), ...args],
      { encoding: 'buffer', timeout: timeoutMs, maxBuffer: 1 << 26, env: { ...process.env, ...env } },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ code, stdout, stderr: stderr.toString('utf8') });
      },
    );
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
