// The sampler, off the page's main thread: load a ddpm-rt sampler graph and its description
// (the sidecar JSON that `ddpm-rt export-sampler` writes beside the .onnx: the same JSON as the
// graph's `ddpm_rt_sampler` metadata, which the browser API cannot read), check one against the
// other, and run it with onnxruntime-web on WebGPU or WebAssembly.
//
// Messages in:  {type: 'init', threads, webgpuLimits, webgpuMaxHistory}  once, before any run
//               {type: 'run', id, graph, ep, batch, seed, xInit?, noise?}
//     graph = {onnx: URL, description: URL} | {name, bytes: ArrayBuffer, description: object}
//     xInit = Float32Array [batch, ...sample] and noise = Float32Array [steps, batch, ...sample]
//     (optional: without them the worker draws both from `seed`)
// Messages out: {type: 'ready', threads, isolated, ort}
//               {type: 'status', id, text}
//               {type: 'progress', id, step, steps, ms}                  after every Run
//               {type: 'done', id, samples, shape, stepMs, totalMs, sessionMs, ep, graph, sampler, steps}
//               {type: 'error', id, message}                             one line, shown on the page
//
// Inputs are fed by name from the description's `inputs` list: FEEDS says where each named
// input comes from, and `history.carry` pairs each multistep output with the input it feeds
// at the next step. A graph input this page does not know is refused before anything runs;
// a new kind of input (class labels, a guidance scale, an edit mask, ...) is one more entry.

import * as ort from './ort/ort.min.mjs';
import { normalRng } from './rng.js';

const SAMPLER_FORMAT = 1; // the `format` of the description this page reads
const GRAPHS = ['step', 'loop'];
const EPS = ['webgpu', 'wasm'];

class PageError extends Error {}

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
ort.env.logLevel = 'error';

// ---------------------------------------------------------------- the description

function checkDescription(desc, where) {
  if (desc === null || typeof desc !== 'object' || Array.isArray(desc)) {
    throw new PageError(`${where} is not a JSON object, so not a ddpm-rt sampler description`);
  }
  if (!('graph' in desc) || !Array.isArray(desc.inputs) || !Array.isArray(desc.outputs)) {
    const manifest = 'format_version' in desc && 'spec' in desc;
    throw new PageError(`${where} is not a ddpm-rt sampler description (no graph, inputs, outputs)`
      + (manifest ? '; it is a bundle manifest: export a sampler graph with `ddpm-rt export-sampler`' : ''));
  }
  if (desc.format !== SAMPLER_FORMAT) {
    throw new PageError(`${where}: sampler description format ${desc.format}; this page reads format ${SAMPLER_FORMAT}`);
  }
  if (!GRAPHS.includes(desc.graph)) {
    throw new PageError(`${where}: graph kind '${desc.graph}'; this page runs ${GRAPHS.join(' and ')} graphs`);
  }
  const shape = desc.sample_shape;
  if (!Array.isArray(shape) || !shape.length || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new PageError(`${where}: sample_shape ${JSON.stringify(shape)} is not a list of positive integers`);
  }
  if (!Number.isInteger(desc.steps) || desc.steps < 1) {
    throw new PageError(`${where}: steps ${desc.steps} is not a positive integer`);
  }
}

function checkGraphAgainstDescription(session, desc, name) {
  const same = (a, b) => a.length === b.length && a.every((v) => b.includes(v));
  const want = desc.inputs.map((i) => i.name);
  const wantOut = desc.outputs.map((o) => o.name);
  if (!same(session.inputNames, want) || !same(session.outputNames, wantOut)) {
    throw new PageError(`${name} is not the ddpm-rt sampler graph its description describes: the graph `
      + `takes [${session.inputNames}] and gives [${session.outputNames}], the description lists `
      + `[${want}] -> [${wantOut}] (export it with \`ddpm-rt export-sampler\`, which writes both)`);
  }
}

// Where each named graph input comes from (`s` is the running state of one sampling run).
const FEEDS = {
  x: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.x, s.dims) },
  x_init: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.x, s.dims) },
  step: { dtype: 'int64', value: (s) => new ort.Tensor('int64', BigInt64Array.of(BigInt(s.step)), []) },
  noise: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.noiseAt(s.step), s.dims) },
};

function feedPlan(desc) {
  const carry = desc.graph === 'step' ? (desc.history?.carry ?? []) : [];
  const carried = new Map(carry.map((c) => [c.input, c.output]));
  const plan = desc.inputs.map((inp) => {
    if (carried.has(inp.name)) {
      return { name: inp.name, value: (s) => new ort.Tensor('float32', s.hist[inp.name], s.dims) };
    }
    const feed = FEEDS[inp.name];
    if (feed === undefined) {
      throw new PageError(`the graph takes an input '${inp.name}' that this page does not supply yet `
        + `(it feeds ${Object.keys(FEEDS).join(', ')} and the multistep history)`);
    }
    if (inp.dtype !== feed.dtype) {
      throw new PageError(`the description declares input '${inp.name}' as ${inp.dtype}; this page feeds ${feed.dtype}`);
    }
    return { name: inp.name, value: feed.value };
  });
  const carriedOut = new Set(carry.map((c) => c.output));
  const sampleOut = desc.outputs.find((o) => !carriedOut.has(o.name));
  if (sampleOut === undefined) throw new PageError('the description lists no sample output');
  return { plan, carry, sampleOut: sampleOut.name };
}

