// HyperBEAM paths ("HyperPATHs") → what this node is asked to do. A pure rule: the request line in,
// a Route or a refusal out, nothing read or stored. HyperBEAM reads a path as segments separated by
// `/`, each a key (`compute`), a key with a value (`results=5`, `as=execution`) and `&k=v` pairs
// that add keys to the request (`compute&Action=Balance`); the first segment names the base message,
// here a process id, optionally with its device (`<pid>~process@1.0`), or a device (`~meta@1.0`).
// Only the routes aoconnect 0.0.98's mainnet mode uses, and the reads next to them, are served.
import { ITEM_ID, TAG_LIMITS, tagProblem, type Tag } from '../../store/items.js';

/** The longest request target (path and query) served: checked before anything is decoded. */
export const MAX_PATH_BYTES = 8 * 1024;

/** Which result: a slot of the process's log, or the id of a message in it. */
export type ResultOf = { slot: number } | { message: string };

export type Route =
  /** `GET /~meta@1.0/info/address`: the scheduler's wallet address, as text (aoconnect's spawn reads it). */
  | { kind: 'meta-address' }
  /** `GET /~meta@1.0/info`: the node's addresses and what it serves. */
  | { kind: 'meta-info' }
  /** `POST /push`: a Process item (a spawn) or a Message item (pushed to its target). */
  | { kind: 'push' }
  /** `POST /<pid>~process@1.0/push`: a Message for that process. */
  | { kind: 'push'; process: string }
  /** `/<pid>~process@1.0/compute/results=<slot|message id>`, `/<pid>/compute&slot=<n>`. */
  | { kind: 'result'; process: string; of: ResultOf }
  /** `/<pid>~process@1.0/slot`: the log's head; `/slot/current`: its number alone, as text. */
  | { kind: 'slot'; process: string; current: boolean }
  /** `/<pid>~process@1.0/now`: the process evaluated to its latest slot. */
  | { kind: 'now'; process: string }
  /** `/<pid>~process@1.0/as=execution/compute&K=V…`: a dry run with the path's pairs as its tags. */
  | { kind: 'dryrun'; process: string; tags: Tag[] }
  /** `/<pid>~process@1.0`: the process as its SU describes it. */
  | { kind: 'process'; process: string };

export class PathError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'PathError';
  }
}

interface Segment {
  key: string;
  value: string | undefined;
  pairs: Tag[];
}

const decode = (text: string, what: string): string => {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new PathError(400, `${what} is not valid percent-encoding`);
  }
};

/** One `key[=value][&k=v…]` segment; values and pairs percent-decoded. */
function segment(raw: string): Segment {
  const [head, ...rest] = raw.split('&');
  const eq = head.indexOf('=');
  const key = decode(eq < 0 ? head : head.slice(0, eq), 'a path segment');
  const value = eq < 0 ? undefined : decode(head.slice(eq + 1), `the value of ${key.slice(0, 64)}`);
  return { key, value, pairs: rest.filter((p) => p !== '').map(pair) };
}

function pair(raw: string): Tag {
  const eq = raw.indexOf('=');
  if (eq <= 0) throw new PathError(400, `"${raw.slice(0, 64)}" in the path is not a key=value pair`);
  return { name: decode(raw.slice(0, eq), 'a key'), value: decode(raw.slice(eq + 1), 'a value') };
}

/** The process a base segment names: `<pid>` or `<pid>~process@1.0`; any other device is not served. */
function processOf(base: Segment): string {
  const tilde = base.key.indexOf('~');
  const id = tilde < 0 ? base.key : base.key.slice(0, tilde);
  const device = tilde < 0 ? 'process@1.0' : base.key.slice(tilde + 1);
  if (!ITEM_ID.test(id)) throw new PathError(404, `no route for /${base.key.slice(0, 100)}: a path starts with a process id (43 base64url characters) or ~meta@1.0`);
  if (device !== 'process@1.0') throw new PathError(404, `device ${device.slice(0, 64)} is not served here: only process@1.0 and meta@1.0`);
  if (base.value !== undefined || base.pairs.length) throw new PathError(400, 'the process segment takes no value or pairs');
  return id;
}

/** A result's `results=` value: a slot number or a message id. */
function resultOf(value: string | undefined): ResultOf {
  if (value !== undefined && /^\d{1,15}$/.test(value)) return { slot: Number(value) };
  if (value !== undefined && ITEM_ID.test(value)) return { message: value };
  throw new PathError(400, 'results= takes a slot number or a message id');
}

