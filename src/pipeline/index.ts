// Distributed inference (docs/pipeline.md): one model split by contiguous layer ranges over
// several nodes — where each stage goes (placement), what a stage runs (stage, driver), the trace
// they make together (trace), how stages talk (channel, link) and stages as separate processes
// with runtime load balancing (ring), and a stage of a pipelined lease on the network (net-stage, wire).
export {
  MAX_PLACEMENT_LAYERS, MAX_PLACEMENT_NODES, PlacementError, evenSplitPlacement, optimalPlacement, overlapPlan, predictNsPerToken, rebalance,
  type BoundaryOverlap, type Links, type ModelProfile, type NodeProfile, type OverlapPlan, type Placement, type PlacementStage, type StageBreakdown,
} from './placement.js';
export {
  decodeHandover, encodeHandover, startStage,
  type HeadOutput, type LayerHandover, type LayerLeaf, type LayerRange, type StageInput, type StageOptions, type StageOutput, type StageRole, type StageRun,
} from './stage.js';
export { assembleTrace, stageSubRoot, stageSubRoots, stageSteps, type AssembledTrace, type StageLayout } from './trace.js';
export { localHandle, moveLayers, runPipeline, runPipelineLocal, type PipelineHooks, type PipelineOptions, type PipelineResult, type StageHandle, type StageSummary } from './driver.js';
export { CHANNEL_PROTOCOL, ChannelError, ChannelInbox, ChannelOutbox, f32Payload, framePayload, payloadF32, sealMessage, unframePayload, type ChannelKind, type ChannelMessage, type PipelineLease } from './channel.js';
export { DIRECT_LINK, simulatedLink, transferMs, type LinkSpec } from './link.js';
export { runRing, type RingResult, type RingSpec, type RingStage, type StageMeasure } from './ring.js';
export type { LayerMove } from './ring-stage.js';
export {
  STAGE_RECORD_TYPE, checkStageRecords, readStageRecord, stageOpening, stageRecordBound, stageRecordTags, startNetStage,
  type NetStage, type NetStageSpec, type PipelineClaim, type StageRecord, type StageReplay, type StepPreimage,
} from './net-stage.js';
export { answerPipe, startWireServer, takeBody, wireSender, type WireServer } from './wire.js';
