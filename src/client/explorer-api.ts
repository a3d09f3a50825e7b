// The explorer (docs/explorer.md): read-only JSON under /v1/verity/… for the web page in
// explorer/, and the page itself (dist/explorer, built by `npm run build:explorer`) at /explorer/.
// The coordinator has no "all tasks" query, so the task list is built from the newest results of
// the coordinator (a bounded scan of its CU results feed): Infer-Accepted, Task-Assigned and
// Infer-Response messages name their Task; an ended task's last Infer-Response holds its whole
// view, a live task is read again with the `Task` dry-run. Every answer is cached for a few
// seconds, so that polling pages cost the network one scan per interval, not one per viewer.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { extname, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { expectReply, RefusedError, type AoClient } from '../ao/client.js';
import type { Store } from '../store/store.js';
import type { TaskView } from '../processes/protocol.js';
import { ApiError } from './api.js';

export interface ExplorerOptions {
  cu: string;
  coordinator: string;
  /** The address dry-runs are read as. */
  from: string;
  ao: AoClient;
  /** Where trace items are read from for GET /v1/verity/items/:id (absent: 503). */
  store?: Store;
  /** The built page (default: dist/explorer next to this module's dist/src). */
  staticDir?: string;
}

/** Bounds of the explorer's reads. */
export const EXPLORER_LIMITS = {
  /** Results of the coordinator scanned for tasks and messages (newest first), per page and pages. */
  feedPage: 100,
  feedPages: 4,
  /** Distinct tasks kept from the scan, and shown at most in one answer. */
  tasks: 200,
  pageSize: 50,
  messages: 100,
  /** Seconds an answer is reused. */
  cacheMs: 2_000,
  /** Bytes of a proxied item. */
  itemBytes: 32 << 20,
};

/** Paths served without an API key in key mode: the page and its read-only JSON. */
export function isExplorerPath(method: string, url: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const path = url.split('?')[0];
  return path === '/explorer' || path.startsWith('/explorer/') || /^\/v1\/verity\/(tasks|nodes|models|messages|info)$/.test(path) || /^\/v1\/verity\/items\/[^/]+$/.test(path);
}

export interface FeedMessage {
  action: string;
  target: string;
  task: string | null;
  status: string | null;
  code: string | null;
  message: string | null;
}

export interface TaskEntry {
  task: string;
  /** The prompt as the nodes were given it (Task-Assigned), when the scan saw it. */
  prompt: string | null;
  /** The task view: live (Task dry-run) or its last Infer-Response. */
  view: TaskView | null;
}

interface Scan {
  messages: FeedMessage[];
  tasks: { task: string; prompt: string | null; last: TaskView | null }[];
}

interface ResultNode {
  Messages?: { Target?: string; Tags?: { name: string; value: string }[]; Data?: string }[];
}

/** Tasks and messages out of pages of results, newest first (pure). */
export function scanFeed(nodes: ResultNode[], maxTasks = EXPLORER_LIMITS.tasks, maxMessages = EXPLORER_LIMITS.messages): Scan {
  const messages: FeedMessage[] = [];
  const byTask = new Map<string, { task: string; prompt: string | null; last: TaskView | null }>();
  for (const node of nodes) {
    // Within one result, the last message is the newest.
    for (const m of [...(node.Messages ?? [])].reverse()) {
      const tags = Object.fromEntries((m.Tags ?? []).map((t) => [t.name, t.value]));
      const action = tags.Action ?? '';
      const task = tags.Task ?? null;
      if (messages.length < maxMessages) messages.push({ action, target: m.Target ?? '', task, status: tags.Status ?? null, code: tags.Code ?? null, message: tags.Message ?? null });
      if (!task || !/^[A-Za-z0-9_-]{43}$/.test(task)) continue;
      let entry = byTask.get(task);
      if (!entry) {
        if (byTask.size >= maxTasks) continue;
        byTask.set(task, (entry = { task, prompt: null, last: null }));
      }
      if (action === 'Infer-Response' && !tags.Code && entry.last === null) {
        try {
          entry.last = JSON.parse(m.Data ?? '') as TaskView;
        } catch {
          // not a view
        }
      }
      if (action === 'Task-Assigned' && entry.prompt === null) {
        try {
          const prompt = (JSON.parse(m.Data ?? '') as { prompt?: unknown }).prompt;
          if (typeof prompt === 'string') entry.prompt = prompt;
        } catch {
          // not an assignment
        }
      }
    }
  }
  return { messages, tasks: [...byTask.values()] };
}

const ENDED = new Set(['final', 'failed']);

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** The file under `root` a URL path names, or null (outside it, hidden, or not a file). */
export function staticFile(root: string, urlPath: string): string | null {
  let rel: string;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (rel.includes('\0') || rel.split('/').some((p) => p === '..' || p.startsWith('.'))) return null;
  if (rel === '' || rel.endsWith('/')) rel += 'index.html';
  const base = resolve(root);
  const file = resolve(base, '.' + (rel.startsWith('/') ? rel : `/${rel}`));
  if (!file.startsWith(base + sep)) return null;
  try {
    return statSync(file).isFile() ? file : null;
  } catch {
    return null;
  }
}

function cached<T>(ms: number, read: () => Promise<T>): () => Promise<T> {
  let at = 0;
  let value: T | undefined;
  let reading: Promise<T> | null = null;
  return () => {
    if (value !== undefined && Date.now() - at < ms) return Promise.resolve(value);
    reading ??= read().then(
      (v) => {
        value = v;
        at = Date.now();
        reading = null;
        return v;
      },
      (e: unknown) => {
        reading = null;
        throw e;
      },
    );
    return reading;
  };
}

