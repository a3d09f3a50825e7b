#!/usr/bin/env node
// Decode-speed peer: runs a GGUF model with llama.cpp (node-llama-cpp, CPU backend) and prints ONE
// JSON line on stdout.
//
//   node bench/peer/llama-cpp-run.mjs --peer-dir bench/.peer --model m.gguf --threads 1 \
//        --tokens 200 --prompt "Once upon a time" [--warmup 16] [--runs 1] [--no-mmap] [--verbose]
//
// Measurement (see `notes` in the output):
//   - prompt = [BOS] + tokenize(prompt). All prompt tokens but the last are evaluated in one batch
//     (timed separately, reported as promptSeconds); the generation loop then starts from the
//     last prompt token, so every timed step is exactly one single-token llama_decode + greedy
//     sampling: `tokens` generated tokens cost `tokens` decode calls (the last generated token is
//     sampled but not fed back).
//   - LlamaContextSequence.evaluate() is used with temperature 0 (greedy) and yieldEogToken: true,
//     so an EOS/EOG token does not end generation; it is fed back like any other token.
//   - a warm-up generation (same prompt, --warmup tokens) runs first, then the sequence's KV cache
//     is cleared, so page faults of the mmapped weights and first-call allocations are not timed.
//   - llama.cpp's own per-context perf counters (performanceTracking) are printed too as
//     llamaCppEvalTokensPerSecond (pure decode time inside llama.cpp, no JS overhead), when they
//     can be read from the log.
//   - --runs K repeats the measured generation K times (KV cache cleared in between) and reports
//     the fastest run (least disturbed by other load); every run's rate is in runsTokensPerSecond.

import path from "node:path";
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

// Keep stdout for the single JSON result line.
const realStdoutWrite = process.stdout.write.bind(process.stdout);
console.log = console.error;
console.info = console.error;

function fail(msg) {
    process.stderr.write(`llama-cpp-run: ${msg}\n`);
    process.exit(2);
}

const { values: opt } = parseArgs({
    options: {
        "peer-dir": { type: "string", default: path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", ".peer") },
        model: { type: "string" },
        threads: { type: "string", default: "1" },
        tokens: { type: "string", default: "200" },
        prompt: { type: "string", default: "Once upon a time" },
        warmup: { type: "string", default: "16" },
        runs: { type: "string", default: "1" },
        "no-mmap": { type: "boolean", default: false },
        // Also time prompt processing of a prompt cut to this many tokens (BOS included).
        "prompt-tokens": { type: "string", default: "0" },
        verbose: { type: "boolean", default: false },
    },
    strict: true,
});
if (!opt.model) fail("--model <file.gguf> is required");
if (!existsSync(opt.model)) fail(`model not found: ${opt.model}`);
const threads = Number.parseInt(opt.threads, 10);
const nTokens = Number.parseInt(opt.tokens, 10);
const nWarmup = Number.parseInt(opt.warmup, 10);
const nRuns = Number.parseInt(opt.runs, 10);
if (!(threads >= 1) || !(nTokens >= 1) || !(nWarmup >= 0) || !(nRuns >= 1)) fail("bad --threads/--tokens/--warmup/--runs");

const entry = path.resolve(opt["peer-dir"], "node_modules", "node-llama-cpp", "dist", "index.js");
if (!existsSync(entry)) fail(`node-llama-cpp not found in ${opt["peer-dir"]} (run: node bench/peer/install.mjs)`);

// Never download or build anything at run time.
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
process.env.NODE_LLAMA_CPP_GPU = "false";
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

const logLines = [];
const llama = await getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    progressLogs: false,
    maxThreads: threads,
    logLevel: LlamaLogLevel.info, // needed for printTimings(); lines are captured, not printed
    logger(level, message) {
        logLines.push(message);
        if (opt.verbose || level === LlamaLogLevel.error || level === LlamaLogLevel.fatal)
            process.stderr.write(`[llama.cpp ${level}] ${message}${message.endsWith("\n") ? "" : "\n"}`);
    },
});

const model = await llama.loadModel({
    modelPath: path.resolve(opt.model),
    gpuLayers: 0,
    useMmap: opt["no-mmap"] ? false : "auto",
});

const bos = model.tokens.bos;
const promptTokens = [...(bos != null ? [bos] : []), ...model.tokenize(opt.prompt)];
const nPromptTokens = Number.parseInt(opt["prompt-tokens"], 10);
const longPrompt = nPromptTokens > 1
    ? [...(bos != null ? [bos] : []), ...model.tokenize("Once upon a time, there was a little girl named Lily who loved to play outside in the sunshine. ".repeat(Math.ceil(nPromptTokens / 8)))].slice(0, nPromptTokens)
    : [];
if (nPromptTokens > 1 && longPrompt.length < nPromptTokens) fail(`the prompt text gives only ${longPrompt.length} tokens`);

const needed = promptTokens.length + Math.max(nTokens, nWarmup) + 1;
const contextSize = Math.ceil(Math.max(needed, nPromptTokens + 1) / 256) * 256;