// ---------------------------------------------------------------- loading

async function fetchOk(url, what) {
  let res;
  try {
    res = await fetch(url);
  } catch (e) {
    throw new PageError(`cannot fetch the ${what} ${url}: ${e.message ?? e} (is \`ddpm-rt web\` still running?)`);
  }
  if (!res.ok) {
    const body = (await res.text()).trim().split('\n')[0];
    throw new PageError(`cannot fetch the ${what} ${url}: HTTP ${res.status}${body ? ` — ${body}` : ''}`);
  }
  return res;
}

async function loadDescription(graph) {
  if (graph.bytes !== undefined) {
    checkDescription(graph.description, `${graph.name ?? 'the graph'}'s description`);
    return graph.description;
  }
  const res = await fetchOk(graph.description, 'sampler description');
  let desc;
  try {
    desc = await res.json();
  } catch {
    throw new PageError(`${graph.description} is not JSON, so not a ddpm-rt sampler description`);
  }
  checkDescription(desc, graph.description);
  return desc;
}

// WebGPU errors that ORT only logs (a kernel the device refuses runs as nothing: zeros, or
// stale memory); each run checks this list, so such a run fails instead of drawing garbage.
const gpuErrors = [];
let raiseGpuLimits = true; // false: WebGPU's default limits, as ORT alone asks (page URL ?webgpu-limits=default)

async function checkEp(ep) {
  if (!EPS.includes(ep)) {
    throw new PageError(`unknown execution provider '${ep}'; this page runs ${EPS.join(' or ')}`);
  }
  if (ep === 'webgpu' && ort.env.webgpu.adapter === undefined) {
    const adapter = self.navigator.gpu ? await self.navigator.gpu.requestAdapter() : null;
    if (!adapter) {
      throw new PageError('WebGPU is not available in this browser (no GPU adapter): choose WASM '
        + '(Chromium without a GPU exposes one with --enable-unsafe-webgpu and SwiftShader)');
    }
    // ORT asks for the adapter's own limits on a few sizes, but leaves storage buffers per shader
    // stage at WebGPU's default of 8; a multistep step graph splits its plan row into 8-9
    // coefficients (one Split: 9-10 buffers), so ask for what the adapter allows
    const request = adapter.requestDevice.bind(adapter);
    adapter.requestDevice = async (desc = {}) => {
      const limits = raiseGpuLimits ? { maxStorageBuffersPerShaderStage: adapter.limits.maxStorageBuffersPerShaderStage } : {};
      const device = await request({ ...desc, requiredLimits: { ...desc.requiredLimits, ...limits } });
      device.addEventListener('uncapturederror', (ev) => gpuErrors.push(String(ev.error?.message ?? ev.error)));
      return device;
    };
    ort.env.webgpu.adapter = adapter;
  }
}

function checkGpuErrors(where) {
  if (gpuErrors.length) {
    const first = gpuErrors[0].split('\n')[0].split('. ')[0];
    gpuErrors.length = 0;
    throw new PageError(`WebGPU refused a kernel of this graph ${where} (${first}), so its samples would `
      + 'be wrong; choose WASM');
  }
}

// Graphs whose history is longer than this are refused on WebGPU (set by the page: app.js says why).
let webgpuMaxHistory = Infinity;

function checkWebGpuGraph(desc) {
  const depth = desc.history?.depth ?? 0;
  if (depth > webgpuMaxHistory) {
    throw new PageError(`on WebGPU this ${desc.sampler} graph (a history of ${depth} past outputs) gives wrong `
      + `samples with onnxruntime-web ${ort.env.versions?.web ?? ''}: choose WASM, or a sampler with a history `
      + `of at most ${webgpuMaxHistory} (ddim, ddpm, dpmpp-2m)`);
  }
}

const sessions = new Map(); // key -> {session, desc, feeds, sessionMs}

async function openGraph(id, graph, ep) {
  await checkEp(ep);
  const key = `${ep}|${graph.bytes !== undefined ? `file:${graph.name}:${graph.bytes.byteLength}` : graph.onnx}`;
  if (sessions.has(key)) return sessions.get(key);
  status(id, 'fetching the graph description (the server exports the graph on first use)');
  const desc = await loadDescription(graph);
  if (ep === 'webgpu') checkWebGpuGraph(desc);
  const name = graph.bytes !== undefined ? graph.name : graph.onnx;
  let bytes = graph.bytes;
  if (bytes === undefined) {
    status(id, `fetching the ${desc.graph} graph`);
    bytes = await (await fetchOk(graph.onnx, `${desc.graph} graph`)).arrayBuffer();
  }
  status(id, `creating the ${ep} session`);
  const t0 = performance.now();
  let session;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: [ep] });
  } catch (e) {
    const msg = String(e?.message ?? e).split('\n')[0];
    throw new PageError(`ONNX Runtime (${ep}) cannot load ${name}: ${msg}`);
  }
  const entry = { session, desc, feeds: null, sessionMs: performance.now() - t0 };
  checkGraphAgainstDescription(session, desc, name);
  entry.feeds = feedPlan(desc);
  sessions.set(key, entry);
  return entry;
}

