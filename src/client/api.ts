// The OpenAI-compatible HTTP API (docs/api.md): /v1/models, /v1/completions and
// /v1/chat/completions in OpenAI's shapes, each answer served by the network through the SDK and
// carrying a `verity` object (the task, its receipt, its status and where to check it); with
// stream: true, server-sent events from the coordinator's first answer to the final receipt. The
// request → response mapping is pure functions (parse*, *Response, toApiError), unit-tested apart
// from the Fastify wiring (startApi).
import { createHash } from 'node:crypto';
import { createServer, STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { dirname, resolve } from 'node:path';
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { aoClient, AoClientError, expectReply, RefusedError } from '../ao/client.js';
import { DEFAULT_CHAT_TEMPLATE, renderChat, type ChatMessage, type ChatRole } from '../engine/chat.js';
import type { Model } from '../engine/model.js';
import { readModelHeader } from '../store/models.js';
import type { Store } from '../store/store.js';
import { parseWallet, readWallet, walletAddress, WalletError, type Wallet } from '../store/wallet.js';
import { Verity, type InferResult, type Receipt, type VerityClient } from './sdk.js';
import { VerityError } from '../errors.js';
import { isExplorerPath, registerExplorer } from './explorer-api.js';

// ---- errors ----

/** An answer in OpenAI's error shape, with its HTTP status. */
export class ApiError extends VerityError {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly param: string | null = null,
    override readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  override get httpStatus(): number {
    return this.status;
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export const errorBody = (e: ApiError): ErrorBody => ({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });

/**
 * What Node refuses before a request reaches the API — one too slow to arrive, headers too big,
 * bytes that are not HTTP — answered in OpenAI's error shape too, and the connection closed.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Socket, limits: ApiLimits): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const e =
    error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? new ApiError(408, `the request did not arrive within ${limits.receiveMs} ms`, 'invalid_request_error', null, 'request_timeout')
      : error.code === 'HPE_HEADER_OVERFLOW'
        ? new ApiError(431, `the request's headers are over ${limits.headerBytes} bytes`, 'invalid_request_error', null, 'headers_too_large')
        : new ApiError(400, 'malformed HTTP request', 'invalid_request_error', null, 'bad_request');
  if (!socket.writable) return void socket.destroy();
  const body = JSON.stringify(errorBody(e));
  socket.end(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  // end() only half-closes: a client that never closes its side would keep this socket (a file
  // descriptor) for good, nothing timing it out any more. It gets a moment to read the answer.
  setTimeout(() => socket.destroy(), Math.min(limits.receiveMs, 1_000)).unref();
}

const invalid = (message: string, param: string | null = null, code: string | null = null): ApiError => new ApiError(400, message, 'invalid_request_error', param, code);

/**
 * Any failure as the API answers it: a coordinator's refusal by its Code (docs/api.md, "Errors"),
 * Fastify's own (bad JSON, a body over the limit), the network not answering, or a bug (500,
 * without its details).
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof RefusedError) {
    const m = e.message;
    switch (e.code) {
      case 400:
        return /max_tokens/.test(m) ? invalid(m, 'max_tokens', 'context_length_exceeded') : invalid(m);
      case 402:
        return new ApiError(402, m, 'insufficient_quota', null, 'insufficient_quota');
      case 403:
        return new ApiError(403, m, 'permission_error');
      case 404:
        return /model/.test(m) ? new ApiError(404, m, 'invalid_request_error', 'model', 'model_not_found') : new ApiError(404, m, 'invalid_request_error', null, 'not_found');
      case 409:
        return new ApiError(409, m, 'invalid_request_error', null, 'conflict');
      case 413:
        return invalid(m, 'prompt', 'context_length_exceeded');
      case 503:
        return new ApiError(503, m, 'server_error', null, 'overloaded');
      case 504:
        return new ApiError(504, m, 'server_error', null, 'timeout');
      default:
        return new ApiError(502, `the coordinator refused (${e.code}): ${m}`, 'api_error', null, 'upstream_error');
    }
  }
  if (e instanceof AoClientError) return new ApiError(502, `the network did not answer: ${e.message.split('\n')[0]}`, 'api_error', null, 'network_error');
  const fastify = e as { statusCode?: number; code?: string; message?: string };
  if (typeof fastify?.statusCode === 'number' && fastify.statusCode >= 400 && fastify.statusCode < 500) {
    const status = fastify.statusCode;
    const message = String(fastify.message ?? 'bad request');
    if (status === 413) return new ApiError(413, message, 'invalid_request_error', null, 'request_too_large');
    if (status === 415) return new ApiError(415, `${message} (send Content-Type: application/json)`, 'invalid_request_error', null, 'unsupported_media_type');
    if (status === 400 && (/JSON/i.test(message) || fastify.code?.startsWith('FST_ERR_CTP') === true)) return invalid(`the body is not valid JSON: ${message}`, null, 'invalid_json');
    return new ApiError(status, message, 'invalid_request_error');
  }
  if (e instanceof VerityError) return new ApiError(e.httpStatus, e.message.split('\n')[0], e.httpStatus >= 500 ? 'server_error' : 'invalid_request_error');
  return new ApiError(500, 'internal error', 'api_error');
}

// ---- limits ----

export interface ApiLimits {
  /** Bytes of a request body (413 past it). */
  bodyBytes: number;
  /** Bytes of a request's headers (431 past it). */
  headerBytes: number;
  /** Milliseconds for a whole request (headers and body) to arrive (408 past it: a slow client holds nothing longer). */
  receiveMs: number;
  /** Messages of a chat completion. */
  messages: number;
  /** Requests in flight at once, all keys together (429 past it). */
  inFlight: number;
  /** Choices of one request (n). */
  n: number;
  /** Stop sequences, and the characters of each. */
  stops: number;
  stopChars: number;
}

export const DEFAULT_LIMITS: ApiLimits = { bodyBytes: 1 << 20, headerBytes: 16 * 1024, receiveMs: 10_000, messages: 256, inFlight: 32, n: 4, stops: 4, stopChars: 64 };

/** What the coordinator allows (its Params), checked here before any work. */
export interface NetworkLimits {
  maxTokens: number;
  maxPromptBytes: number;
}

/** The tokens asked for when a request names none (the coordinator's own default). */
export const DEFAULT_MAX_TOKENS = 128;

// ---- requests ----

export interface ApiModel {
  id: string;
  name: string;
  manifest: string;
  contextLength: number;
  tokenizerHash: string;
}

export interface GenerationRequest {
  /** The model as asked: its id or its name. */
  model: string;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  stop: string[];
  n: number;
  /** Server-sent events: the first answer as soon as the coordinator reports it, then the receipt. */
  stream: boolean;
  /** `verity.nodes`: the nodes the asserter is drawn from (the coordinator's Nodes tag; never the validators). */
  nodes?: string[];
}

export interface CompletionRequest extends GenerationRequest {
  prompt: string;
}

export interface ChatRequest extends GenerationRequest {
  messages: ChatMessage[];
}

const given = (o: Record<string, unknown>, key: string): boolean => Object.prototype.hasOwnProperty.call(o, key) && o[key] !== undefined && o[key] !== null;

function bodyObject(body: unknown): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw invalid('the request body must be a JSON object');
  return body as Record<string, unknown>;
}

/** Parameters of OpenAI's that the network does not do: refused unless given their neutral value. */
const UNSUPPORTED: [string, (v: unknown) => boolean][] = [
  ['suffix', (v) => v === ''],
  ['echo', (v) => v === false],
  ['logprobs', (v) => v === false || v === 0],
  ['top_logprobs', (v) => v === 0],
  ['best_of', (v) => v === 1],
  ['logit_bias', (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0],
  ['presence_penalty', (v) => v === 0],
  ['frequency_penalty', (v) => v === 0],
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['functions', (v) => Array.isArray(v) && v.length === 0],
  ['tool_choice', (v) => v === 'none' || v === 'auto'],
  ['response_format', (v) => typeof v === 'object' && v !== null && (v as { type?: unknown }).type === 'text'],
];

function number(o: Record<string, unknown>, key: string, ok: (n: number) => boolean, range: string): number | undefined {
  if (!given(o, key)) return undefined;
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw invalid(`${key} must be ${range}`, key, 'invalid_value');
  return v;
}

function parseGeneration(o: Record<string, unknown>, limits: ApiLimits, net: NetworkLimits, tokensKeys: string[]): GenerationRequest {
  if (given(o, 'stream') && typeof o.stream !== 'boolean') throw invalid('stream must be a boolean', 'stream', 'invalid_type');
  const stream = o.stream === true;
  if (typeof o.model !== 'string' || o.model === '') throw invalid('you must provide a model parameter (a model id or name of GET /v1/models)', 'model', 'missing_required_parameter');
  if (o.model.length > 200) throw invalid('model is at most 200 characters', 'model', 'invalid_value');
  for (const [key, neutral] of UNSUPPORTED) if (given(o, key) && !neutral(o[key])) throw invalid(`${key} is not supported by this API`, key, 'unsupported_parameter');
  let maxTokens: number | undefined;
  for (const key of tokensKeys) {
    const v = number(o, key, (n) => Number.isInteger(n) && n >= 1, 'a whole number ≥ 1');
    if (v === undefined) continue;
    if (v > net.maxTokens) throw invalid(`${key} is ${v}; the network serves at most ${net.maxTokens} tokens a request (Max-Tokens)`, key, 'context_length_exceeded');
    maxTokens = v;
  }
  const temperature = number(o, 'temperature', (n) => n >= 0 && n <= 2, 'a number in [0, 2]');
  const topP = number(o, 'top_p', (n) => n > 0 && n <= 1, 'a number in (0, 1]');
  const seed = number(o, 'seed', (n) => Number.isSafeInteger(n) && n >= 0, 'a whole number ≥ 0 (at most 2^53 − 1)');
  const n = number(o, 'n', (x) => Number.isInteger(x) && x >= 1 && x <= limits.n, `a whole number from 1 to ${limits.n}`) ?? 1;
  let stop: string[] = [];
  if (given(o, 'stop')) {
    stop = typeof o.stop === 'string' ? [o.stop] : Array.isArray(o.stop) ? (o.stop as unknown[]).map((s) => (typeof s === 'string' ? s : '')) : [''];
    if (!Array.isArray(o.stop) && typeof o.stop !== 'string') throw invalid('stop must be a string or a list of strings', 'stop', 'invalid_type');
    if (stop.length > limits.stops) throw invalid(`stop has at most ${limits.stops} sequences`, 'stop', 'invalid_value');
    if (stop.some((s) => s === '' || s.length > limits.stopChars)) throw invalid(`each stop sequence is a non-empty string of at most ${limits.stopChars} characters`, 'stop', 'invalid_value');
  }
  if (stream && n > 1) throw invalid('stream: true serves one choice (n = 1)', 'n', 'invalid_value');
  return { model: o.model, maxTokens: maxTokens ?? Math.min(DEFAULT_MAX_TOKENS, net.maxTokens), temperature, topP, seed, stop, n, stream, ...verityFields(o) };
}

/** The request's own `verity` object: `{ nodes?: [address, …] }` (at most 16). */
function verityFields(o: Record<string, unknown>): { nodes?: string[] } {
  if (!given(o, 'verity')) return {};
  const v = o.verity;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('verity must be an object', 'verity', 'invalid_type');
  const { nodes } = v as { nodes?: unknown };
  if (nodes === undefined) return {};
  if (!Array.isArray(nodes) || nodes.length === 0 || nodes.length > 16 || !nodes.every((a) => typeof a === 'string' && /^[A-Za-z0-9_-]{43}$/.test(a)))
    throw invalid('verity.nodes is a list of 1 to 16 node addresses (43 base64url characters)', 'verity.nodes', 'invalid_value');
  return { nodes: nodes as string[] };
}

const utf8Bytes = (s: string): number => Buffer.byteLength(s, 'utf8');

function checkPromptBytes(bytes: number, net: NetworkLimits, param: string): void {
  if (bytes > net.maxPromptBytes) throw invalid(`the prompt is ${bytes} bytes; the network takes at most ${net.maxPromptBytes} (Max-Prompt-Bytes)`, param, 'context_length_exceeded');
}

/** A POST /v1/completions body, checked; the prompt is one string (or a list of exactly one). */
export function parseCompletionRequest(body: unknown, limits: ApiLimits, net: NetworkLimits): CompletionRequest {
  const o = bodyObject(body);
  const generation = parseGeneration(o, limits, net, ['max_tokens']);
  let prompt = o.prompt;
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  if (prompt === undefined || prompt === null) throw invalid('you must provide a prompt', 'prompt', 'missing_required_parameter');
  if (typeof prompt !== 'string') throw invalid('prompt must be a string (token lists and batches of prompts are not served)', 'prompt', 'invalid_type');
  if (prompt === '') throw invalid('prompt must not be empty', 'prompt', 'invalid_value');
  checkPromptBytes(utf8Bytes(prompt), net, 'prompt');
  return { ...generation, prompt };
}

const ROLES: Record<string, ChatRole> = { system: 'system', developer: 'system', user: 'user', assistant: 'assistant' };

/** A POST /v1/chat/completions body, checked: messages of system (or developer), user and assistant, text content. */
export function parseChatRequest(body: unknown, limits: ApiLimits, net: NetworkLimits): ChatRequest {
  const o = bodyObject(body);
  const generation = parseGeneration(o, limits, net, ['max_tokens', 'max_completion_tokens']);
  if (!given(o, 'messages')) throw invalid('you must provide messages', 'messages', 'missing_required_parameter');
  if (!Array.isArray(o.messages) || o.messages.length === 0) throw invalid('messages must be a non-empty list', 'messages', 'invalid_type');
  if (o.messages.length > limits.messages) throw invalid(`messages holds at most ${limits.messages} messages`, 'messages', 'invalid_value');
  let bytes = 0;
  const messages = (o.messages as unknown[]).map((m, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw invalid(`${param} must be an object`, param, 'invalid_type');
    const { role, content } = m as { role?: unknown; content?: unknown };
    const r = typeof role === 'string' ? ROLES[role] : undefined;
    if (r === undefined || !Object.prototype.hasOwnProperty.call(ROLES, role as string)) throw invalid(`${param}.role must be system, developer, user or assistant`, `${param}.role`, 'invalid_value');
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content) && content.every((p) => p !== null && typeof p === 'object' && (p as { type?: unknown }).type === 'text' && typeof (p as { text?: unknown }).text === 'string'))
      text = content.map((p) => (p as { text: string }).text).join('');
    else throw invalid(`${param}.content must be a string or a list of text parts`, `${param}.content`, 'invalid_type');
    bytes += utf8Bytes(text);
    return { role: r, content: text };
  });
  // The template adds its markers; the rendered prompt is checked again once rendered.
  checkPromptBytes(bytes, net, 'messages');
  return { ...generation, messages };
}

