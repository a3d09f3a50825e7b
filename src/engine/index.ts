// The deterministic inference engine: model loading, the canonical kernels, the forward pass as
// re-executable steps, run.c-exact tokenizer and sampler, and the model's content id.
export { EngineError, ModelFileError } from './errors.js';
export { loadModel, detectFormat, type LoadOptions } from './load/index.js';
export {
  Q8_BLOCK, Q8_BLOCK_BYTES, canonicalTensors, holdsEmbedding, holdsHead, holdsLayer, storedTensors,
  type DType, type LayerRange, type Matrix, type Model, type ModelConfig, type ModelFormat, type ModelPart, type TensorRef,
} from './model.js';
export { GGML_TYPE, ggufBytes, ggufFromModel, writeGguf, type ExportType, type GgufContents, type GgufExportOptions } from './load/gguf-write.js';
export {
  QUANTIZE_TARGETS, dequantizeBlocks, dequantizeQ8_0, f16ToF32, f32ToF16, fallbackType, mixTensorType, quantizeBlocks, quantizeQ8_0,
  type QuantizeTarget,
} from './quantize.js';
export { DTYPES, QUANTIZED_DTYPES, dtypeOfGgml, rowBytes, traits, type ActivationType, type DTypeTraits } from './dtypes.js';
export { createArena, type Arena, type ArenaUsage, type Ptr } from './memory.js';
export { ARCHITECTURES, architectureOf, layerStepTensors, ropeNeox, type Architecture, type RopeStyle } from './architecture.js';
export {
  KERNEL_PATHS, NUMERICS_SPEC_VERSION, availableKernelPaths, defaultKernelPath, instantiateKernels, isKernelPath,
  type KernelPath, type Kernels,
} from './numerics/index.js';
export { nativeKernels } from './numerics/native.js';
export {
  completionText, createTokenizer, decode, decodePiece, encode, printableBytes, tokenize,
  type SentencePieceTokenizer, type TokenizeOptions, type Tokenizer,
} from './tokenizer.js';
export { DEFAULT_CHAT_TEMPLATE, MAX_CHAT_TEMPLATE_CHARS, chatPromptTokens, endOfTurnTokens, renderChat, type ChatMessage, type ChatRole } from './chat.js';
export { PRE_TOKENIZERS, TOKEN_TYPE, createBpeTokenizer, type BpeTokenizer, type BpeTokenizerSpec } from './tokenizer-bpe.js';
export { pickTopp, randomF32, rngNext, sampleToken, type SamplerBuffers, type SamplingParams } from './sampler.js';
export {
  classify, closeThreads, createSession, threadPoolCount, disposeSession, embed, headStep, layerStep, runHeadStep, runLayerStep,
  PROMPT_BATCH, keyRow, layerRangeBatch, promptBatch, promptBatchSize, valueRow,
  type HeadStepInput, type LayerStepInput, type LayerStepOutput, type Session, type SessionOptions,
} from './steps.js';
export { generate, type GenerateRequest, type GeneratedToken, type GenerationSummary, type StepObserver } from './generate.js';
export { createFingerprint, headOutputBytes, layerOutputBytes } from './fingerprint.js';
export {
  CHUNK_BYTES, MODEL_ID_VERSION, canonicalConfig, canonicalTokenizer, chunkLayout, modelIdentity, parseCanonicalConfig,
  modelTreeLeaves, parseCanonicalTokenizer, tensorSpecBytes,
  type CanonicalConfig, type ModelIdentity, type TensorLeaves, type TensorSpec,
} from './model-id.js';
export { leafHash, merkleRoot, nodeHash, rangeProof, rootFromRange, toHex, type Hash } from './merkle.js';
export { assembleModel, createSparseModel, type SparseModel } from './load/parts.js';
export { canMapWeights, hasMappedWeights, ownedMatrix, tensorBytes, tensorF32, type WeightPlacement } from './load/mapped.js';
export { type SessionBackend } from './backend.js';
