// The Verity explorer: tasks with their timeline, a task's prompt, text, receipt and disputes
// round by round, the nodes, the models and the coordinator's recent messages, polled every 2 s
// from the API server's /v1/verity/… endpoints (src/client/explorer-api.ts).
import { h, render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import htm from 'htm';
import { verifyTrace, type BrowserVerdict, type Receipt } from './verify.js';
import './style.css';

const html = htm.bind(h);
const POLL_MS = 2_000;

interface Participant { node: string; role: string; start: number; end: number; status: string; locked: string; traceRoot?: string }
interface DisputeRound { round: number; interval: [number, number]; points: number[]; values: { asserter: string[]; challenger: string[] }; next: [number, number] }
interface Dispute {
  asserter: string; challenger: string; steps: number; phase: string; interval: [number, number]; rounds: DisputeRound[];
  proof: { step: number; kind: string; by: string } | null; outcome: { winner: string | null; reason: string } | null; openedAt: number; endedAt: number | null;
}
interface TaskView {
  task: string; status: string; model: string; result: string | null; usage: { prompt_tokens: number; completion_tokens: number };
  receipt: Receipt | null; audited: boolean; corrected: boolean; participants: Participant[]; disputes: Dispute[];
  windowEnd: number | null; createdAt: number; endedAt: number | null;
}
interface TaskEntry { task: string; prompt: string | null; view: TaskView | null }
interface NodeView { address: string; did: string; models: string[]; reputation: number; completed: number; expired: number; audited: number; disputesLost: number; stake: string; locked: string; active: boolean; lastSeen: number }
interface ModelView { id: string; name: string; contextLength: number; tokenizerHash: string; manifest?: string }
interface Message { action: string; target: string; task: string | null; status: string | null; code: string | null; message: string | null }
interface Data { tasks: TaskEntry[]; total: number; nodes: NodeView[]; models: ModelView[]; messages: Message[]; error: string | null; at: number }

const get = async <T,>(path: string): Promise<T> => {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
};

async function load(): Promise<Omit<Data, 'error' | 'at'>> {
  const [t, n, m, msg] = await Promise.all([
    get<{ tasks: TaskEntry[]; total: number }>('/v1/verity/tasks?limit=50'),
    get<{ nodes: NodeView[] }>('/v1/verity/nodes'),
    get<{ models: ModelView[] }>('/v1/verity/models'),
    get<{ messages: Message[] }>('/v1/verity/messages'),
  ]);
  return { tasks: t.tasks, total: t.total, nodes: n.nodes, models: m.models, messages: msg.messages };
}

const short = (s: string | null | undefined, n = 8): string => (!s ? '—' : s.length > 2 * n + 1 ? `${s.slice(0, n)}…${s.slice(-4)}` : s);
const time = (ms: number | null | undefined): string => (ms ? new Date(ms).toLocaleTimeString() : '');

type StepState = 'done' | 'now' | 'todo' | 'skip' | 'bad';
interface Step { name: string; state: StepState; at?: number | null; note?: string }

/** assigned → submitted → sampled → final, or challenged → disputed → resolved (from status, participants, disputes). */
export function timeline(v: TaskView): Step[] {
  const p = v.participants;
  const firstStart = p.length ? Math.min(...p.map((x) => x.start)) : null;
  const submitted = p.some((x) => ['committed', 'revealed', 'released', 'slashed'].includes(x.status));
  const revealed = v.receipt !== null;
  const disputed = v.disputes.length > 0;
  const resolved = disputed && v.disputes.every((d) => d.outcome !== null);
  const final = v.status === 'final';
  const failed = v.status === 'failed';
  const steps: Step[] = [
    { name: 'assigned', state: p.length ? 'done' : 'now', at: firstStart || v.createdAt },
    { name: 'submitted', state: submitted ? 'done' : p.length ? 'now' : 'todo' },
    { name: 'sampled', state: v.audited ? 'done' : v.status === 'auditing' ? 'now' : revealed || final ? 'skip' : 'todo', note: v.audited ? 'audited' : revealed || final ? 'not sampled' : '' },
    { name: 'revealed', state: revealed ? 'done' : v.status === 'revealing' ? 'now' : 'todo' },
  ];
  if (disputed) {
    const d = v.disputes[v.disputes.length - 1];
    steps.push({ name: 'challenged', state: 'done', at: d.openedAt });
    steps.push({ name: 'disputed', state: resolved ? 'done' : 'now', note: `${v.disputes.reduce((n, x) => n + x.rounds.length, 0)} rounds` });
    steps.push({ name: 'resolved', state: resolved ? 'done' : 'todo', at: d.endedAt, note: d.outcome ? (d.outcome.winner === d.challenger ? 'challenger won' : d.outcome.winner === d.asserter ? 'asserter won' : 'no winner') : '' });
  } else if (v.status === 'challengeable') {
    steps.push({ name: 'challenge window', state: 'now', note: v.windowEnd ? `until ${time(v.windowEnd)}` : '' });
  }
  steps.push({ name: failed ? 'failed' : 'final', state: failed ? 'bad' : final ? 'done' : 'todo', at: v.endedAt, note: v.corrected ? 'corrected' : '' });
  return steps;
}

function Timeline({ view }: { view: TaskView }) {
  return html`<ol class="timeline">${timeline(view).map(
    (s) => html`<li class=${`step ${s.state}`} data-step=${s.name}><b>${s.name}</b>${s.note ? html` <small>${s.note}</small>` : ''}${s.at ? html` <small>${time(s.at)}</small>` : ''}</li>`,
  )}</ol>`;
}

function VerifyButton({ receipt }: { receipt: Receipt }) {
  const [state, setState] = useState<{ busy: boolean; verdict: BrowserVerdict | null; error: string | null }>({ busy: false, verdict: null, error: null });
  useEffect(() => setState({ busy: false, verdict: null, error: null }), [receipt.traceRoot]);
  const run = async () => {
    setState({ busy: true, verdict: null, error: null });
    try {
      const res = await fetch(`/v1/verity/items/${receipt.trace}`);
      if (!res.ok) throw new Error(`the trace item: HTTP ${res.status}`);
      setState({ busy: false, verdict: await verifyTrace(receipt, await res.text()), error: null });
    } catch (e) {
      setState({ busy: false, verdict: null, error: String((e as Error).message ?? e) });
    }
  };
  const v = state.verdict;
  return html`<div class="verify">
    <button id="verify" onClick=${run} disabled=${state.busy}>${state.busy ? 'Verifying…' : 'Verify in your browser'}</button>
    ${v ? html`<span class=${v.ok ? 'ok verdict' : 'bad verdict'} id="verdict">${v.summary}</span> <small>${v.leaves} leaves, SHA-256 by WebCrypto</small>` : ''}
    ${state.error ? html`<span class="bad verdict" id="verdict">cannot check: ${state.error}</span>` : ''}
  </div>`;
}

function Disputes({ view }: { view: TaskView }) {
  if (!view.disputes.length) return html`<p class="muted">No disputes.</p>`;
  return html`${view.disputes.map(
    (d, i) => html`<div class="dispute" data-dispute=${i}>
      <h4>Dispute ${i + 1}: ${d.phase === 'done' ? 'resolved' : d.phase} ${d.outcome ? html`— <span class="outcome">winner ${d.outcome.winner === d.challenger ? 'challenger' : d.outcome.winner === d.asserter ? 'asserter' : 'none'}</span> <small>(${d.outcome.reason})</small>` : ''}</h4>
      <p>asserter <code>${short(d.asserter)}</code> · challenger <code>${short(d.challenger)}</code> · ${d.steps} steps · opened ${time(d.openedAt)}${d.endedAt ? ` · ended ${time(d.endedAt)}` : ''}</p>
      <table><thead><tr><th>round</th><th>interval</th><th>points</th><th>agree</th><th>next</th></tr></thead><tbody>
      ${d.rounds.map((r) => html`<tr><td>${r.round}</td><td>${r.interval.join('–')}</td><td>${r.points.join(', ')}</td><td>${r.points.map((_, k) => (r.values.asserter[k] === r.values.challenger[k] ? '=' : '≠')).join(' ')}</td><td>${r.next.join('–')}</td></tr>`)}
      </tbody></table>
      ${d.proof ? html`<p>one-step proof: step ${d.proof.step} (${d.proof.kind}) by <code>${short(d.proof.by)}</code></p>` : ''}
    </div>`,
  )}`;
}

function TaskDetail({ entry }: { entry: TaskEntry }) {
  const v = entry.view;
  if (!v) return html`<section class="card"><h3>Task <code>${entry.task}</code></h3><p class="muted">No view yet.</p></section>`;
  return html`<section class="card" id="task-detail" data-task=${v.task} data-status=${v.status}>
    <h3>Task <code>${v.task}</code> <span class=${`badge ${v.status}`}>${v.status}</span>${v.corrected ? html` <span class="badge corrected">corrected</span>` : ''}</h3>
    <${Timeline} view=${v} />
    <dl>
      <dt>prompt</dt><dd><pre>${entry.prompt ?? '(not in the scanned messages)'}</pre></dd>
      <dt>text</dt><dd><pre id="task-text">${v.result ?? '(pending)'}</pre></dd>
      <dt>usage</dt><dd>${v.usage.prompt_tokens} prompt + ${v.usage.completion_tokens} completion tokens · model <code>${short(v.model)}</code></dd>
    </dl>
    <h4>Receipt</h4>
    ${v.receipt ? html`<table class="kv"><tbody>${Object.entries(v.receipt).map(([k, x]) => html`<tr><th>${k}</th><td><code>${x}</code></td></tr>`)}</tbody></table><${VerifyButton} receipt=${v.receipt} />` : html`<p class="muted">No receipt yet.</p>`}
    <h4>Participants</h4>
    <table><thead><tr><th>node</th><th>role</th><th>status</th><th>locked</th><th>trace root</th></tr></thead><tbody>
    ${v.participants.map((p) => html`<tr><td><code>${short(p.node)}</code></td><td>${p.role}</td><td>${p.status}</td><td>${p.locked}</td><td><code>${short(p.traceRoot)}</code></td></tr>`)}
    </tbody></table>
    <h4>Disputes</h4>
    <${Disputes} view=${v} />
  </section>`;
}

function App() {
  const [data, setData] = useState<Data>({ tasks: [], total: 0, nodes: [], models: [], messages: [], error: null, at: 0 });
  const [selected, setSelected] = useState<string | null>(location.hash.startsWith('#task=') ? location.hash.slice(6) : null);
  useEffect(() => {
    let stop = false;
    const tick = async () => {
      try {
        const d = await load();
        if (!stop) setData({ ...d, error: null, at: Date.now() });
      } catch (e) {
        if (!stop) setData((old) => ({ ...old, error: String((e as Error).message ?? e) }));
      }
      if (!stop) timer = setTimeout(tick, POLL_MS);
    };
    let timer = setTimeout(tick, 0);
    const onHash = () => setSelected(location.hash.startsWith('#task=') ? location.hash.slice(6) : null);
    addEventListener('hashchange', onHash);
    return () => {
      stop = true;
      clearTimeout(timer);
      removeEventListener('hashchange', onHash);
    };
  }, []);
  const entry = data.tasks.find((t) => t.task === selected);
  return html`<header><h1>Verity explorer</h1><span class="muted" id="updated">${data.at ? `updated ${time(data.at)} · polling every ${POLL_MS / 1000} s` : 'loading…'}</span>${data.error ? html` <span class="bad">${data.error}</span>` : ''}</header>
  <main>
    <section class="card"><h2>Tasks <small class="muted">${data.total} in the newest messages</small></h2>
      <table id="tasks"><thead><tr><th>task</th><th>status</th><th>node</th><th>tokens</th><th>disputes</th><th>created</th></tr></thead><tbody>
      ${data.tasks.map((t) => html`<tr class=${t.task === selected ? 'selected' : ''} data-task=${t.task} data-status=${t.view?.status ?? ''} data-disputes=${t.view?.disputes.length ?? 0} onClick=${() => (location.hash = `task=${t.task}`)}>
        <td><a href=${`#task=${t.task}`}><code>${short(t.task)}</code></a></td><td><span class=${`badge ${t.view?.status ?? ''}`}>${t.view?.status ?? '?'}</span>${t.view?.corrected ? ' corrected' : ''}</td>
        <td><code>${short(t.view?.receipt?.node)}</code></td><td>${t.view?.usage.completion_tokens ?? ''}</td><td>${t.view?.disputes.length ? `${t.view.disputes.length} (${t.view.disputes.every((d) => d.outcome) ? 'resolved' : 'open'})` : ''}</td><td>${time(t.view?.createdAt)}</td></tr>`)}
      </tbody></table>
    </section>
    ${entry ? html`<${TaskDetail} entry=${entry} />` : selected ? html`<section class="card"><p class="muted">Task ${selected} is not among the newest tasks (yet).</p></section>` : ''}
    <section class="card"><h2>Nodes</h2>
      <table id="nodes"><thead><tr><th>address</th><th>DID</th><th>stake</th><th>locked</th><th>reputation</th><th>served</th><th>audited</th><th>slashed</th><th>active</th></tr></thead><tbody>
      ${data.nodes.map((n) => html`<tr data-node=${n.address}><td><code>${short(n.address)}</code></td><td><code title=${n.did}>${short(n.did, 14)}</code></td><td>${n.stake}</td><td>${n.locked}</td><td>${n.reputation}</td><td>${n.completed}</td><td>${n.audited}</td><td>${n.disputesLost}</td><td>${n.active ? 'yes' : 'no'}</td></tr>`)}
      </tbody></table>
    </section>
    <section class="card"><h2>Models</h2>
      <table id="models"><thead><tr><th>name</th><th>id</th><th>context</th><th>tokenizer</th></tr></thead><tbody>
      ${data.models.map((m) => html`<tr><td>${m.name}</td><td><code title=${m.id}>${short(m.id, 12)}</code></td><td>${m.contextLength}</td><td><code>${short(m.tokenizerHash)}</code></td></tr>`)}
      </tbody></table>
    </section>
    <section class="card"><h2>Recent messages</h2>
      <table id="messages"><thead><tr><th>action</th><th>to</th><th>task</th><th>status</th></tr></thead><tbody>
      ${data.messages.slice(0, 30).map((m) => html`<tr><td>${m.action}</td><td><code>${short(m.target)}</code></td><td><code>${short(m.task)}</code></td><td>${m.status ?? ''}${m.code ? ` ${m.code} ${m.message ?? ''}` : ''}</td></tr>`)}
      </tbody></table>
    </section>
  </main>`;
}

const root = document.getElementById('app')!;
root.textContent = '';
render(html`<${App} />`, root);
