// All tensors and activations live in one WebAssembly memory so the kernels can reach them without
// copies. Pointers are byte offsets into it. Views are made on demand because growing a memory
// detaches the ArrayBuffer that earlier views were built on.

const PAGE = 65536;
const ALIGN = 64;
/** Bytes kept free after every allocation: SIMD tails may load (and then mask) up to 48 bytes past the end. */
const PAD = 64;
const MAX_PAGES = 65536; // 4 GiB, the wasm32 limit

export type Ptr = number;

export interface Arena {
  readonly memory: WebAssembly.Memory;
  alloc(bytes: number): Ptr;
  /** Everything allocated after `mark()` is freed by `release(mark)`. */
  mark(): number;
  release(mark: number): void;
  f32(ptr: Ptr, length: number): Float32Array;
  u8(ptr: Ptr, length: number): Uint8Array;
}

export function createArena(initialBytes = 0): Arena {
  const initialPages = Math.min(MAX_PAGES, Math.max(1, Math.ceil((initialBytes + 2 * PAGE) / PAGE)));
  // Shared, so that worker threads run kernels on the same tensors without copies.
  const memory = new WebAssembly.Memory({ initial: initialPages, maximum: MAX_PAGES, shared: true });
  let top = ALIGN; // offset 0 stays unused so that 0 is never a valid buffer

  function ensure(end: number): void {
    const have = memory.buffer.byteLength;
    if (end <= have) return;
    const pages = Math.ceil((end - have) / PAGE);
    if (have / PAGE + pages > MAX_PAGES) {
      throw new RangeError(`out of WebAssembly memory: ${end} bytes needed, the limit is 4 GiB`);
    }
    memory.grow(pages);
  }

  return {
    memory,
    alloc(bytes) {
      const ptr = top;
      const end = ptr + Math.ceil((bytes + PAD) / ALIGN) * ALIGN;
      ensure(end);
      top = end;
      return ptr;
    },
    mark: () => top,
    release(mark) {
      top = mark;
    },
    f32: (ptr, length) => new Float32Array(memory.buffer, ptr, length),
    u8: (ptr, length) => new Uint8Array(memory.buffer, ptr, length),
  };
}
