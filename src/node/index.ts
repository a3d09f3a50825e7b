// The worker node: registers, stakes, fetches models, takes leases, runs jobs with their traces.
export { NodeError, startNode, type Network, type NodeOptions, type RunningNode } from './node.js';
export { TaskError, complete, jobOf, traceDocument, type Assignment, type Completion } from './work.js';
