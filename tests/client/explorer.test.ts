// The explorer (docs/explorer.md): the feed scan and the static-file guard on their own, then one
// devnet (3 nodes, one wrong-token) serving the API with the page at /explorer/, driven end to end
// in headless Chromium: a final task verifies in the browser, and the liar's challenged task shows
// its dispute resolved round by round. Screenshots go to test-results/explorer/*.png.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startDevnet } from '../../src/client/devnet.js';
import { isExplorerPath, scanFeed, staticFile } from '../../src/client/explorer-api.js';
import { Verity, type TaskView, type VerityClient } from '../../src/client/sdk.js';
import { eventually, projectRoot, runCli, withTempDir } from '../helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const built = join(projectRoot, 'dist', 'explorer');
const shots = join(projectRoot, 'test-results', 'explorer');

test('scanFeed: newest first, a task once, its last Infer-Response and its prompt; bounded', () => {
  const id = (c: string): string => c.repeat(43);
  const msg = (action: string, task: string, data = '', extra: Record<string, string> = {}) => ({
    Target: 'T'.repeat(43), Data: data, Tags: [{ name: 'Action', value: action }, { name: 'Task', value: task }, ...Object.entries(extra).map(([name, value]) => ({ name, value }))],
  });
  // Newest result first, as a DESC page lists them.
  const nodes = [
    { Messages: [msg('Infer-Response', id('a'), JSON.stringify({ task: id('a'), status: 'final' }), { Status: 'final' })] },
    { Messages: [msg('Infer-Response', id('a'), JSON.stringify({ task: id('a'), status: 'challengeable' }), { Status: 'pending' })] },
    { Messages: [msg('Infer-Accepted', id('b')), msg('Task-Assigned', id('a'), JSON.stringify({ prompt: 'Once' }))] },
    { Messages: [msg('Infer-Accepted', id('c'))] },
  ];
  const s = scanFeed(nodes, 2, 3);
  assert.deepEqual(s.tasks.map((t) => t.task), [id('a'), id('b')]);
  assert.equal(s.tasks[0].last!.status, 'final');
  assert.equal(s.tasks[0].prompt, 'Once');
  assert.equal(s.messages.length, 3);
  assert.equal(s.messages[0].action, 'Infer-Response');
});

test('staticFile: files under the root only; isExplorerPath: the page and read-only JSON', () => {
  const root = join(projectRoot, 'tests');
  assert.equal(staticFile(root, 'client/explorer.test.ts'), join(root, 'client', 'explorer.test.ts'));
  for (const bad of ['../package.json', '..%2fpackage.json', 'client/../../package.json', '%2e%2e/package.json', '.git/config', 'x\0y', '%zz', 'client']) assert.equal(staticFile(root, bad), null, bad);
  assert.equal(isExplorerPath('GET', '/explorer/'), true);
  assert.equal(isExplorerPath('GET', '/v1/verity/tasks?limit=5'), true);
  assert.equal(isExplorerPath('GET', '/v1/verity/items/abc'), true);
  assert.equal(isExplorerPath('GET', '/v1/verity/tasks/abc'), false);
  assert.equal(isExplorerPath('POST', '/v1/verity/tasks'), false);
  assert.equal(isExplorerPath('GET', '/v1/models'), false);
});


const revealed = (verity: VerityClient, task: string): Promise<TaskView> => eventually(`task ${task}'s receipt`, async () => {
  const v = await verity.task(task);
  if (v.status === 'failed') throw new Error(`task ${task} failed`);
  return v.receipt ? v : null;
});