const context = await model.createContext({
    contextSize,
    sequences: 1,
    threads: { ideal: threads, min: threads }, // sets both n_threads and n_threads_batch
    performanceTracking: true,
});
const sequence = context.getSequence();

/** Generate exactly `n` tokens greedily; returns { tokens, promptSeconds, genSeconds, eogCount }. */
async function generate(n) {
    const t0 = performance.now();
    if (promptTokens.length > 1) await sequence.evaluateWithoutGeneratingNewTokens(promptTokens.slice(0, -1));
    const t1 = performance.now();
    const out = [];
    let eogCount = 0;
    if (n > 0) {
        for await (const token of sequence.evaluate(promptTokens.slice(-1), {
            temperature: 0,
            yieldEogToken: true,
        })) {
            out.push(token);
            if (model.isEogToken(token)) eogCount++;
            if (out.length >= n) break;
        }
    }
    const t2 = performance.now();
    return { tokens: out, promptSeconds: (t1 - t0) / 1000, genSeconds: (t2 - t1) / 1000, eogCount };
}

function readEvalTimings() {
    // llama_perf_context_print: "eval time = X ms / N runs ( Y ms per token, Z tokens per second)"
    const text = logLines.join("\n");
    const m = [...text.matchAll(/^.*\beval time\s*=\s*([\d.]+) ms\s*\/\s*(\d+) runs.*$/gm)].filter(
        (x) => !/prompt eval time/.test(x[0]),
    );
    if (m.length === 0) return null;
    const last = m[m.length - 1];
    return { ms: Number(last[1]), runs: Number(last[2]) };
}

// warm-up
if (nWarmup > 0) await generate(nWarmup);
await sequence.clearHistory();
if (context.printTimings) {
    await context.printTimings(); // also resets llama.cpp's counters (llama_perf_context_print + reset)
}
logLines.length = 0;

let r = null;
let evalTimings = null;
const runRates = [];
for (let i = 0; i < nRuns; i++) {
    if (i > 0) await sequence.clearHistory();
    logLines.length = 0;
    const ri = await generate(nTokens);
    let ti = null;
    try {
        await context.printTimings(); // prints and resets the counters
        ti = readEvalTimings();
    } catch {
        /* ignore */
    }
    const rate = ri.tokens.length / ri.genSeconds;
    runRates.push(rate);
    if (r == null || rate > r.tokens.length / r.genSeconds) {
        r = ri;
        evalTimings = ti;
    }
}
/** Prompt processing: the first n − 1 tokens in one batch (llama.cpp's prompt eval), best of --runs. */
let promptTokensPerSecond;
for (let i = 0; i < (nPromptTokens > 1 ? nRuns : 0); i++) {
    await sequence.clearHistory();
    const t0 = performance.now();
    await sequence.evaluateWithoutGeneratingNewTokens(longPrompt.slice(0, -1));
    const rate = (longPrompt.length - 1) / ((performance.now() - t0) / 1000);
    promptTokensPerSecond = Math.max(promptTokensPerSecond ?? 0, rate);
}
const threadsUsed = context.currentThreads;

const rel = llama.llamaCppRelease;
const notes = [
    "tokensPerSecond = generated tokens / wall seconds of the generation loop (JS LlamaContextSequence.evaluate, " +
        "one single-token llama_decode + greedy sample per token); prompt evaluation excluded (promptSeconds)",
    `EOS/EOG not a stop condition (yieldEogToken); ${r.eogCount} EOG tokens among the generated`,
    `warm-up ${nWarmup} tokens then KV cache cleared`,
    nRuns > 1 ? `best of ${nRuns} runs` : "single run",
    `mmap ${model.useMmap ? "on" : "off"}, flash attention ${context.flashAttention ? "on" : "off"}, contextSize ${context.contextSize}`,
    evalTimings ? "llamaCppEvalTokensPerSecond from llama.cpp perf counters (decode only)" : "llama.cpp perf counters not captured",
];
const result = {
    tokensPerSecond: r.tokens.length / r.genSeconds,
    tokens: r.tokens.length,
    threads: threadsUsed,
    promptTokens: promptTokens.length,
    promptSeconds: r.promptSeconds,
    promptTokensPerSecond,
    runsTokensPerSecond: runRates,
    genSeconds: r.genSeconds,
    llamaCppEvalTokensPerSecond: evalTimings && evalTimings.ms > 0 ? (evalTimings.runs * 1000) / evalTimings.ms : null,
    llamaCppEvalRuns: evalTimings?.runs ?? null,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    llamaCppVersion: `${rel.repo}@${rel.release}`,
    nodeLlamaCppBuild: llama.buildType,
    model: path.basename(opt.model),
    notes: notes.join("; "),
};
if (opt.verbose) process.stderr.write(`generated text: ${JSON.stringify(model.detokenize(r.tokens))}\n`);
realStdoutWrite(JSON.stringify(result) + "\n");

await context.dispose();
await model.dispose();
await llama.dispose();
process.exit(0);
