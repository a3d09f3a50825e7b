// All tensors and activations live in one WebAssembly memory so the kernels can reach them without
// copies. Pointers are byte offsets into it. Views are made on demand because growing a memory
// detaches the ArrayBuffer that earlier views were built on.
//
// Two ways to allocate, both below one `top`:
//   alloc(bytes)          permanent: weights and tables that live as long as the model (a bump).
//   allocBlock / free     blocks freed in any order (sessions, traces): a free list of address-
//                         sorted ranges, best fit, neighbours coalesced on free, and a free range
//                         that reaches `top` gives its bytes back to the bump. Freed memory is
//                         reused, so the arena stays as large as the most that was ever live at
//                         once (plus fragmentation), however many blocks come and go.
// A block's contents are unspecified when it is handed out (reused memory is not cleared):
// everything the engine reads from a session it has written first.
// WebAssembly memories never shrink; the arena never returns pages to the system.

const PAGE = 65536;
const ALIGN = 64;
/** Bytes kept free after every allocation: SIMD tails may load (and then mask) up to 48 bytes past the end. */
const PAD = 64;
const MAX_PAGES = 65536; // 4 GiB, the wasm32 limit

export type Ptr = number;

/** Bytes an allocation of `bytes` takes: its padding, rounded up to the alignment. */
export const paddedSize = (bytes: number): number => Math.ceil((bytes + PAD) / ALIGN) * ALIGN;

export interface ArenaUsage {
  /** End of the used part of the memory: the bump pointer. */
  top: number;
  /** The memory's size in bytes (it only grows). */
  memoryBytes: number;
  liveBlocks: number;
  liveBlockBytes: number;
  /** Bytes in free ranges below `top`, waiting for reuse. */
  freeBytes: number;
  freeRanges: number;
}

export interface Arena {
  readonly memory: WebAssembly.Memory;
  /** Permanent memory, never freed (weights, tables). */
  alloc(bytes: number): Ptr;
  /** Memory freed by `free(ptr)`, in any order. */
  allocBlock(bytes: number): Ptr;
  /** Frees a block from allocBlock; a pointer that is not a live block (a double free) throws. */
  free(ptr: Ptr): void;
  /**
   * Scratch for tests and tools: everything allocated with `alloc` after `mark()` is freed by
   * `release(mark)`. It throws if a live block lies above the mark (release would free it too).
   */
  mark(): number;
  release(mark: number): void;
  usage(): ArenaUsage;
  f32(ptr: Ptr, length: number): Float32Array;
  u8(ptr: Ptr, length: number): Uint8Array;
}

interface Range {
  ptr: Ptr;
  size: number;
}

export function createArena(initialBytes = 0): Arena {
  const initialPages = Math.min(MAX_PAGES, Math.max(1, Math.ceil((initialBytes + 2 * PAGE) / PAGE)));
  // Shared, so that worker threads run kernels on the same tensors without copies.
  const memory = new WebAssembly.Memory({ initial: initialPages, maximum: MAX_PAGES, shared: true });
  let top = ALIGN; // offset 0 stays unused so that 0 is never a valid buffer
  /** Free ranges below top, sorted by address, never adjacent (adjacent ones are merged). */
  const freeRanges: Range[] = [];
  /** Live blocks: start → size. Looked up by key only, never iterated for anything that allocates. */
  const live = new Map<Ptr, number>();

  function ensure(end: number): void {
    const have = memory.buffer.byteLength;
    if (end <= have) return;
    const pages = Math.ceil((end - have) / PAGE);
    if (have / PAGE + pages > MAX_PAGES) {
      throw new RangeError(`out of WebAssembly memory: ${end} bytes needed, the limit is 4 GiB`);
    }
    memory.grow(pages);
  }

  function bump(size: number): Ptr {
    const ptr = top;
    ensure(ptr + size);
    top = ptr + size;
    return ptr;
  }

  /** Drops a last free range that reaches top, lowering top to its start. */
  function trimTop(): void {
    const last = freeRanges[freeRanges.length - 1];
    if (last && last.ptr + last.size === top) {
      top = last.ptr;
      freeRanges.pop();
    }
  }

  return {
    memory,
    alloc: (bytes) => bump(paddedSize(bytes)),
    allocBlock(bytes) {
      const size = paddedSize(bytes);
      let ptr: Ptr;
      // Best fit (the smallest free range that holds it; the lowest address among equals) keeps
      // large ranges whole for large blocks.
      let fit = -1;
      freeRanges.forEach((r, i) => {
        if (r.size >= size && (fit < 0 || r.size < freeRanges[fit].size)) fit = i;
      });
      if (fit >= 0) {
        const r = freeRanges[fit];
        ptr = r.ptr;
        if (r.size === size) freeRanges.splice(fit, 1);
        else {
          r.ptr += size;
          r.size -= size;
        }
      } else {
        ptr = bump(size);
      }
      live.set(ptr, size);
      return ptr;
    },
    free(ptr) {
      const size = live.get(ptr);
      if (size === undefined) throw new RangeError(`free(${ptr}): not a live block (freed twice, or never allocated with allocBlock)`);
      live.delete(ptr);
      // Insert in address order, then merge with the neighbours it touches.
      let i = 0;
      while (i < freeRanges.length && freeRanges[i].ptr < ptr) i++;
      freeRanges.splice(i, 0, { ptr, size });
      const next = freeRanges[i + 1];
      if (next && ptr + size === next.ptr) {
        freeRanges[i].size += next.size;
        freeRanges.splice(i + 1, 1);
      }
      const prev = freeRanges[i - 1];
      if (prev && prev.ptr + prev.size === ptr) {
        prev.size += freeRanges[i].size;
        freeRanges.splice(i, 1);
      }
      trimTop();
    },
    mark: () => top,
    release(mark) {
      for (const [ptr] of live) {
        if (ptr >= mark) throw new RangeError(`release(${mark}): block ${ptr} above the mark is still live`);
      }
      while (freeRanges.length > 0 && freeRanges[freeRanges.length - 1].ptr >= mark) freeRanges.pop();
      top = mark;
      // A free range that straddled the mark now ends at top or beyond: clip it.
      const last = freeRanges[freeRanges.length - 1];
      if (last && last.ptr + last.size > top) last.size = top - last.ptr;
      trimTop();
    },
    usage() {
      let liveBlockBytes = 0;
      for (const size of live.values()) liveBlockBytes += size;
      return {
        top,
        memoryBytes: memory.buffer.byteLength,
        liveBlocks: live.size,
        liveBlockBytes,
        freeBytes: freeRanges.reduce((n, r) => n + r.size, 0),
        freeRanges: freeRanges.length,
      };
    },
    f32: (ptr, length) => new Float32Array(memory.buffer, ptr, length),
    u8: (ptr, length) => new Uint8Array(memory.buffer, ptr, length),
  };
}
