// The sampler, off the page's main thread: load a ddpm-rt sampler graph and its description
// (the sidecar JSON that `ddpm-rt export-sampler` writes beside the .onnx: the same JSON as the
// graph's `ddpm_rt_sampler` metadata, which the browser API cannot read), check one against the
// other, and run it with onnxruntime-web on WebGPU or WebAssembly.
//
// Messages in:  {type: 'init', threads, webgpuLimits, webgpuMaxHistory}  once, before any run
//               {type: 'run', id, graph, ep, batch, seed, xInit?, noise?, cond?, guidance?, rescale?, edit?}
//     graph = {onnx: URL, description: URL} | {name, bytes: ArrayBuffer, description: object}
//     xInit = Float32Array [batch, ...sample] and noise = Float32Array [steps, batch, ...sample]
//     (optional: without them the worker draws both from `seed`)
//     guided graphs (description `guided`): cond = {name: numbers [batch, ...shape]} for each of the
//     description's `conditioning` inputs (class ids, the null id for "no label"), guidance = w
//     (default: the description's default_guidance), rescale = φ (default 0)
//     edit graphs (description `edit`): edit = {start, image, mask}; image and mask Float32Array
//     [batch, ...sample] (mask 1 = known); the run is steps start .. steps-1, and x_T is the noise z
//     the graph mixes into the image at the start
// Messages out: {type: 'ready', threads, isolated, ort}
//               {type: 'status', id, text}
//               {type: 'progress', id, step, steps, ms}                  after every Run
//               {type: 'done', id, samples, shape, stepMs, totalMs, sessionMs, ep, graph, sampler, steps,
//                start, guided, edit}
//               {type: 'error', id, message}                             one line, shown on the page
//
// Inputs are fed by name from the description's `inputs` list: FEEDS says where each named
// input comes from, the description's `conditioning` list names the conditioning inputs, and
// `history.carry` pairs each multistep output with the input it feeds at the next step. A graph
// input this page does not know is refused before anything runs; a new kind of input is one
// more FEEDS entry.

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

const scalar = (dtype, v) => new ort.Tensor(dtype, dtype === 'int64' ? BigInt64Array.of(BigInt(v)) : Float32Array.of(v), []);

// Where each named graph input comes from (`s` is the running state of one sampling run, `inp`
// the input's entry in the description).
const FEEDS = {
  x: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.x, s.dims) },
  x_init: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.x, s.dims) },
  step: { dtype: 'int64', value: (s) => scalar('int64', s.step) },
  // the step's noise [batch, ...]; a full-loop edit graph takes every step's at once [steps, batch, ...]
  noise: {
    dtype: 'float32',
    value: (s, inp) => (inp.shape[0] === 'steps' ? new ort.Tensor('float32', s.allNoise(), [s.steps, ...s.dims])
      : new ort.Tensor('float32', s.noiseAt(s.step), s.dims)),
  },
  guidance_scale: { dtype: 'float32', value: (s) => scalar('float32', s.guidance) },
  guidance_rescale: { dtype: 'float32', value: (s) => scalar('float32', s.rescale) },
  start: { dtype: 'int64', value: (s) => scalar('int64', s.start) },
  image: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.image, s.dims) },
  mask: { dtype: 'float32', value: (s) => new ort.Tensor('float32', s.mask, s.dims) },
};

// A conditioning input (description `conditioning`): the run's values, [batch, ...shape].
function condFeed(c) {
  return { dtype: c.dtype, value: (s) => new ort.Tensor(c.dtype, s.cond[c.name], [s.dims[0], ...(c.shape ?? [])]) };
}

function feedPlan(desc) {
  const carry = desc.graph === 'step' ? (desc.history?.carry ?? []) : [];
  const carried = new Map(carry.map((c) => [c.input, c.output]));
  const conditioning = new Map((desc.conditioning ?? []).map((c) => [c.name, c]));
  const plan = desc.inputs.map((inp) => {
    if (carried.has(inp.name)) {
      return { name: inp.name, value: (s) => new ort.Tensor('float32', s.hist[inp.name], s.dims) };
    }
    const feed = conditioning.has(inp.name) ? condFeed(conditioning.get(inp.name)) : FEEDS[inp.name];
    if (feed === undefined) {
      throw new PageError(`the graph takes an input '${inp.name}' that this page does not supply yet `
        + `(it feeds ${Object.keys(FEEDS).join(', ')}, the conditioning inputs and the multistep history)`);
    }
    if (inp.dtype !== feed.dtype) {
      throw new PageError(`the description declares input '${inp.name}' as ${inp.dtype}; this page feeds ${feed.dtype}`);
    }
    return { name: inp.name, value: (s) => feed.value(s, inp) };
  });
  const carriedOut = new Set(carry.map((c) => c.output));
  const sampleOut = desc.outputs.find((o) => !carriedOut.has(o.name));
  if (sampleOut === undefined) throw new PageError('the description lists no sample output');
  return { plan, carry, sampleOut: sampleOut.name };
}