/** The model a request names, by id or by name. */
export function findModel(models: ApiModel[], asked: string): ApiModel {
  const model = models.find((m) => m.id === asked) ?? models.find((m) => m.name === asked);
  if (!model) throw new ApiError(404, `the model '${asked.slice(0, 80)}' does not exist (GET /v1/models lists the network's)`, 'invalid_request_error', 'model', 'model_not_found');
  return model;
}

/** A request's max_tokens must leave its prompt a position in the model's context. */
export function checkContext(model: ApiModel, request: GenerationRequest): void {
  if (request.maxTokens >= model.contextLength) throw invalid(`max_tokens (${request.maxTokens}) leaves the prompt no room in the model's context of ${model.contextLength} tokens`, 'max_tokens', 'context_length_exceeded');
}

// ---- responses ----

export type VerityStatus = 'pending' | 'final' | 'disputed' | 'corrected';

export interface VerityInfo {
  task: string;
  model: string;
  coordinator: string;
  job_commitment: string | null;
  trace_root: string | null;
  node: string | null;
  status: VerityStatus;
  receipt: Receipt | null;
  /** Where to check it: this server's view of the task, and the command. */
  check: { url: string; command: string };
  /** The generated text as the receipt covers it, when a stop sequence cut the returned text. */
  full_text?: string;
}

