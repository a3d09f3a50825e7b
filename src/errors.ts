// The one error base class. Every error a user can act on — a bad flag or file, a refusal, data
// that is not there, a unit that does not answer — is a VerityError; the CLI maps it to an exit
// code and the HTTP front ends to a status by `instanceof`, never by a name string. Anything else
// that escapes is a bug (CLI exit 2, HTTP 500).

export class VerityError extends Error {
  constructor(
    message: string,
    /** The subclass's own code where it has one (an HTTP status for a refusal, a kind for a proof fault). */
    readonly code: string | number | null = null,
  ) {
    super(message);
    this.name = new.target.name;
  }

  /** The HTTP status an API answers with: a refusal's own status, else 400 (the caller's doing). */
  get httpStatus(): number {
    return typeof this.code === 'number' && this.code >= 400 && this.code < 600 ? this.code : 400;
  }

  /** The CLI's exit code: 1 for every error the user can act on (a command may give some their own). */
  get exitCode(): number {
    return 1;
  }
}

/** The CLI's exit code for an error that is not a VerityError: a bug. */
export const INTERNAL_EXIT_CODE = 2;
