// The page: controls, a Web Worker that samples (worker.js), progress, the samples on a canvas.
//
// `ddpm-rt web` serves this page with
//   GET /api/models                               the models it serves (shapes, samplers, defaults)
//   GET /graph.json?model=&sampler=&steps=&graph= a sampler graph's description (exported on first use)
//   GET /graph.onnx?...                           the graph itself
//   GET /ort/...                                  onnxruntime-web from npm
//
// Hosts that drive the page (the browser test, the benchmark) call window.ddpmRt.run(options):
// the same path as the Sample button, with x_T and the per-step noise optionally supplied as
// Float32Arrays; it resolves with the samples and timings, or rejects with the message shown.

import { drawSamples } from './draw.js';

const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), sampler: $('sampler'), steps: $('steps'), graph: $('graph'), batch: $('batch'),
  seed: $('seed'), ep: $('ep'), threads: $('threads'), run: $('run'), files: $('files'), env: $('env'),
  progress: $('progress'), progressText: $('progress-text'), message: $('message'), canvas: $('canvas'),
  stats: $('stats'), perStep: $('per-step'), form: $('controls'),
};
const DEFAULT_BATCH = { image: 16, points: 1000 };
// onnxruntime-web 1.30.0 on WebGPU corrupted a graph input that an Identity handed straight to an
// output (the multistep history shift): the exporter now passes past outputs on as x·1 instead, and
// graphs of any history depth run on WebGPU (tests/cpu/test_web_browser.py checks unipc on digits).
// A graph exported before that fix still has the Identity: set this back to 1 to refuse them.
const WEBGPU_MAX_HISTORY = Infinity;

const state = {
  models: new Map(), env: {}, workers: new Map(), worker: null, nextId: 0, pending: new Map(), busy: false, lastRun: null,
};

// ---------------------------------------------------------------- messages

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = !text;
  if (text) { // no stale samples or figures beside an error
    ui.canvas.getContext('2d').clearRect(0, 0, ui.canvas.width, ui.canvas.height);
    ui.stats.textContent = '';
    ui.perStep.textContent = '';
  }
}

function fail(text) {
  showMessage(text);
  ui.progressText.textContent = '';
  throw new Error(text);
}

// ---------------------------------------------------------------- the worker

// One worker per WASM thread count (ORT fixes it when WASM starts), kept for later runs.
function worker(threads) {
  if (!state.workers.has(threads)) state.workers.set(threads, startWorker(threads));
  state.worker = state.workers.get(threads);
  return state.worker.ready;
}

function startWorker(threads) {
  const handle = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const ready = new Promise((resolve, reject) => {
    handle.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === 'ready') {
        resolve(msg);
        return;
      }
      const job = state.pending.get(msg.id);
      if (!job) return;
      if (msg.type === 'status') ui.progressText.textContent = msg.text;
      else if (msg.type === 'progress') job.progress(msg);
      else {
        state.pending.delete(msg.id);
        if (msg.type === 'done') job.resolve(msg);
        else job.reject(new Error(msg.message));
      }
    };
    handle.onerror = (event) => {
      const text = `the sampling worker failed to start: ${event.message ?? 'see the browser console'}`;
      for (const job of state.pending.values()) job.reject(new Error(text));
      state.pending.clear();
      reject(new Error(text));
    };
  });
  // ?webgpu-limits=default: WebGPU's default device limits, as ORT alone asks (to see what they break)
  const webgpuLimits = new URLSearchParams(location.search).get('webgpu-limits') ?? 'adapter';
  handle.postMessage({ type: 'init', threads, webgpuLimits, webgpuMaxHistory: WEBGPU_MAX_HISTORY });
  return { threads, handle, ready };
}

// ---------------------------------------------------------------- controls

function currentModel() {
  return state.models.get(ui.model.value);
}

function fillSamplers() {
  const m = currentModel();
  ui.sampler.replaceChildren(...m.samplers.map((s) => new Option(s.name, s.name)));
  ui.sampler.value = m.default.sampler;
  ui.steps.value = m.default.steps;
  ui.steps.max = m.max_steps;
  ui.batch.value = DEFAULT_BATCH[m.kind];
  fillGraphs();
}