export function statusOf(r: Pick<InferResult, 'status' | 'corrected'>): VerityStatus {
  if (r.corrected) return 'corrected';
  if (r.status === 'final') return 'final';
  if (r.status === 'disputed') return 'disputed';
  return 'pending';
}

/** The text up to the first stop sequence, and whether one cut it. */
export function applyStop(text: string, stops: string[]): { text: string; stopped: boolean } {
  let cut = -1;
  for (const s of stops) {
    const at = text.indexOf(s);
    if (at !== -1 && (cut === -1 || at < cut)) cut = at;
  }
  return cut === -1 ? { text, stopped: false } : { text: text.slice(0, cut), stopped: true };
}

export interface ResponseContext {
  coordinator: string;
  /** This server's URL (the check URLs are under it). */
  url: string;
  /** What `verity task <id>` needs besides the id, e.g. `--devnet <dir>`. */
  commandArgs?: string;
}

export function verityInfo(r: InferResult, model: ApiModel, ctx: ResponseContext, fullText?: string): VerityInfo {
  const receipt = r.receipt;
  return {
    task: r.task,
    model: model.id,
    coordinator: ctx.coordinator,
    job_commitment: receipt?.commitment ?? null,
    trace_root: receipt?.traceRoot ?? null,
    node: receipt?.node ?? null,
    status: statusOf(r),
    receipt,
    check: { url: `${ctx.url}/v1/verity/tasks/${r.task}`, command: `verity task ${r.task}${ctx.commandArgs ? ` ${ctx.commandArgs}` : ''}` },
    ...(fullText === undefined ? {} : { full_text: fullText }),
  };
}