/** Registers the explorer's routes on the API server (one call from startApi). */
export function registerExplorer(app: FastifyInstance, options: ExplorerOptions): void {
  const { ao, coordinator, from } = options;
  const limits = EXPLORER_LIMITS;
  const root = options.staticDir ?? fileURLToPath(new URL('../../explorer/', import.meta.url));

  const dry = async (action: string, tags: { name: string; value: string }[] = []): Promise<string> =>
    expectReply(await ao.dryRun(coordinator, { tags: [{ name: 'Action', value: action }, ...tags], from }), `${action}-Response`).data;

  const scan = cached(limits.cacheMs, async (): Promise<Scan> => {
    const nodes: ResultNode[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < limits.feedPages; page++) {
      const params = new URLSearchParams({ sort: 'DESC', limit: String(limits.feedPage) });
      if (cursor !== undefined) params.set('from', cursor);
      const res = await fetch(`${options.cu}/results/${coordinator}?${params}`);
      if (!res.ok) throw new ApiError(502, `the CU answered ${res.status} for the coordinator's results`, 'api_error', null, 'network_error');
      const body = (await res.json()) as { pageInfo: { hasNextPage: boolean }; edges: { cursor: string; node: ResultNode }[] };
      for (const e of body.edges) nodes.push(e.node);
      cursor = body.edges.at(-1)?.cursor;
      if (!body.pageInfo.hasNextPage || cursor === undefined) break;
    }
    return scanFeed(nodes);
  });

  const liveViews = new Map<string, { at: number; view: Promise<TaskView | null> }>();
  const liveView = (task: string): Promise<TaskView | null> => {
    const hit = liveViews.get(task);
    if (hit && Date.now() - hit.at < limits.cacheMs) return hit.view;
    const view = dry('Task', [{ name: 'Task', value: task }]).then(
      (data) => JSON.parse(data) as TaskView,
      (e: unknown) => {
        if (e instanceof RefusedError && e.code === 404) return null;
        throw e;
      },
    );
    if (liveViews.size > limits.tasks * 2) liveViews.clear();
    liveViews.set(task, { at: Date.now(), view });
    return view;
  };

  const nodes = cached(limits.cacheMs, async () => JSON.parse(await dry('Nodes')) as unknown[]);
  const models = cached(limits.cacheMs, async () => JSON.parse(await dry('Models')) as unknown[]);
  const info = cached(limits.cacheMs, async () => JSON.parse(await dry('Info')) as Record<string, unknown>);

  app.get('/v1/verity/tasks', async (request: FastifyRequest) => {
    const q = request.query as { limit?: string; offset?: string };
    const limit = Math.min(Math.max(Number.parseInt(q.limit ?? '', 10) || limits.pageSize, 1), limits.pageSize);
    const offset = Math.min(Math.max(Number.parseInt(q.offset ?? '', 10) || 0, 0), limits.tasks);
    const s = await scan();
    const shown = s.tasks.slice(offset, offset + limit);
    const tasks: TaskEntry[] = await Promise.all(
      shown.map(async (t): Promise<TaskEntry> => {
        // An ended task's last Infer-Response is all of it; a live one is read from the coordinator.
        const view = t.last && ENDED.has(t.last.status) ? t.last : ((await liveView(t.task)) ?? t.last);
        return { task: t.task, prompt: t.prompt, view };
      }),
    );
    return { object: 'list', total: s.tasks.length, offset, limit, tasks };
  });
  app.get('/v1/verity/messages', async () => ({ object: 'list', messages: (await scan()).messages }));
  app.get('/v1/verity/nodes', async () => ({ object: 'list', nodes: await nodes() }));
  app.get('/v1/verity/models', async () => ({ object: 'list', models: await models() }));
  app.get('/v1/verity/info', async () => ({ coordinator, ...(await info()) }));
  app.get('/v1/verity/items/:id', async (request: FastifyRequest, reply: FastifyReply) => {
    const { id } = request.params as { id: string };
    if (!/^[A-Za-z0-9_-]{43}$/.test(id)) throw new ApiError(400, 'an item id is 43 base64url characters', 'invalid_request_error', 'id', 'invalid_value');
    if (!options.store) throw new ApiError(503, 'this server has no store to read items from', 'server_error', null, 'no_store');
    const item = await options.store.get(id);
    if (!item) throw new ApiError(404, `no item ${id}`, 'invalid_request_error', 'id', 'not_found');
    if (item.data.length > limits.itemBytes) throw new ApiError(413, `item ${id} is over ${limits.itemBytes} bytes`, 'invalid_request_error', 'id', 'too_large');
    return reply.header('cache-control', 'public, max-age=31536000, immutable').type('application/octet-stream').send(item.data);
  });

  const page = async (request: FastifyRequest, reply: FastifyReply) => {
    const path = request.url.split('?')[0];
    if (path === '/explorer') return reply.redirect('/explorer/', 301);
    const file = staticFile(root, path.slice('/explorer/'.length));
    if (!file) {
      if (!existsSync(resolve(root, 'index.html'))) throw new ApiError(404, 'the explorer is not built (npm run build:explorer)', 'invalid_request_error', null, 'unknown_url');
      throw new ApiError(404, `no such file: ${path.slice(0, 100)}`, 'invalid_request_error', null, 'unknown_url');
    }
    const immutable = file.includes(`${sep}assets${sep}`);
    return reply
      .header('cache-control', immutable ? 'public, max-age=31536000, immutable' : 'no-cache')
      .header('x-content-type-options', 'nosniff')
      .type(TYPES[extname(file)] ?? 'application/octet-stream')
      .send(readFileSync(file));
  };
  app.get('/explorer', page);
  app.get('/explorer/*', page);
}