// ---------------------------------------------------------------- sampling

function checkSupplied(arr, count, what) {
  if (!(arr instanceof Float32Array)) throw new PageError(`${what} must be a Float32Array`);
  if (arr.length !== count) throw new PageError(`${what} holds ${arr.length} numbers; this run needs ${count}`);
}

async function sample(msg) {
  const { id, graph, ep } = msg;
  const { session, desc, feeds, sessionMs } = await openGraph(id, graph, ep);
  if (ep === 'webgpu') checkGpuErrors('while loading');
  const batch = msg.batch;
  if (!Number.isInteger(batch) || batch < 1) throw new PageError(`batch must be a positive integer, got ${batch}`);
  const perSample = desc.sample_shape.reduce((a, b) => a * b, 1);
  const n = batch * perSample;
  const steps = desc.steps;
  const rng = normalRng(msg.seed ?? 0);
  let x;
  if (msg.xInit !== undefined) {
    checkSupplied(msg.xInit, n, 'x_init');
    x = msg.xInit;
  } else {
    x = rng(n);
  }
  let noiseAt;
  if (msg.noise !== undefined) {
    checkSupplied(msg.noise, steps * n, 'noise');
    noiseAt = (i) => msg.noise.subarray(i * n, (i + 1) * n);
  } else { // draw only the rows that are read (sigma_i > 0), in step order; zeros elsewhere
    const noisy = new Set(desc.noise_steps ?? []);
    const zeros = new Float32Array(n);
    noiseAt = (i) => (noisy.has(i) ? rng(n) : zeros);
  }
  const state = { x, dims: [batch, ...desc.sample_shape], step: 0, noiseAt, hist: {} };
  for (const c of feeds.carry) state.hist[c.input] = new Float32Array(n); // zeros at step 0

  const runs = desc.graph === 'step' ? steps : 1;
  const stepMs = [];
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) {
    state.step = i;
    const feed = {};
    for (const f of feeds.plan) feed[f.name] = f.value(state);
    const ts = performance.now();
    let res;
    try {
      res = await session.run(feed);
    } catch (e) {
      throw new PageError(`ONNX Runtime (${ep}) failed at step ${i}: ${String(e?.message ?? e).split('\n')[0]}`);
    }
    if (ep === 'webgpu') checkGpuErrors(`at step ${i}`);
    state.x = res[feeds.sampleOut].data;
    for (const c of feeds.carry) state.hist[c.input] = res[c.output].data;
    const ms = performance.now() - ts;
    if (desc.graph === 'step') {
      stepMs.push(ms);
      self.postMessage({ type: 'progress', id, step: i + 1, steps, ms });
    } else { // one Run for every step: the per-step figure is the mean
      for (let k = 0; k < steps; k++) stepMs.push(ms / steps);
      self.postMessage({ type: 'progress', id, step: steps, steps, ms: ms / steps });
    }
  }
  const totalMs = performance.now() - t0;
  if (!state.x.every(Number.isFinite)) {
    throw new PageError('the samples contain NaN or inf: this graph does not sample on this execution provider');
  }
  return {
    samples: new Float32Array(state.x), shape: state.dims, stepMs, totalMs, sessionMs, ep, graph: desc.graph,
    sampler: desc.sampler, steps, dataRange: desc.data_range,
  };
}

function status(id, text) {
  self.postMessage({ type: 'status', id, text });
}

self.onmessage = async (event) => {
  const msg = event.data;
  if (msg.type === 'init') {
    // WASM threads need SharedArrayBuffer, i.e. a cross-origin isolated page (COOP + COEP headers)
    const isolated = self.crossOriginIsolated === true;
    ort.env.wasm.numThreads = isolated ? msg.threads : 1;
    raiseGpuLimits = msg.webgpuLimits !== 'default';
    webgpuMaxHistory = msg.webgpuMaxHistory ?? Infinity;
    self.postMessage({ type: 'ready', threads: ort.env.wasm.numThreads, isolated, ort: ort.env.versions?.web });
    return;
  }
  if (msg.type !== 'run') return;
  try {
    const out = await sample(msg);
    self.postMessage({ type: 'done', id: msg.id, ...out }, [out.samples.buffer]);
  } catch (e) {
    const message = e instanceof PageError ? e.message : `unexpected ${e?.name ?? 'error'}: ${String(e?.message ?? e).split('\n')[0]}`;
    self.postMessage({ type: 'error', id: msg.id, message });
  }
};
