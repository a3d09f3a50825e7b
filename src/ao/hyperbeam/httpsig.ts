// HTTP message signatures (RFC 9421), as HyperBEAM's `httpsig@1.0` and @permaweb/ao-core-libs (under
// aoconnect's mainnet `request`, whose default signing format it is) make them: one signature
// labelled `http-sig-…`, its components the request's header fields (and derived ones such as
// `@path` when asked), parameters `alg` and `keyid`, the key being the signer's public key itself
// (an RSA modulus for `rsa-pss-sha512`, an Ed25519 key for `ed25519`). Verified here with no other
// input than the request: the signer's address is sha256(key), as for an ANS-104 owner.
//
// A strict reader of the structured fields involved (RFC 8941) is enough: a dictionary member
// `label=("a" "b");k="v"` whose text, exactly as sent, is the `@signature-params` line of the
// signature base. Anything outside that subset (component parameters such as `;sf`, `;req`,
// several signatures, other algorithms) is refused with the reason, never guessed at.
import { constants, createHash, createPublicKey, verify } from 'node:crypto';
import { ownerAddress } from '../../store/wallet.js';

/** Largest Signature / Signature-Input header read, and components per signature. */
export const MAX_SIGNATURE_HEADER_BYTES = 8 * 1024;
export const MAX_COMPONENTS = 64;

export class HttpSigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HttpSigError';
  }
}

export interface SignedRequest {
  method: string;
  /** The request target as on the request line: `/path?query`. */
  target: string;
  /** Header names lower-case, as node gives them. */
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export interface HttpSignature {
  /** base64url of the public key, and its address. */
  owner: string;
  address: string;
  alg: 'rsa-pss-sha512' | 'ed25519';
  components: string[];
}

const fail = (why: string): never => {
  throw new HttpSigError(why);
};

const headerText = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? value.join(', ') : value);

/** `label=value` of a one-member dictionary; the value's text untouched. */
function member(header: string, what: string): { label: string; value: string } {
  if (Buffer.byteLength(header) > MAX_SIGNATURE_HEADER_BYTES) fail(`the ${what} header is over ${MAX_SIGNATURE_HEADER_BYTES} bytes`);
  const m = /^([a-z*][a-z0-9_\-.*]*)=(.*)$/s.exec(header.trim());
  if (!m) fail(`the ${what} header is not a structured-field dictionary member label=value`);
  return { label: m![1], value: m![2] };
}

/** A quoted sf-string at `text[at]`: its value and where it ends. */
function quoted(text: string, at: number): { value: string; end: number } {
  if (text[at] !== '"') fail('expected a quoted string in Signature-Input');
  let value = '';
  for (let i = at + 1; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') {
      const next = text[i + 1];
      if (next !== '"' && next !== '\\') fail('bad escape in a Signature-Input string');
      value += next;
      i++;
    } else if (c === '"') return { value, end: i + 1 };
    else if (c < ' ' || c > '~') fail('a Signature-Input string holds a character outside printable ASCII');
    else value += c;
  }
  return fail('an unterminated string in Signature-Input');
}

/** `("c1" "c2");k=v;…` → the components and parameters. Strict: one space between items, no component parameters. */
function signatureParams(text: string): { components: string[]; params: Map<string, string | number> } {
  if (text[0] !== '(') fail('Signature-Input must hold an inner list of components');
  const components: string[] = [];
  let at = 1;
  while (text[at] !== ')') {
    if (components.length && text[at++] !== ' ') fail('components in Signature-Input are separated by one space');
    const { value, end } = quoted(text, at);
    if (text[end] === ';') fail(`component parameters (on "${value.slice(0, 40)}") are not supported`);
    components.push(value);
    if (components.length > MAX_COMPONENTS) fail(`more than ${MAX_COMPONENTS} signed components`);
    at = end;
    if (at >= text.length) fail('an unterminated component list in Signature-Input');
  }
  at++;
  const params = new Map<string, string | number>();
  while (at < text.length) {
    const m = /^;([a-z*][a-z0-9_\-.*]*)=/.exec(text.slice(at));
    if (!m) fail('bad parameter in Signature-Input');
    at += m![0].length;
    if (text[at] === '"') {
      const { value, end } = quoted(text, at);
      params.set(m![1], value);
      at = end;
    } else {
      const n = /^-?\d{1,15}/.exec(text.slice(at));
      if (!n) fail(`parameter ${m![1]} must be a string or an integer`);
      params.set(m![1], Number(n![0]));
      at += n![0].length;
    }
  }
  return { components, params };
}

