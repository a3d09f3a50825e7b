import { VerityError } from '../errors.js';
/** Control characters (from corrupt names, say) escaped, so that an error stays one line. */
const oneLine = (text: string): string =>
  text.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);

/** A model or tokenizer file that cannot be used; the message names the file and the problem. */
export class ModelFileError extends VerityError {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(oneLine(`${file}: ${problem}`));
    this.name = 'ModelFileError';
  }
}

/** A request the engine cannot serve (bad parameters, prompt longer than the context, …). */
export class EngineError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'EngineError';
  }
}
