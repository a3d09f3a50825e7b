import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { ModelFileError } from '../errors.js';

export interface OpenFile {
  path: string;
  fd: number;
  size: number;
}

export function openFile(path: string): OpenFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ModelFileError(path, code === 'ENOENT' ? 'no such file' : `cannot open (${code ?? String(e)})`);
  }
  const stat = fstatSync(fd);
  if (!stat.isFile()) {
    closeSync(fd);
    throw new ModelFileError(path, 'not a regular file');
  }
  return { path, fd, size: stat.size };
}

/** Runs `body` with the file open and always closes it. */
export function withFile<T>(path: string, body: (file: OpenFile) => T): T {
  const file = openFile(path);
  try {
    return body(file);
  } finally {
    closeSync(file.fd);
  }
}

/** Fills `dest` from `position`, straight into its memory (weights go to wasm memory this way). */
export function readExact(file: OpenFile, dest: Uint8Array, position: number, what: string): void {
  const CHUNK = 1 << 26;
  let done = 0;
  while (done < dest.length) {
    const n = readSync(file.fd, dest, done, Math.min(CHUNK, dest.length - done), position + done);
    if (n === 0) throw new ModelFileError(file.path, `truncated: ended at byte ${position + done} while reading ${what}`);
    done += n;
  }
}

export function readBytes(file: OpenFile, position: number, length: number, what: string): Uint8Array {
  const buf = new Uint8Array(length);
  readExact(file, buf, position, what);
  return buf;
}