/** A dry run's tags: every `&k=v` pair of the path and query, in order, within ANS-104's tag bounds. */
function dryRunTags(pairs: Tag[]): Tag[] {
  if (pairs.length > TAG_LIMITS.count) throw new PathError(400, `${pairs.length} tags in the path, at most ${TAG_LIMITS.count}`);
  const problem = tagProblem(pairs);
  if (problem) throw new PathError(400, `bad dry-run tags: ${problem}`);
  return pairs;
}

/**
 * The route for `method` and a request target (`/path?query`, as on the request line). The query's
 * pairs join the last segment's, as HyperBEAM merges both into the request.
 */
export function routeOf(method: string, target: string): Route {
  if (Buffer.byteLength(target) > MAX_PATH_BYTES) throw new PathError(414, `the path is over ${MAX_PATH_BYTES} bytes`);
  if (method !== 'GET' && method !== 'POST') throw new PathError(405, `${method.slice(0, 16)} is not served: GET or POST`);
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const query = q < 0 ? [] : target.slice(q + 1).split('&').filter((p) => p !== '').map(pair);
  if (!path.startsWith('/')) throw new PathError(400, 'the path must start with /');
  const segments = path.slice(1).split('/').filter((s) => s !== '').map(segment);
  if (segments.length === 0) throw new PathError(404, 'no route for /: see /~meta@1.0/info');
  if (segments.length > 8) throw new PathError(404, 'no route here has more than 8 segments');
  segments[segments.length - 1].pairs.push(...query);
  const [base, ...rest] = segments;
  const keys = rest.map((s) => s.key);
  const noPairs = (what: string): void => {
    if (segments.some((s) => s.pairs.length)) throw new PathError(400, `${what} takes no key=value pairs`);
  };

  if (base.key === '~meta@1.0') {
    noPairs('~meta@1.0');
    if (keys.join('/') === 'info/address') return { kind: 'meta-address' };
    if (keys.join('/') === 'info' || keys.length === 0) return { kind: 'meta-info' };
    throw new PathError(404, `no route for ${path.slice(0, 100)}: ~meta@1.0 serves info and info/address`);
  }
  if (base.key === 'push' && rest.length === 0) {
    if (method !== 'POST') throw new PathError(405, 'push takes a POST of a signed item');
    return { kind: 'push' };
  }

  const process = processOf(base);
  const [first, second] = rest;
  if (rest.length === 0) {
    noPairs('a process');
    return { kind: 'process', process };
  }
  if (first.key === 'push' && rest.length === 1 && first.value === undefined) {
    if (method !== 'POST') throw new PathError(405, 'push takes a POST of a signed item');
    noPairs('push');
    return { kind: 'push', process };
  }
  if (first.key === 'compute' && first.value === undefined) {
    if (rest.length === 1) {
      const slot = first.pairs.find((p) => p.name === 'slot');
      if (!slot || first.pairs.length !== 1 || !/^\d{1,15}$/.test(slot.value)) throw new PathError(400, 'compute takes /results=<slot|message id> or &slot=<slot number>');
      return { kind: 'result', process, of: { slot: Number(slot.value) } };
    }
    if (rest.length === 2 && second.key === 'results') {
      noPairs('compute/results');
      return { kind: 'result', process, of: resultOf(second.value) };
    }
  }
  if (first.key === 'slot' && first.value === undefined) {
    noPairs('slot');
    if (rest.length === 1) return { kind: 'slot', process, current: false };
    if (rest.length === 2 && second.key === 'current' && second.value === undefined) return { kind: 'slot', process, current: true };
  }
  if (first.key === 'now' && first.value === undefined && rest.length === 1) {
    noPairs('now');
    return { kind: 'now', process };
  }
  if (first.key === 'as' && first.value === 'execution' && rest.length === 2 && second.key === 'compute' && second.value === undefined) {
    if (first.pairs.length) throw new PathError(400, 'the dry-run tags follow compute: as=execution/compute&K=V');
    return { kind: 'dryrun', process, tags: dryRunTags(second.pairs) };
  }
  throw new PathError(404, `no route for ${path.slice(0, 100)}: see /~meta@1.0/info for what this node serves`);
}