// The conditioning values of a run, checked against the description: class ids in 0..K-1 or the
// null id, tensors of the right size and finite.
function condValues(desc, given, batch) {
  const out = {};
  for (const c of desc.conditioning ?? []) {
    const values = given?.[c.name];
    const size = batch * (c.shape ?? []).reduce((a, b) => a * b, 1);
    if (values === undefined || values === null) {
      throw new PageError(`this model is conditional: the run needs ${c.name} (${size} value${size > 1 ? 's' : ''})`);
    }
    const arr = [...values];
    if (arr.length !== size) throw new PageError(`${c.name} holds ${arr.length} values; this run needs ${size}`);
    if (c.kind === 'class') {
      const allowed = (v) => Number.isInteger(v) && ((v >= 0 && v < c.num_classes) || v === c.null);
      const bad = arr.find((v) => !allowed(Number(v)));
      if (bad !== undefined) {
        throw new PageError(`${c.name}: label ${bad} is out of range; this model takes 0..${c.num_classes - 1}`
          + (c.null !== null && c.null !== undefined ? ` (and ${c.null} for no label)` : ''));
      }
      out[c.name] = BigInt64Array.from(arr, (v) => BigInt(v));
    } else {
      if (!arr.every((v) => Number.isFinite(Number(v)))) throw new PageError(`${c.name}: values must be finite numbers`);
      out[c.name] = Float32Array.from(arr, Number);
    }
  }
  for (const name of Object.keys(given ?? {})) {
    if (!(desc.conditioning ?? []).some((c) => c.name === name)) {
      throw new PageError(`${name} is not a conditioning input of this graph (it takes `
        + `${(desc.conditioning ?? []).map((c) => c.name).join(', ') || 'none: the model is unconditional'})`);
    }
  }
  return out;
}

function editValues(desc, edit, n) {
  if (!desc.edit) {
    if (edit) throw new PageError('this graph is not an edit graph (its description says edit: false); ask for edit=1');
    return { start: 0 };
  }
  if (!edit) throw new PageError('this is an edit graph: the run needs edit = {start, image, mask}');
  const { start } = edit;
  if (!Number.isInteger(start) || start < 0 || start >= desc.steps) {
    throw new PageError(`the edit's start must be an integer in [0, ${desc.steps - 1}] (the first step run), got ${start}`);
  }
  checkSupplied(edit.image, n, 'the edit image');
  checkSupplied(edit.mask, n, 'the edit mask');
  return { start, image: edit.image, mask: edit.mask };
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
    // stage at WebGPU's default of 8. The exported graphs fit that (plan rows split at most 6 ways);
    // a graph of another origin may not, so ask for what the adapter allows (?webgpu-limits=default
    // keeps ORT's request, for the refusal test)
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
  const cond = condValues(desc, msg.cond, batch);
  const edit = editValues(desc, msg.edit, n);
  const guidance = msg.guidance ?? desc.default_guidance ?? 1;
  const rescale = msg.rescale ?? 0;
  if (desc.guided && (!Number.isFinite(guidance) || !Number.isFinite(rescale) || rescale < 0 || rescale > 1)) {
    throw new PageError(`guidance must be a finite number and rescale in [0, 1], got ${guidance} and ${rescale}`);
  }
  const allNoise = () => { // [steps, batch, ...]: a full-loop edit graph reads every step's row
    if (msg.noise !== undefined) return msg.noise;
    const all = new Float32Array(steps * n);
    for (let i = edit.start; i < steps; i++) all.set(noiseAt(i), i * n);
    return all;
  };
  const state = {
    x, dims: [batch, ...desc.sample_shape], step: edit.start, steps, noiseAt, allNoise, hist: {}, cond, guidance,
    rescale, ...edit,
  };
  for (const c of feeds.carry) state.hist[c.input] = new Float32Array(n); // zeros at the first step

  const first = desc.graph === 'step' ? edit.start : 0;
  const runs = desc.graph === 'step' ? steps : 1;
  const run = steps - edit.start; // the steps this run takes
  const stepMs = [];
  const t0 = performance.now();
  for (let i = first; i < runs; i++) {
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
      self.postMessage({ type: 'progress', id, step: i + 1 - first, steps: run, ms });
    } else { // one Run for every step: the per-step figure is the mean
      for (let k = 0; k < run; k++) stepMs.push(ms / run);
      self.postMessage({ type: 'progress', id, step: run, steps: run, ms: ms / run });
    }
  }
  const totalMs = performance.now() - t0;
  if (!state.x.every(Number.isFinite)) {
    throw new PageError('the samples contain NaN or inf: this graph does not sample on this execution provider');
  }
  return {
    samples: new Float32Array(state.x), shape: state.dims, stepMs, totalMs, sessionMs, ep, graph: desc.graph,
    sampler: desc.sampler, steps, start: edit.start, guided: !!desc.guided, edit: !!desc.edit,
    guidance: desc.guided ? guidance : null, dataRange: desc.data_range,
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