test('the explorer in headless Chromium: a final task verifies in the browser, a resolved dispute round by round', { timeout: 400_000 }, () =>
  withTempDir(async (dir) => {
    const install = spawnSync('sh', [join(projectRoot, 'scripts', 'install-chromium.sh')], { encoding: 'utf8', timeout: 300_000, maxBuffer: 64 * 1024 * 1024 });
    const said = `${install.stdout ?? ''}${install.stderr ?? ''}${install.error ? `\n${install.error.message}` : ''}`;
    // What the install did, in the test's output (an install that went wrong is then visible in CI's log).
    process.stderr.write(said.split('\n').filter((l) => l.startsWith('install-chromium') || /^E:|error/i.test(l)).slice(-20).map((l) => `# ${l}\n`).join(''));
    assert.ok(install.status === 0 && existsSync(CHROMIUM), `headless Chromium is needed at ${CHROMIUM} and scripts/install-chromium.sh could not install it (status ${install.status}, signal ${install.signal}):\n${said.slice(-4000)}`);
    // Playwright reads the user's home directory when it loads (for Chrome's profile folders): a
    // user with no home (a uid without a passwd entry, no HOME) makes the import throw, so such a
    // user gets the temporary folder as HOME, and the import happens here, where a failure names this test.
    try {
      homedir();
    } catch {
      process.env.HOME = dir;
    }
    const { chromium } = await import('playwright-core');
    assert.ok(existsSync(join(built, 'index.html')), `the explorer is not built at ${built}: run npm run build (or npm run build:explorer)`);

    const net = join(dir, 'net');
    const devnet = await startDevnet({
      dir: net,
      nodes: 3,
      // Unaudited; a window long enough to challenge in, short enough for the honest task to end.
      params: { 'Audit-Ppm': '0', 'Compute-Cost-Per-Token': '0', 'Challenge-Window-Ms': '45000' },
      strategies: [{ strategy: 'wrong-token' }],
      heartbeatMs: 500,
      api: { port: 0 },
      log: () => {},
    });
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    try {
      const base = devnet.api!.url;
      const liar = devnet.nodes[0].address;
      const honestNode = devnet.nodes[1].address;
      const verity = Verity.connect({ ...devnet.info, wallet: devnet.user });
      const options = { maxTokens: 24, temperature: 0, wait: 'pending' as const, timeoutMs: 120_000 };

      // The page and its files, with their content types; nothing outside dist/explorer.
      const index = await fetch(`${base}/explorer/`);
      assert.equal(index.status, 200);
      assert.match(index.headers.get('content-type') ?? '', /^text\/html/);
      const script = /src="(\/explorer\/assets\/[^"]+\.js)"/.exec(await index.text())?.[1];
      assert.ok(script, 'index.html loads a bundled script');
      assert.match((await fetch(`${base}${script}`)).headers.get('content-type') ?? '', /^text\/javascript/);
      assert.equal((await fetch(`${base}/explorer`, { redirect: 'manual' })).status, 301);
      for (const bad of ['/explorer/..%2f..%2fpackage.json', '/explorer/%2e%2e/%2e%2e/package.json', '/explorer/nope.js']) assert.equal((await fetch(`${base}${bad}`)).status, 404, bad);
      assert.equal((await fetch(`${base}/v1/verity/items/not-an-id`)).status, 400);

      const honest = await verity.infer('Once upon a time', { ...options, nodes: [honestNode] });
      await revealed(verity, honest.task);
      const lie = await verity.infer('Once upon a time', { ...options, nodes: [liar] });
      await revealed(verity, lie.task);
      const challengerWallet = join(net, 'wallets', 'node-3.json');
      const challenged = await runCli(['verify', lie.task, '--devnet', net, '--json', '--challenge', '--wallet', challengerWallet, '--wait-ms', '120000'], 180_000);
      const c = (JSON.parse(challenged.stdout.toString()) as { challenge: { opened: boolean; winner: string } }).challenge;
      assert.equal(c.winner, 'challenger', challenged.stderr);
      const final = await eventually('the honest task to be final', async () => ((await verity.task(honest.task)).status === 'final' ? true : null));
      assert.ok(final);

      // The JSON the page reads.
      const list = (await (await fetch(`${base}/v1/verity/tasks`)).json()) as { tasks: { task: string; view: TaskView | null; prompt: string | null }[] };
      const listedHonest = list.tasks.find((t) => t.task === honest.task);
      assert.equal(listedHonest?.view?.status, 'final');
      assert.equal(listedHonest?.prompt, 'Once upon a time');
      const listedLie = list.tasks.find((t) => t.task === lie.task);
      assert.equal(listedLie?.view?.disputes.length, 1);
      const nodes = (await (await fetch(`${base}/v1/verity/nodes`)).json()) as { nodes: { address: string }[] };
      assert.equal(nodes.nodes.length, 3);

      mkdirSync(shots, { recursive: true });
      const saved: string[] = [];
      const shot = async (name: string) => {
        const path = join(shots, `${name}.png`);
        await page.screenshot({ path, fullPage: true });
        saved.push(path);
      };
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(String(e)));
      await page.goto(`${base}/explorer/`);
      await page.waitForSelector(`#tasks tr[data-task="${honest.task}"][data-status="final"]`, { timeout: 30_000 });
      await page.waitForSelector('#nodes tbody tr:nth-child(3)', { timeout: 10_000 });
      await page.waitForSelector('#models tbody tr', { timeout: 10_000 });
      await shot('overview');

      // The final task: its timeline, text and receipt; verify in the browser.
      await page.click(`#tasks tr[data-task="${honest.task}"]`);
      await page.waitForSelector(`#task-detail[data-task="${honest.task}"]`);
      assert.equal(await page.textContent('#task-text'), listedHonest!.view!.result);
      await page.waitForSelector('#task-detail .step.done[data-step="final"]');
      await page.click('#verify');
      await page.waitForSelector('#verdict', { timeout: 30_000 });
      assert.equal(await page.textContent('#verdict'), 'verified: root matches');
      await shot('final-task');
      // A trace item with one leaf changed is a mismatch (the page re-hashes, it does not trust the stored root).
      await page.route('**/v1/verity/items/*', async (route) => {
        const res = await route.fetch();
        const doc = JSON.parse(await res.text()) as { leaves: string[] };
        doc.leaves[0] = 'ab'.repeat(32);
        await route.fulfill({ response: res, body: JSON.stringify(doc) });
      });
      await page.reload();
      await page.waitForSelector(`#task-detail[data-task="${honest.task}"]`, { timeout: 30_000 });
      await page.click('#verify');
      await page.waitForSelector('#verdict', { timeout: 30_000 });
      assert.match((await page.textContent('#verdict')) ?? '', /^mismatch: the leaves chain to/);
      await shot('tampered');
      await page.unroute('**/v1/verity/items/*');

      // The liar's task: challenged, disputed, resolved for the challenger; its corrected receipt verifies.
      await page.click(`#tasks tr[data-task="${lie.task}"]`);
      await page.waitForSelector(`#task-detail[data-task="${lie.task}"] .dispute`);
      await page.waitForSelector('#task-detail .step.done[data-step="resolved"]');
      assert.match((await page.textContent('#task-detail .dispute h4')) ?? '', /resolved.*winner challenger/);
      assert.ok((await page.$$('#task-detail .dispute tbody tr')).length >= 1, 'the dispute shows its rounds');
      await page.click('#verify');
      await page.waitForSelector('#verdict', { timeout: 30_000 });
      assert.equal(await page.textContent('#verdict'), 'verified: root matches');
      await shot('dispute');
      assert.deepEqual(errors, []);
      for (const p of saved) console.log(`screenshot: ${p}`);
    } finally {
      await browser.close();
      await devnet.close();
    }
  }),
);