function fillGraphs() {
  const s = currentModel().samplers.find((x) => x.name === ui.sampler.value);
  const loop = ui.graph.querySelector('option[value=loop]');
  loop.disabled = !s.deterministic; // a full-loop graph has no noise input
  loop.textContent = s.deterministic ? 'full-loop graph (one Run)' : 'full-loop graph (deterministic samplers only)';
  if (loop.disabled) ui.graph.value = 'step';
}

// auto: WebGPU on a real GPU adapter for the graphs it runs right; WASM otherwise, and on a software
// (fallback) adapter such as SwiftShader, which emulates the GPU on the CPU ~100x slower than WASM
function chooseEp(ep, history) {
  if (ep !== 'auto') return ep;
  const gpu = state.env.webgpu;
  return gpu && !gpu.fallback && history <= WEBGPU_MAX_HISTORY ? 'webgpu' : 'wasm';
}

function setControl(el, value) {
  if (value === undefined) return;
  el.value = String(value);
  if (el.value !== String(value)) {
    const choices = [...el.options].filter((o) => !o.disabled).map((o) => o.value);
    el.selectedIndex = 0;
    fail(`${el.id} '${value}' is not one of this page's choices: ${choices.join(', ')}`);
  }
}

// ---------------------------------------------------------------- a run

function graphUrls(model, sampler, steps, graph) {
  const q = new URLSearchParams({ model, sampler, steps: String(steps), graph });
  return { onnx: `graph.onnx?${q}`, description: `graph.json?${q}` };
}

function run(options = {}) {
  state.lastRun = runGuarded(options);
  return state.lastRun;
}

async function runGuarded(options) {
  if (state.busy) throw new Error('a run is already in progress');
  state.busy = true;
  ui.run.disabled = true;
  showMessage('');
  try {
    return await runNow(options);
  } catch (e) {
    fail(e.message);
  } finally {
    state.busy = false;
    ui.run.disabled = false;
  }
}

async function runNow(options) {
  if (state.models.has(options.model)) { // an unknown name goes to the server, which names the ones it has
    ui.model.value = options.model;
    fillSamplers();
  }
  setControl(ui.sampler, options.sampler);
  if (options.sampler !== undefined) fillGraphs();
  setControl(ui.ep, options.ep);
  setControl(ui.threads, options.threads);
  for (const key of ['steps', 'batch', 'seed']) if (options[key] !== undefined) ui[key].value = String(options[key]);
  if (options.graph !== undefined) ui.graph.value = options.graph; // a loop graph of a stochastic sampler: the server says why not
  const model = options.model ?? ui.model.value;
  const steps = Number(ui.steps.value);
  const batch = Number(ui.batch.value);
  const seed = Number(ui.seed.value);
  const graphKind = options.graph ?? ui.graph.value;
  const history = options.files ? (options.files.description.history?.depth ?? 0)
    : (currentModel()?.samplers.find((x) => x.name === ui.sampler.value)?.history ?? 0);
  const ep = chooseEp(ui.ep.value, history);
  const threads = Number(ui.threads.value);
  if (!Number.isInteger(batch) || batch < 1) fail(`batch must be a positive integer, got ${ui.batch.value}`);
  if (!Number.isInteger(seed) || seed < 0) fail(`seed must be a non-negative integer, got ${ui.seed.value}`);
  const graph = options.files ?? graphUrls(model, ui.sampler.value, steps, graphKind);

  const ready = await worker(threads);
  ui.progress.value = 0;
  ui.progressText.textContent = 'loading…';
  const id = ++state.nextId;
  const result = await new Promise((resolve, reject) => {
    state.pending.set(id, {
      resolve, reject,
      progress: (msg) => {
        ui.progress.max = msg.steps;
        ui.progress.value = msg.step;
        ui.progressText.textContent = `step ${msg.step}/${msg.steps} · ${msg.ms.toFixed(1)} ms`;
      },
    });
    const transfer = [options.xInit?.buffer, options.noise?.buffer].filter((b) => b !== undefined);
    state.worker.handle.postMessage({
      type: 'run', id, graph, ep, batch, seed, xInit: options.xInit, noise: options.noise,
    }, options.files ? [] : transfer);
  });
  drawSamples(ui.canvas, result.samples, result.shape, result.dataRange ?? [-1, 1]);
  const sorted = [...result.stepMs].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const where = ep === 'wasm' ? `wasm, ${ready.threads} thread${ready.threads > 1 ? 's' : ''}` : ep;
  ui.stats.textContent = `${options.files ? options.files.name : model} · ${result.sampler} ${result.steps} steps · `
    + `${result.graph} graph · ${where} · batch ${batch} — ${median.toFixed(2)} ms/step (median), `
    + `${result.totalMs.toFixed(1)} ms in all, ${(result.totalMs / batch).toFixed(2)} ms/sample; `
    + `session created in ${result.sessionMs.toFixed(0)} ms`;
  ui.perStep.textContent = result.graph === 'step'
    ? `per step, ms: ${result.stepMs.map((ms) => ms.toFixed(1)).join(' · ')}`
    : `one Run for all ${result.steps} steps: ${result.totalMs.toFixed(1)} ms (${(result.totalMs / result.steps).toFixed(2)} ms per step)`;
  ui.progressText.textContent = `done: ${result.steps} steps`;
  return { ...result, threads: ep === 'wasm' ? ready.threads : null, model };
}

