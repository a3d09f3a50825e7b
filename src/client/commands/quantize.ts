import { basename } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { GGML_TYPE, ggufFromModel, writeGguf, type ExportType } from '../../engine/index.js';
import { load } from './shared.js';

/** verity quantize: a model as GGUF with quantised (Q8_0, Q4_0, k-quants or a mix), F16 or F32 matrices, with a progress bar. */
export function quantizeCommand(input: string, output: string, options: { tokenizer?: string; type: ExportType; json?: boolean }): void {
  const model = load(input, options.tokenizer);
  const contents = ggufFromModel(model, { type: options.type, name: basename(input) });
  const bar = new SingleBar(
    { format: `writing ${basename(output)} [{bar}] {value}/{total} tensors`, stream: process.stderr, hideCursor: true },
    Presets.shades_classic,
  );
  bar.start(contents.tensors.length, 0);
  writeGguf(output, contents, (i) => bar.update(i + 1));
  bar.stop();
  const names = new Map(Object.entries(GGML_TYPE).map(([name, type]) => [type as number, name]));
  const counts = new Map<string, number>();
  for (const t of contents.tensors) counts.set(names.get(t.type) ?? `#${t.type}`, (counts.get(names.get(t.type) ?? `#${t.type}`) ?? 0) + 1);
  const f32 = counts.get('F32') ?? 0;
  counts.delete('F32');
  const converted = contents.tensors.length - f32;
  const types = counts.size === 1 ? [...counts.keys()][0] : `${options.type.toUpperCase()} (${[...counts].map(([name, n]) => `${n} ${name}`).join(', ')})`;
  if (options.json) process.stdout.write(`${JSON.stringify({ out: output, tensors: contents.tensors.length, converted, types: Object.fromEntries([...counts, ['F32', f32]]) })}\n`);
  else process.stderr.write(`${output}: ${converted} of ${contents.tensors.length} tensors ${types}, the rest F32\n`);
}

