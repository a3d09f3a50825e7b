// The worker node: stakes, registers, fetches models, takes leases, commits, reveals and disputes;
// its decisions are a Behaviour (honest by default, or a cheating strategy for tests).
export { NodeError, startNode, type Network, type NodeActivity, type NodeOptions, type RunningNode } from './node.js';
export { TaskError, complete, jobOf, traceDocument, type Assignment, type Completion } from './work.js';
export {
  claimLeaves, claimOf, claimedValues, honest, openingFrom, resultCommitment, runJob,
  type Behaviour, type BehaviourContext, type Claim, type EngineOptions, type Json,
} from './behaviour.js';
export {
  STRATEGIES, StrategyError, fabricateTrace, perturbLayer, randomTokens, roleOf, strategy, wrongTokenClaim,
  type StrategyName, type StrategyOptions,
} from './strategies.js';
