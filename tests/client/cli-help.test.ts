// Every command's --help ends with an example, and every flag an example uses is one the command
// takes: an example that does not run is worse than none.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Command } from 'commander';
import { buildProgram } from '../../src/client/cli.js';

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
