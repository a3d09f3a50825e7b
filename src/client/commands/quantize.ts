import { basename } from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import { GGML_TYPE, ggufFromModel, writeGguf, type ExportType } from '../../engine/index.js';
import { load } from './shared.js';

/** verity quantize: a model as GGUF with Q8_0, F16 or F32 matrices, with a progress bar. */
export function quantizeCommand(input: string, output: string, options: { tokenizer?: string; type: ExportType }): void {
  const model = load(input, options.tokenizer);
  const contents = ggufFromModel(model, { type: options.type, name: basename(input) });
  const bar = new SingleBar(
    { format: `writing ${basename(output)} [{bar}] {value}/{total} tensors`, stream: process.stderr, hideCursor: true },
    Presets.shades_classic,
  );
  bar.start(contents.tensors.length, 0);
  writeGguf(output, contents, (i) => bar.update(i + 1));
  bar.stop();
  const converted = contents.tensors.filter((t) => t.type !== GGML_TYPE.F32).length;
  process.stderr.write(`${output}: ${converted} of ${contents.tensors.length} tensors ${options.type.toUpperCase()}, the rest F32\n`);
}