// ---------------------------------------------------------------- local files

async function readLocalGraph(fileList) {
  const files = [...fileList];
  const onnx = files.find((f) => f.name.endsWith('.onnx'));
  const json = files.find((f) => f.name.endsWith('.json'));
  if (!onnx || !json) {
    fail('choose two files: an exported sampler graph X.onnx and its description X.json '
      + '(`ddpm-rt export-sampler` writes both)');
  }
  let description;
  try {
    description = JSON.parse(await json.text());
  } catch {
    fail(`${json.name} is not JSON, so not a ddpm-rt sampler description`);
  }
  return { name: onnx.name, bytes: await onnx.arrayBuffer(), description };
}

// ---------------------------------------------------------------- start

async function detectWebGpu() {
  if (!navigator.gpu) return null;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info ?? {};
    return { vendor: info.vendor ?? '', architecture: info.architecture ?? '', fallback: info.isFallbackAdapter ?? false };
  } catch {
    return null;
  }
}

async function start() {
  const isolated = self.crossOriginIsolated === true;
  const cores = navigator.hardwareConcurrency || 1;
  state.env = { isolated, cores, webgpu: await detectWebGpu() };
  const maxThreads = isolated ? Math.min(cores, 16) : 1;
  for (let t = 1; t <= maxThreads; t++) ui.threads.append(new Option(String(t), String(t)));
  ui.threads.value = String(maxThreads);
  let catalog;
  try {
    const res = await fetch('api/models');
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    catalog = await res.json();
  } catch (e) {
    fail(`cannot fetch the model list api/models: ${e.message} (is \`ddpm-rt web\` running?)`);
  }
  state.env.ort = catalog.ort;
  for (const m of catalog.models) state.models.set(m.name, m);
  ui.model.replaceChildren(...catalog.models.map((m) => new Option(m.name, m.name)));
  fillSamplers();
  const gpu = state.env.webgpu;
  const adapter = gpu ? [gpu.vendor, gpu.architecture].filter(Boolean).join(' ') || 'an adapter' : '';
  ui.env.textContent = `onnxruntime-web ${catalog.ort} · WebGPU: `
    + (!gpu ? 'not available (auto runs WASM)'
      : gpu.fallback ? `software adapter only (${adapter}; auto runs WASM)` : `${adapter} (auto runs WebGPU; unipc and dpmpp-3m on WASM)`)
    + ` · WASM threads: ${isolated ? `up to ${maxThreads} (cross-origin isolated)` : '1 (page not cross-origin isolated)'}`;
  ui.model.addEventListener('change', fillSamplers);
  ui.sampler.addEventListener('change', fillGraphs);
  ui.form.addEventListener('submit', (event) => {
    event.preventDefault();
    run().catch(() => {}); // the message is on the page
  });
  ui.files.addEventListener('change', () => {
    if (!ui.files.files.length) return;
    state.lastRun = readLocalGraph(ui.files.files).then((files) => run({ files }));
    state.lastRun.catch(() => {}); // the message is on the page
  });
  ui.run.disabled = false;
}

window.ddpmRt = {
  run,
  get lastRun() { return state.lastRun; }, // the latest run's promise (the button's, a file's or run()'s)
  get env() { return state.env; },
  get models() { return [...state.models.values()]; },
  ready: start().then(() => true, (e) => { showMessage(e.message); return false; }),
};
