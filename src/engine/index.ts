// The deterministic inference engine: model loading, the canonical kernels, the forward pass as
// re-executable steps, run.c-exact tokenizer and sampler, and the model's content id.
export { EngineError, ModelFileError } from './errors.js';
export { loadModel, detectFormat, type LoadOptions } from './load/index.js';
export { canonicalTensors, type Model, type ModelConfig, type ModelFormat, type TensorRef } from './model.js';
export { createArena, type Arena, type Ptr } from './memory.js';
export { KERNEL_PATHS, NUMERICS_SPEC_VERSION, instantiateKernels, isKernelPath, type KernelPath, type Kernels } from './numerics/index.js';
export { createTokenizer, decode, decodePiece, encode, printableBytes, type Tokenizer } from './tokenizer.js';
export { randomF32, rngNext, sampleArgmax, sampleMult, sampleToken, sampleTopp, type SamplingParams } from './sampler.js';
export {
  classify, createSession, disposeSession, embed, headStep, layerStep, runHeadStep, runLayerStep,
  type HeadStepInput, type LayerStepInput, type LayerStepOutput, type Session, type SessionOptions,
} from './steps.js';
export { generate, type GenerateRequest, type GeneratedToken, type GenerationSummary, type StepObserver } from './generate.js';
export { createFingerprint, headOutputBytes, layerOutputBytes } from './fingerprint.js';
export { CHUNK_BYTES, MODEL_ID_VERSION, canonicalConfig, canonicalTokenizer, modelIdentity, type ModelIdentity } from './model-id.js';
export { leafHash, merkleRoot, nodeHash, toHex, type Hash } from './merkle.js';