interface Choice {
  text: string;
  finish_reason: 'stop' | 'length';
  verity: VerityInfo;
}

function choices(results: InferResult[], request: GenerationRequest, model: ApiModel, ctx: ResponseContext): Choice[] {
  return results.map((r) => {
    const { text, stopped } = applyStop(r.text, request.stop);
    const finish = stopped || r.usage.completion_tokens < request.maxTokens ? 'stop' : 'length';
    return { text, finish_reason: finish, verity: verityInfo(r, model, ctx, stopped ? r.text : undefined) };
  });
}

const createdOf = (r: InferResult): number => Math.floor((r.createdAt ?? Date.now()) / 1000);

function usageOf(results: InferResult[]): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  const prompt = results[0].usage.prompt_tokens;
  const completion = results.reduce((sum, r) => sum + r.usage.completion_tokens, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** The top-level verity object: the first choice's, and every choice's when there are several. */
function topVerity(cs: Choice[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...cs[0].verity, ...extra, ...(cs.length > 1 ? { choices: cs.map((c) => c.verity) } : {}) };
}

export function completionResponse(results: InferResult[], request: CompletionRequest, model: ApiModel, ctx: ResponseContext) {
  const cs = choices(results, request, model, ctx);
  return {
    id: `cmpl-${results[0].task}`,
    object: 'text_completion' as const,
    created: createdOf(results[0]),
    model: model.id,
    choices: cs.map((c, index) => ({ index, text: c.text, logprobs: null, finish_reason: c.finish_reason })),
    usage: usageOf(results),
    verity: topVerity(cs),
  };
}

export function chatResponse(results: InferResult[], request: ChatRequest, model: ApiModel, ctx: ResponseContext, template: 'model' | 'default') {
  const cs = choices(results, request, model, ctx);
  return {
    id: `chatcmpl-${results[0].task}`,
    object: 'chat.completion' as const,
    created: createdOf(results[0]),
    model: model.id,
    choices: cs.map((c, index) => ({ index, message: { role: 'assistant' as const, content: c.text, refusal: null }, logprobs: null, finish_reason: c.finish_reason })),
    usage: usageOf(results),
    verity: topVerity(cs, { chat_template: template }),
  };
}

// ---- streaming (server-sent events) ----

export type StreamKind = 'completion' | 'chat';

/**
 * The chunk that carries an answer's text as it arrived: the coordinator's first (pending) answer
 * — the whole text the asserting node committed to, before anyone checked it — or, when the final
 * one came first, that. Chat's first chunk also names the role.
 */
export function textChunk(kind: StreamKind, r: InferResult, model: ApiModel, text: string) {
  const head = { id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${r.task}`, object: kind === 'chat' ? ('chat.completion.chunk' as const) : ('text_completion' as const), created: createdOf(r), model: model.id };
  const choice = kind === 'chat' ? { index: 0, delta: { role: 'assistant' as const, content: text }, logprobs: null, finish_reason: null } : { index: 0, text, logprobs: null, finish_reason: null };
  return { ...head, choices: [choice], verity: { task: r.task, status: statusOf(r) } };
}

/**
 * The last chunk, once the task is final: no more text, the finish reason, usage and the whole
 * verity object with the receipt. When a dispute corrected the first answer, verity.status is
 * `corrected` and verity.text is the corrected text (what was streamed was the first answer).
 */
export function finalChunk(kind: StreamKind, r: InferResult, request: GenerationRequest, model: ApiModel, ctx: ResponseContext, streamed: string, extra: Record<string, unknown> = {}) {
  const [c] = choices([r], request, model, ctx);
  const head = { id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${r.task}`, object: kind === 'chat' ? ('chat.completion.chunk' as const) : ('text_completion' as const), created: createdOf(r), model: model.id };
  const choice = kind === 'chat' ? { index: 0, delta: {}, logprobs: null, finish_reason: c.finish_reason } : { index: 0, text: '', logprobs: null, finish_reason: c.finish_reason };
  return { ...head, choices: [choice], usage: usageOf([r]), verity: { ...c.verity, ...extra, ...(c.text === streamed ? {} : { text: c.text }) } };
}

/**
 * Of a text still growing, the part that can be sent now: up to the first stop sequence once one
 * appeared, and otherwise all but an end that may yet become one (the start of a stop sequence).
 */
export function sendable(text: string, stops: string[]): { text: string; stopped: boolean } {
  const cut = applyStop(text, stops);
  if (cut.stopped) return cut;
  let hold = 0;
  for (const s of stops) for (let n = Math.min(s.length - 1, text.length); n > hold; n--) if (text.endsWith(s.slice(0, n))) hold = n;
  return { text: text.slice(0, text.length - hold), stopped: false };
}

/** What the API takes from a node's token stream: it is a stranger's. */
export interface RelayLimits {
  /** Token events (the request's max_tokens, and a few for a flushed decoder). */
  events: number;
  /** Characters of text in all. */
  chars: number;
  /** Bytes of one SSE line. */
  lineBytes: number;
  /** How long to wait for the stream's headers. */
  connectMs: number;
}

/**
 * Where the relay reads a task's stream from a node's announced Stream-Url: `<url>/stream/<task>`,
 * and nothing else. The Stream-Url is a stranger's: one with a query, a fragment or credentials
 * (which could make the path anything at the host, or the task id a query value) is no stream.
 */
export function streamEndpoint(url: string, task: string): string | null {
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    return null;
  }
  if ((base.protocol !== 'http:' && base.protocol !== 'https:') || base.username !== '' || base.password !== '' || base.search !== '' || base.hash !== '' || /[?#]/.test(url)) return null;
  return `${base.origin}${base.pathname.replace(/\/+$/, '')}/stream/${encodeURIComponent(task)}`;
}

/**
 * Reads a node's token stream (`GET <url>/stream/<task>`, node/stream.ts) and calls onText with
 * each event's text, until its end event (resolves true), the stream breaking off or going past a
 * limit (false), or `signal`. Never throws.
 */
export async function relayNodeStream(url: string, task: string, onText: (text: string) => void, signal: AbortSignal, limits: RelayLimits): Promise<boolean> {
  const endpoint = streamEndpoint(url, task);
  if (endpoint === null) return false;
  // All the bytes it may send: every event at its longest (text JSON-escaped, the event's own
  // fields), and one line over; comments, blank lines and other events count too.
  const maxBytes = limits.chars * 6 + (limits.events + 2) * 256 + limits.lineBytes;
  let bytes = 0;
  const connect = new AbortController();
  const timer = setTimeout(() => connect.abort(), limits.connectMs);
  const abort = (): void => connect.abort();
  signal.addEventListener('abort', abort, { once: true });
  try {
    const res = await fetch(endpoint, { signal: connect.signal, headers: { accept: 'text/event-stream' }, redirect: 'error' });
    clearTimeout(timer);
    if (!res.ok || !res.body || !/^text\/event-stream/.test(res.headers.get('content-type') ?? '')) {
      await res.body?.cancel().catch(() => {});
      return false;
    }
    const decoder = new TextDecoder();
    let buffer = '';
    let event = '';
    let events = 0;
    let chars = 0;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      bytes += chunk.byteLength;
      if (bytes > maxBytes) return false;
      buffer += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (line === '') {
          event = '';
          continue;
        }
        if (line.startsWith('event:')) event = line.slice(6).trim();
        if (!line.startsWith('data:')) continue;
        if (event === 'end') return true;
        let data: unknown;
        try {
          data = JSON.parse(line.slice(5));
        } catch {
          return false;
        }
        const text = (data as { text?: unknown })?.text;
        if (typeof text !== 'string') return false;
        events++;
        chars += text.length;
        if (events > limits.events || chars > limits.chars) return false;
        onText(text);
      }
      if (buffer.length > limits.lineBytes) return false;
    }
    return false;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', abort);
    connect.abort();
  }
}

