// Wallets: Arweave RSA keys (JWK) and Ed25519 keys, the two signature types AO processes and
// Verity nodes use. An address is what AO and Arweave make of the owner key: base64url(sha256(key)).
import { createHash, createPrivateKey, generateKeyPairSync, sign as edSign, type KeyObject } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { ArweaveSigner, type JWKInterface, type Signer } from '@dha-team/arbundles';
import Arweave from 'arweave';
import bs58 from 'bs58';
import { VerityError } from '../errors.js';

export type WalletType = 'arweave' | 'ed25519';

export interface Ed25519Jwk {
  kty: 'OKP';
  crv: 'Ed25519';
  x: string;
  d: string;
}

export type Wallet = { type: 'arweave'; jwk: JWKInterface } | { type: 'ed25519'; jwk: Ed25519Jwk };

export class WalletError extends VerityError {
  constructor(message: string) {
    super(message);
    this.name = 'WalletError';
  }
}

export const b64url = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url');

/** Owner key bytes → address (AO's and Arweave's rule for every signature type used here). */
export const ownerAddress = (owner: Uint8Array): string => b64url(createHash('sha256').update(owner).digest());

export async function generateWallet(type: WalletType): Promise<Wallet> {
  if (type === 'arweave') {
    const jwk = await Arweave.init({}).wallets.generate();
    return { type, jwk };
  }
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' }) as unknown as Ed25519Jwk;
  return { type, jwk: { kty: 'OKP', crv: 'Ed25519', x: jwk.x, d: jwk.d } };
}

/** The owner key as it appears in data items: the RSA modulus, or the Ed25519 public key. */
export function ownerKey(wallet: Wallet): Buffer {
  return Buffer.from(wallet.type === 'arweave' ? wallet.jwk.n : wallet.jwk.x, 'base64url');
}

export const walletAddress = (wallet: Wallet): string => ownerAddress(ownerKey(wallet));

// did:key for Ed25519 (W3C did:key method): "z" (base58btc multibase) + base58(0xed 0x01 ‖ public key).
const DID_PREFIX = 'did:key:z';
const ED25519_MULTICODEC = [0xed, 0x01];

/** The wallet's decentralised identifier; only Ed25519 keys have one here. */
export function walletDid(wallet: Wallet): string {
  if (wallet.type !== 'ed25519') throw new WalletError('a did:key identity needs an Ed25519 wallet');
  return DID_PREFIX + bs58.encode(Buffer.concat([Buffer.from(ED25519_MULTICODEC), ownerKey(wallet)]));
}

/** The AO address of an Ed25519 did:key, or a WalletError saying why it is not one. */
export function didAddress(did: string): string {
  if (!did.startsWith(DID_PREFIX) || did.length > 64) throw new WalletError('not an Ed25519 did:key');
  let bytes: Uint8Array;
  try {
    bytes = bs58.decode(did.slice(DID_PREFIX.length));
  } catch {
    throw new WalletError('not an Ed25519 did:key: bad base58');
  }
  if (bytes.length !== 34 || bytes[0] !== ED25519_MULTICODEC[0] || bytes[1] !== ED25519_MULTICODEC[1]) throw new WalletError('not an Ed25519 did:key');
  return ownerAddress(bytes.subarray(2));
}

function ed25519Key(jwk: Ed25519Jwk): KeyObject {
  return createPrivateKey({ key: { ...jwk }, format: 'jwk' });
}

/** A signer for @dha-team/arbundles (and aoconnect): signature type 1 (Arweave) or 2 (Ed25519). */
export function walletSigner(wallet: Wallet): Signer {
  if (wallet.type === 'arweave') return new ArweaveSigner(wallet.jwk);
  const key = ed25519Key(wallet.jwk);
  return {
    publicKey: ownerKey(wallet),
    signatureType: 2,
    signatureLength: 64,
    ownerLength: 32,
    sign: (message: Uint8Array) => edSign(null, message, key),
  } as Signer;
}

/** Reads and checks a wallet file (an Arweave JWK, or an Ed25519 OKP JWK). */
export function readWallet(path: string): Wallet {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new WalletError(`${path}: ${code === 'ENOENT' ? 'no such wallet file' : 'not a JSON wallet'}`);
  }
  return parseWallet(doc, path);
}

/** Checks a parsed wallet document (an Arweave JWK, or an Ed25519 OKP JWK); `where` names it in errors. */
export function parseWallet(value: unknown, where: string): Wallet {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new WalletError(`${where}: not a JSON wallet`);
  const doc = value as Record<string, unknown>;
  const path = where;
  const str = (k: string): boolean => typeof doc[k] === 'string' && (doc[k] as string).length > 0;
  if (doc.kty === 'RSA' && ['n', 'e', 'd', 'p', 'q', 'dp', 'dq', 'qi'].every(str)) {
    const n = Buffer.from(doc.n as string, 'base64url');
    if (n.length !== 512) throw new WalletError(`${path}: an Arweave key has a 4096-bit modulus, this one has ${8 * n.length} bits`);
    return { type: 'arweave', jwk: doc as unknown as JWKInterface };
  }
  if (doc.kty === 'OKP' && doc.crv === 'Ed25519' && str('x') && str('d')) {
    const wallet: Wallet = { type: 'ed25519', jwk: { kty: 'OKP', crv: 'Ed25519', x: doc.x as string, d: doc.d as string } };
    try {
      ed25519Key(wallet.jwk);
    } catch {
      throw new WalletError(`${path}: not a valid Ed25519 key`);
    }
    return wallet;
  }
  throw new WalletError(`${path}: not an Arweave (RSA) or Ed25519 JWK`);
}

/** Writes a wallet file readable by its owner only (0600), atomically. */
export function writeWallet(path: string, wallet: Wallet): void {
  const temp = `${path}.${process.pid}.tmp`;
  const fd = openSync(temp, 'wx', 0o600);
  try {
    writeSync(fd, `${JSON.stringify(wallet.jwk)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, path);
}
