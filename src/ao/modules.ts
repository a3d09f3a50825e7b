// Process modules as data items: JavaScript source (compiled from TypeScript) or Lua with AO's module tags,
// so that aoconnect's spawn accepts them.
import type { Signer } from '@dha-team/arbundles';
import { createItem, type Tag } from '../store/items.js';
import type { Store } from '../store/store.js';
import { DEFAULT_LIMITS, MODULE_FORMAT, type Limits } from './runtime.js';
import { LUA_MODULE_FORMAT } from './lua-runtime.js';

export interface ModuleOptions {
  limits?: Limits;
  /** Extensions the module asks the CU for (its `Extension` tags), e.g. HOST_EXTENSION. */
  extensions?: string[];
  /** The module's language: JavaScript (the default) or Lua (run on the aos library, lua-runtime.ts). */
  format?: 'js' | 'lua';
}

export function moduleTags(name: string, options: ModuleOptions = {}): Tag[] {
  const limits = options.limits ?? DEFAULT_LIMITS;
  return [
    { name: 'Data-Protocol', value: 'ao' },
    { name: 'Variant', value: 'ao.TN.1' },
    { name: 'Type', value: 'Module' },
    { name: 'Module-Format', value: options.format === 'lua' ? LUA_MODULE_FORMAT : MODULE_FORMAT },
    { name: 'Input-Encoding', value: 'JSON-1' },
    { name: 'Output-Encoding', value: 'JSON-1' },
    { name: 'Memory-Limit', value: `${limits.memory}-b` },
    { name: 'Compute-Limit', value: String(limits.compute) },
    { name: 'Content-Type', value: options.format === 'lua' ? 'text/x-lua' : 'application/javascript' },
    { name: 'Name', value: name },
    ...(options.extensions ?? []).map((value) => ({ name: 'Extension', value })),
  ];
}

/** Stores a module and returns its id. */
export async function publishModule(store: Store, signer: Signer, source: string, name: string, options?: ModuleOptions): Promise<string> {
  const item = await createItem(source, signer, { tags: moduleTags(name, options) });
  return (await store.put(item.raw)).id;
}