export const sseEvent = (data: unknown): string => `data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`;

export function modelsResponse(models: ApiModel[], coordinator: string) {
  return { object: 'list' as const, data: models.map((m) => modelObject(m, coordinator)) };
}

export function modelObject(m: ApiModel, coordinator: string) {
  return { id: m.id, object: 'model' as const, created: 0, owned_by: coordinator, verity: { name: m.name, manifest: m.manifest, context_length: m.contextLength, tokenizer_hash: m.tokenizerHash } };
}

// ---- keys ----

/**
 * A key file (docs/api.md): a JSON object from API key to a wallet — a path to a wallet file
 * (relative to the key file's folder) or the wallet's JWK inline.
 */
export function parseKeyFile(doc: unknown, baseDir: string, where = 'the key file'): Map<string, Wallet> {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new WalletError(`${where}: must be a JSON object from API key to a wallet file path or an inline wallet`);
  const keys = new Map<string, Wallet>();
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (!/^[\x21-\x7e]{8,256}$/.test(key)) throw new WalletError(`${where}: an API key is 8 to 256 printable characters without spaces`);
    const label = `${where}, key ${key.slice(0, 6)}…`;
    keys.set(key, typeof value === 'string' ? readWallet(resolve(baseDir, value)) : parseWallet(value, label));
  }
  if (keys.size === 0) throw new WalletError(`${where}: holds no keys`);
  return keys;
}

