// verity sim: the verification economics on a real devnet (src/client/sim.ts): honest and cheating
// nodes, many requests, and per strategy what was served, cheated, caught and slashed.
import { InvalidArgumentError } from 'commander';
import { CHEATS, formatReport, runSim } from '../sim.js';

export interface SimFlags {
  honest: number;
  perStrategy: number;
  requests: number;
  maxTokens: number;
  concurrency: number;
  auditPpm?: number;
  slash?: string;
  strategies?: string;
  tickMs?: number;
  dir?: string;
  json?: boolean;
}

export async function simCommand(flags: SimFlags): Promise<void> {
  if (flags.slash !== undefined && !/^[1-9][0-9]{0,37}$/.test(flags.slash)) throw new InvalidArgumentError('--slash must be a whole number of tokens');
  const strategies = flags.strategies?.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const s of strategies ?? []) if (!(CHEATS as string[]).includes(s)) throw new InvalidArgumentError(`--strategies: '${s}' is not one of ${CHEATS.join(', ')}`);
  const report = await runSim({
    honest: flags.honest,
    perStrategy: flags.perStrategy,
    requests: flags.requests,
    maxTokens: flags.maxTokens,
    concurrency: flags.concurrency,
    auditPpm: flags.auditPpm,
    slash: flags.slash === undefined ? undefined : BigInt(flags.slash),
    strategies,
    tickMs: flags.tickMs,
    dir: flags.dir,
  });
  process.stdout.write(flags.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  // A run that found something wrong says so in its exit code too.
  if (report.anomalies.length > 0 || report.honestSlashed > 0) process.exitCode = 3;
}
