// Every command's --help ends with an example, and every flag an example uses is one the command
// takes: an example that does not run is worse than none.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Command } from 'commander';
import { join } from 'node:path';
import { buildProgram } from '../../src/client/cli.js';
import { runCli, stories260K, tok512, withTempDir } from '../helpers.js';

function leaves(command: Command, path: string[] = []): { name: string; command: Command }[] {
  return command.commands.flatMap((sub) => {
    const name = [...path, sub.name()];
    return sub.commands.length > 0 ? leaves(sub, name) : [{ name: name.join(' '), command: sub }];
  });
}

/** The help text after the options, as `verity <command> --help` prints it. */
function helpOf(command: Command): string {
  let text = '';
  command.configureOutput({ writeOut: (s) => (text += s), writeErr: (s) => (text += s) });
  command.outputHelp();
  return text;
}

test('every command has an example in its --help, using only flags it takes', () => {
  const all = leaves(buildProgram());
  assert.ok(all.length > 20);
  const problems: string[] = [];
  for (const { name, command } of all) {
    const help = helpOf(command);
    const examples = help.includes('xample') ? help.slice(help.search(/Examples?:\n/)).split('\n').filter((l) => l.trim().startsWith(`$ verity ${name}`)) : [];
    if (examples.length === 0) problems.push(`verity ${name} --help has no example of itself`);
    const flags = new Set(command.options.flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f))));
    flags.add('--help');
    for (const example of examples) {
      for (const flag of example.match(/(?<=\s)--?[a-z][a-z0-9-]*/gi) ?? []) if (!flags.has(flag)) problems.push(`verity ${name}: its example uses ${flag}, which it does not take`);
    }
  }
  assert.deepEqual(problems, []);
});

test('every command takes --json', () => {
  const without = leaves(buildProgram()).filter(({ command }) => !command.options.some((o) => o.long === '--json')).map(({ name }) => name);
  assert.deepEqual(without, []);
});

test('--json prints exactly one JSON object: run, trace, quantize, dispute-sim', { timeout: 120_000 }, () =>
  withTempDir(async (dir) => {
    const model = ['-z', tok512, '-t', '0', '-n', '24', '-i', 'Once upon a time'];
    const one = async (args: string[]): Promise<Record<string, unknown>> => {
      const r = await runCli([...args, '--json']);
      assert.equal(r.code, 0, `${args[0]}: ${r.stderr}`);
      const lines = r.stdout.toString().trim().split('\n');
      assert.equal(lines.length, 1, `${args[0]} printed ${lines.length} lines`);
      return JSON.parse(lines[0]) as Record<string, unknown>;
    };
    const plain = (await runCli(['run', stories260K, ...model])).stdout.toString();
    const run = await one(['run', stories260K, ...model]);
    assert.equal(`${String(run.text)}\n`, plain, 'the same text as without --json');
    assert.match(String(run.fingerprint), /^[0-9a-f]+$/);
    assert.match(String((await one(['trace', stories260K, ...model, '--out', join(dir, 't.json')])).root), /^[0-9a-f]{64}$/);
    assert.equal((await one(['quantize', stories260K, join(dir, 'q.gguf'), '-z', tok512])).out, join(dir, 'q.gguf'));
    const sim = await one(['dispute-sim', stories260K, ...model, '--fault', 'token@32']);
    assert.equal((sim.verdict as { winner: string }).winner, (sim.verdict as { honest: string }).honest);
  }),
);