export function readKeyFile(path: string): Map<string, Wallet> {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new WalletError(`${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such key file' : 'not JSON'}`);
  }
  return parseKeyFile(doc, dirname(resolve(path)), path);
}

const keyHash = (key: string): string => createHash('sha256').update(key).digest('hex');

/** The wallet a request runs as: the key's (key mode), or the server's own (local mode: any key). */
export function authenticate(header: string | undefined, keys: Pick<Map<string, Wallet>, 'get'> | undefined, own: Wallet): Wallet {
  if (!keys) return own;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) throw new ApiError(401, 'you didn\'t provide an API key: send Authorization: Bearer <key>', 'invalid_request_error', null, 'missing_api_key');
  const wallet = keys.get(m[1]);
  if (!wallet) throw new ApiError(401, 'incorrect API key provided', 'invalid_request_error', null, 'invalid_api_key');
  return wallet;
}

// ---- the server ----

export interface ApiOptions {
  mu: string;
  cu: string;
  coordinator: string;
  token?: string;
  /** The server's own wallet: local mode's, and the one it reads the coordinator's models with. */
  wallet: Wallet;
  /** Key mode: API key → wallet (readKeyFile). Absent: local mode. */
  keys?: Map<string, Wallet>;
  /** Where the models' tokenizers are read from (chat templates need BOS and EOS). */
  store?: Store;
  /** Model id → the chat template the engine read from a local copy of that model (GGUF). */
  chatTemplates?: Map<string, string>;
  host?: string;
  port?: number;
  limits?: Partial<ApiLimits>;
  /** How long a request waits for its final answer (default 5 minutes). */
  timeoutMs?: number;
  /** What `verity task <id>` needs besides the id, printed in each answer's check. */
  commandArgs?: string;
}