/** The value of one component of the signature base (RFC 9421 §2). */
function componentValue(name: string, request: SignedRequest): string {
  const q = request.target.indexOf('?');
  switch (name) {
    case '@method':
      return request.method.toUpperCase();
    case '@path':
      return (q < 0 ? request.target : request.target.slice(0, q)) || '/';
    case '@query':
      return q < 0 ? '?' : request.target.slice(q);
    case '@request-target':
      return request.target;
    case '@authority': {
      const host = headerText(request.headers.host);
      if (host === undefined) return fail('@authority is signed but the request has no Host');
      return host.toLowerCase();
    }
    default: {
      if (name.startsWith('@')) return fail(`derived component ${name.slice(0, 40)} is not supported (only @method, @path, @query, @request-target, @authority)`);
      if (name !== name.toLowerCase()) fail(`component "${name.slice(0, 40)}" must be lower-case`);
      const value = headerText(request.headers[name]);
      if (value === undefined) return fail(`signed header ${name.slice(0, 40)} is not in the request`);
      return value.trim().replace(/\n\s*/g, ' ');
    }
  }
}

/**
 * The request's HTTP message signature, verified; null when it carries none. The body is bound only
 * through a signed Content-Digest (sha-256), which is then checked against the body received.
 */
export function verifyHttpSignature(request: SignedRequest): HttpSignature | null {
  const inputHeader = headerText(request.headers['signature-input']);
  const signatureHeader = headerText(request.headers.signature);
  if (inputHeader === undefined && signatureHeader === undefined) return null;
  if (inputHeader === undefined || signatureHeader === undefined) fail('a signed request needs both Signature and Signature-Input');
  const input = member(inputHeader!, 'Signature-Input');
  const sig = member(signatureHeader!, 'Signature');
  if (input.label !== sig.label) fail(`Signature (${sig.label.slice(0, 40)}) and Signature-Input (${input.label.slice(0, 40)}) name different signatures: one signature per request`);
  const sigBytes = /^:([A-Za-z0-9+/]*={0,2}):$/.exec(sig.value);
  if (!sigBytes) fail('the Signature value must be one byte sequence :base64:');
  const { components, params } = signatureParams(input.value);
  if (new Set(components).size !== components.length) fail('a component is signed twice');

  const alg = params.get('alg');
  const keyid = params.get('keyid');
  if (typeof keyid !== 'string' || !/^[A-Za-z0-9_-]+$/.test(keyid)) return fail('Signature-Input needs keyid: the signer\'s public key, base64url');
  const key = Buffer.from(keyid, 'base64url');
  const expires = params.get('expires');
  // Not a consensus path: a request's age is checked against this machine's clock.
  if (typeof expires === 'number' && expires * 1000 < Date.now()) fail('the signature has expired');

  const lines = components.map((name) => `"${name}": ${componentValue(name, request)}`);
  lines.push(`"@signature-params": ${input.value}`);
  const base = Buffer.from(lines.join('\n'));
  const signature = Buffer.from(sigBytes![1], 'base64');

  let valid = false;
  if (alg === 'rsa-pss-sha512') {
    if (key.length < 256 || key.length > 1024) fail(`an rsa-pss-sha512 keyid is an RSA modulus of 256..1024 bytes, not ${key.length}`);
    const publicKey = createPublicKey({ key: { kty: 'RSA', n: keyid, e: 'AQAB' }, format: 'jwk' });
    valid = verify('sha512', base, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO }, signature);
  } else if (alg === 'ed25519') {
    if (key.length !== 32) fail(`an ed25519 keyid is a 32-byte public key, not ${key.length} bytes`);
    const publicKey = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: keyid }, format: 'jwk' });
    valid = signature.length === 64 && verify(null, base, publicKey, signature);
  } else {
    fail(`signature algorithm ${String(alg).slice(0, 40)} is not supported: rsa-pss-sha512 or ed25519 (an hmac proves nothing to a third party)`);
  }
  if (!valid) fail('bad signature: the HTTP message signature does not match the request');

  if (components.includes('content-digest') && request.body.length > 0) {
    // RFC 9530 writes the digest in base64; ao-core-libs 0.0.9 writes base64url. Both are read as bytes.
    const digest = /(?:^|,)\s*sha-256=:([A-Za-z0-9+/_-]*={0,2}):/.exec(headerText(request.headers['content-digest']) ?? '');
    if (!digest) fail('the signed Content-Digest has no sha-256 value');
    if (!createHash('sha256').update(request.body).digest().equals(Buffer.from(digest![1], 'base64'))) fail('the body does not match the signed Content-Digest');
  }
  return { owner: keyid, address: ownerAddress(key), alg: alg as HttpSignature['alg'], components };
}