export interface RunningApi {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** How long the coordinator's models and limits are kept before they are read again. */
const NETWORK_TTL_MS = 10_000;

export async function startApi(options: ApiOptions): Promise<RunningApi> {
  const limits: ApiLimits = { ...DEFAULT_LIMITS, ...options.limits };
  const clients = new Map<string, VerityClient>();
  const clientFor = (wallet: Wallet): VerityClient => {
    const address = walletAddress(wallet);
    let c = clients.get(address);
    if (!c) clients.set(address, (c = Verity.connect({ mu: options.mu, cu: options.cu, coordinator: options.coordinator, token: options.token, wallet })));
    return c;
  };
  // Keys are kept and looked up by their sha256, so a lookup's time says nothing of the keys' text.
  const hashed = options.keys && new Map([...options.keys].map(([k, w]) => [keyHash(k), w]));
  const lookup = hashed && { get: (key: string) => hashed.get(keyHash(key)) };
  const own = clientFor(options.wallet);
  // The server's own reads (Params, Nodes, the explorer's): one client for all of them.
  const ownAo = aoClient({ mu: options.mu, cu: options.cu, wallet: options.wallet });

  interface Network {
    at: number;
    models: ApiModel[];
    limits: NetworkLimits;
  }
  let network: Network | null = null;
  let reading: Promise<Network> | null = null;
  const networkNow = async (): Promise<Network> => {
    if (network && Date.now() - network.at < NETWORK_TTL_MS) return network;
    reading ??= (async (): Promise<Network> => {
      try {
        const models = (await own.models()) as unknown as ApiModel[];
        const params = await readParams();
        return (network = { at: Date.now(), models, limits: params });
      } finally {
        reading = null;
      }
    })();
    return reading;
  };
  const readParams = async (): Promise<NetworkLimits> => {
    const reply = expectReply(await ownAo.dryRun(options.coordinator, { tags: [{ name: 'Action', value: 'Params' }], from: own.address }), 'Params-Response');
    const p = JSON.parse(reply.data) as { maxTokens: number; maxPromptBytes: number };
    return { maxTokens: p.maxTokens, maxPromptBytes: p.maxPromptBytes };
  };

  // Chat: each model's tokenizer (for bos_token and eos_token) and template, read once.
  const chatModels = new Map<string, Promise<{ model: Model; template: 'model' | 'default' }>>();
  const chatModel = (m: ApiModel): Promise<{ model: Model; template: 'model' | 'default' }> => {
    let p = chatModels.get(m.id);
    if (!p) {
      const store = options.store;
      if (!store) throw new ApiError(503, 'this server has no store to read the model\'s tokenizer from (chat needs it)', 'server_error', null, 'no_store');
      p = readModelHeader(store, m.id, m.manifest).then((header) => {
        const own = options.chatTemplates?.get(m.id);
        const model = { file: `model ${m.id.slice(0, 12)}…`, tokenizer: header.tokenizer, chatTemplate: own ?? DEFAULT_CHAT_TEMPLATE } as unknown as Model;
        return { model, template: own === undefined ? ('default' as const) : ('model' as const) };
      });
      p.catch(() => chatModels.delete(m.id));
      chatModels.set(m.id, p);
    }
    return p;
  };

  let url = '';
  const ctx = (): ResponseContext => ({ coordinator: options.coordinator, url, commandArgs: options.commandArgs });
  const timeoutMs = options.timeoutMs ?? 300_000;

  const run = async (wallet: Wallet, prompt: string, model: ApiModel, request: GenerationRequest): Promise<InferResult[]> => {
    const client = clientFor(wallet);
    const results = await Promise.all(
      Array.from({ length: request.n }, (_, i) =>
        client.infer(prompt, { model: model.id, maxTokens: request.maxTokens, temperature: request.temperature, topP: request.topP, seed: (request.seed ?? 0) + i, nodes: request.nodes, timeoutMs }),
      ),
    );
    const failed = results.find((r) => r.status === 'failed');
    if (failed) throw new ApiError(502, `task ${failed.task} failed: the network had no valid result for it`, 'api_error', null, 'task_failed');
    return results;
  };

  // The token streams the nodes announced (Stream-Url on Register-Node), read for all requests at
  // most once a second when a lease names a node not seen yet, and every 10 s otherwise.
  let streamUrls = new Map<string, string>();
  let streamUrlsAt = 0;
  let readingStreamUrls: Promise<void> | null = null;
  const streamUrlOf = async (node: string): Promise<string | null> => {
    const age = Date.now() - streamUrlsAt;
    if ((!streamUrls.has(node) && age >= 1_000) || age >= NETWORK_TTL_MS) {
      readingStreamUrls ??= (async () => {
        try {
          const reply = expectReply(await ownAo.dryRun(options.coordinator, { tags: [{ name: 'Action', value: 'Nodes' }], from: own.address }), 'Nodes-Response');
          const nodes = JSON.parse(reply.data) as { address: string; streamUrl?: unknown }[];
          streamUrls = new Map(nodes.flatMap((n) => (typeof n.streamUrl === 'string' && /^https?:\/\//.test(n.streamUrl) ? [[n.address, n.streamUrl] as const] : [])));
        } finally {
          streamUrlsAt = Date.now();
          readingStreamUrls = null;
        }
      })();
      await readingStreamUrls.catch(() => {});
    }
    return streamUrls.get(node) ?? null;
  };

  /**
   * A streamed answer (docs/api.md "Streaming"). Once the coordinator names the node that holds
   * the lease, its token stream is relayed: each token a chunk as the node samples it. Without a
   * stream (none announced, none reachable), the coordinator's first answer is the one text chunk.
   * The final chunk carries the receipt, and says whether what was streamed is the final text
   * (verity.streamed_text_matches; verity.text when not). The SSE response starts with the first
   * text (a refusal before it is answered as a plain JSON error); a failure after it is an `error`
   * event, then the stream ends.
   */
  const stream = async (reply: FastifyReply, kind: StreamKind, wallet: Wallet, prompt: string, model: ApiModel, request: GenerationRequest, extra: Record<string, unknown> = {}): Promise<FastifyReply> => {
    const client = clientFor(wallet);
    let streamed: string | null = null;
    let head: InferResult | null = null;
    const begin = (r: InferResult): void => {
      if (streamed !== null) return;
      streamed = '';
      head = r;
      reply.hijack();
      // A client that goes away mid-stream must not become an unhandled 'error' event.
      reply.raw.on('error', () => {});
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    };
    const write = (r: InferResult, text: string): void => {
      begin(r);
      if (text === '' && streamed !== '') return;
      streamed += text;
      if (!reply.raw.destroyed) reply.raw.write(sseEvent(textChunk(kind, head!, model, text)));
    };
    // The relay from the node that holds the lease, from the moment it is drawn (the SDK's
    // onAssigned: no polling). It writes only while the coordinator's answer has not been written;
    // a lease drawn again before any text came (the first ran out) moves it to the new node.
    const relay = new AbortController();
    let task = '';
    let relayedFrom: string | null = null;
    let current: AbortController | null = null;
    let raw = '';
    let sentLength = 0;
    let relayStopped = false;
    let relaying: Promise<void> = Promise.resolve();
    const relayFrom = (node: string): void => {
      if (streamed !== null || relay.signal.aborted || node === relayedFrom) return;
      relayedFrom = node;
      raw = '';
      relayStopped = false;
      current?.abort();
      const mine = (current = new AbortController());
      relay.signal.addEventListener('abort', () => mine.abort(), { once: true });
      const placeholder: InferResult = { task, text: '', status: 'assigned', receipt: null, usage: { prompt_tokens: 0, completion_tokens: 0 }, corrected: false, createdAt: Date.now() };
      const onText = (text: string): void => {
        if (mine.signal.aborted || relayStopped) return;
        raw += text;
        const now = sendable(raw, request.stop);
        if (now.text.length > sentLength) {
          write(placeholder, now.text.slice(sentLength));
          sentLength = now.text.length;
        }
        relayStopped = now.stopped;
      };
      const limits = { events: request.maxTokens + 8, chars: request.maxTokens * 64 + 64, lineBytes: 64 * 1024, connectMs: 5_000 };
      relaying = (async () => {
        const url = await streamUrlOf(node);
        if (url && !mine.signal.aborted) await relayNodeStream(url, task, onText, mine.signal, limits);
      })().catch(() => {});
    };
    try {
      const r = await client.infer(prompt, {
        model: model.id,
        maxTokens: request.maxTokens,
        temperature: request.temperature,
        topP: request.topP,
        seed: request.seed ?? 0,
        nodes: request.nodes,
        timeoutMs,
        onAccepted: (id) => {
          task = id;
        },
        onAssigned: relayFrom,
        onAnswer: (answer) => {
          // Nothing relayed yet: the coordinator's answer is the stream, as without a node stream.
          if (streamed !== null) return;
          relay.abort();
          write(answer, applyStop(answer.text, request.stop).text);
        },
      });
      relay.abort();
      await relaying;
      if (r.status === 'failed') throw new ApiError(502, `task ${r.task} failed: the network had no valid result for it`, 'api_error', null, 'task_failed');
      const final = applyStop(r.text, request.stop).text;
      // What was relayed, when the stream broke off before its end, is completed from the result.
      if (streamed === null) write(r, final);
      else if (streamed !== final && final.startsWith(streamed)) write(r, final.slice((streamed as string).length));
      const fromNode = relayedFrom === null || r.receipt === null || r.receipt.node === relayedFrom;
      const matches = streamed === final && fromNode;
      const verity = { ...extra, streamed_text_matches: matches, ...(matches ? {} : { text: final }) };
      if (!reply.raw.destroyed) reply.raw.end(sseEvent(finalChunk(kind, r, request, model, ctx(), matches ? streamed! : '\u0000', verity)) + sseEvent('[DONE]'));
    } catch (e) {
      relay.abort();
      if (streamed === null) throw e;
      if (!reply.raw.destroyed) reply.raw.end(sseEvent(errorBody(toApiError(e))));
    }
    return reply;
  };

  const app = Fastify({
    logger: false,
    bodyLimit: limits.bodyBytes,
    serverFactory: (handler: (req: IncomingMessage, res: ServerResponse) => void) =>
      // Timeouts are checked every 250 ms (Node's default is 30 s, past most of a slow client's hold).
      createServer({ maxHeaderSize: limits.headerBytes, requestTimeout: limits.receiveMs, headersTimeout: limits.receiveMs, connectionsCheckingInterval: 250 }, handler),
    clientErrorHandler: (error: NodeJS.ErrnoException, socket: Socket) => answerClientError(error, socket, limits),
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;
  const wallets = new WeakMap<FastifyRequest, Wallet>();
  let inFlight = 0;

  app.setErrorHandler((error: unknown, _request: FastifyRequest, reply: FastifyReply) => {
    const e = toApiError(error);
    void reply.status(e.status).send(errorBody(e));
  });
  app.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) => {
    void reply.status(404).send(errorBody(new ApiError(404, `no such endpoint: ${request.method} ${request.url.split('?')[0].slice(0, 100)}`, 'invalid_request_error', null, 'unknown_url')));
  });
  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    // The explorer (page and read-only JSON) needs no key.
    if (isExplorerPath(request.method, request.url)) return;
    wallets.set(request, authenticate(request.headers.authorization, lookup, options.wallet));
    if (request.method === 'POST') {
      if (inFlight >= limits.inFlight) throw new ApiError(429, `this server has ${limits.inFlight} requests in flight; try again shortly`, 'rate_limit_exceeded', null, 'rate_limit_exceeded');
      inFlight++;
      reply.raw.once('close', () => inFlight--);
    }
  });

  app.get('/v1/models', async () => modelsResponse((await networkNow()).models, options.coordinator));
  app.get('/v1/models/:id', async (request: FastifyRequest) => {
    const { id } = request.params as { id: string };
    return modelObject(findModel((await networkNow()).models, id), options.coordinator);
  });
  app.get('/v1/verity/tasks/:id', async (request: FastifyRequest) => {
    const { id } = request.params as { id: string };
    if (!/^[A-Za-z0-9_-]{43}$/.test(id)) throw new ApiError(400, 'a task id is 43 base64url characters', 'invalid_request_error', 'id', 'invalid_value');
    const view = await clientFor(wallets.get(request)!).task(id);
    // The answer's status as every verity object names it (pending, final, disputed, corrected).
    return { ...view, verity_status: statusOf(view) };
  });
  app.post('/v1/completions', async (request: FastifyRequest, reply: FastifyReply) => {
    const net = await networkNow();
    const req = parseCompletionRequest(request.body, limits, net.limits);
    const model = findModel(net.models, req.model);
    checkContext(model, req);
    if (req.stream) return stream(reply, 'completion', wallets.get(request)!, req.prompt, model, req);
    return completionResponse(await run(wallets.get(request)!, req.prompt, model, req), req, model, ctx());
  });
  app.post('/v1/chat/completions', async (request: FastifyRequest, reply: FastifyReply) => {
    const net = await networkNow();
    const req = parseChatRequest(request.body, limits, net.limits);
    const model = findModel(net.models, req.model);
    checkContext(model, req);
    const chat = await chatModel(model);
    let prompt: string;
    try {
      prompt = renderChat(chat.model, req.messages);
    } catch (e) {
      throw invalid(`the conversation does not render with the model's chat template: ${(e as Error).message}`, 'messages', 'invalid_value');
    }
    checkPromptBytes(utf8Bytes(prompt), net.limits, 'messages');
    // ChatML's end-of-turn marker ends the answer when the default template is used (the model may write it as text).
    const answered = chat.template === 'default' ? { ...req, stop: [...req.stop, '<|im_end|>'] } : req;
    if (req.stream) return stream(reply, 'chat', wallets.get(request)!, prompt, model, answered, { chat_template: chat.template });
    return chatResponse(await run(wallets.get(request)!, prompt, model, req), answered, model, ctx(), chat.template);
  });

  registerExplorer(app, { cu: options.cu, coordinator: options.coordinator, from: own.address, ao: ownAo, store: options.store });

  const address = await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 0 });
  const port = (app.server.address() as { port: number }).port;
  url = address.startsWith('http') ? `http://${options.host ?? '127.0.0.1'}:${port}` : address;
  return {
    url,
    port,
    async close() {
      await app.close();
    },
  };
}

