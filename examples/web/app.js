// The page: controls, a Web Worker that samples (worker.js), progress, the samples on a canvas.
//
// `ddpm-rt web` serves this page with
//   GET /api/models                               the models it serves (shapes, samplers, defaults,
//                                                 conditioning and default guidance)
//   GET /graph.json?model=&sampler=&steps=&graph=[&edit=1]  a sampler graph's description (exported
//                                                 on first use; edit=1: the edit variant)
//   GET /graph.onnx?...                           the graph itself
//   GET /ort/...                                  onnxruntime-web from npm
//
// Hosts that drive the page (the browser test, the benchmark) call window.ddpmRt.run(options):
// the same path as the Sample button, with x_T and the per-step noise optionally supplied as
// Float32Arrays; it resolves with the samples and timings, or rejects with the message shown.
// A conditional model (catalog `conditioning`) gets guided graphs: the class picker ("one row per
// class", one class, or the null label) and the guidance slider feed them. The edit panel starts a
// run from the last result, the drawing pad or an uploaded image, at a strength (the first step
// run: N − min(⌊N·s⌋, N), as diffusers' img2img) and with a known region kept (mask presets), and
// shows input | mask | result. run() takes the same as options: class, cond ({name: values}),
// guidance, rescale, edit ({source, strength, start, mask}), and image / mask Float32Arrays.

import { canvasToSample, drawSamples } from './draw.js';

const $ = (id) => document.getElementById(id);
const ui = {
  model: $('model'), sampler: $('sampler'), steps: $('steps'), graph: $('graph'), batch: $('batch'),
  seed: $('seed'), ep: $('ep'), threads: $('threads'), run: $('run'), files: $('files'), env: $('env'),
  progress: $('progress'), progressText: $('progress-text'), message: $('message'), canvas: $('canvas'),
  stats: $('stats'), perStep: $('per-step'), form: $('controls'),
  condPanel: $('cond-panel'), classSel: $('class'), guidance: $('guidance'), guidanceValue: $('guidance-value'),
  rescale: $('rescale'), condNote: $('cond-note'), editSource: $('edit-source'), strength: $('strength'),
  strengthValue: $('strength-value'), mask: $('mask'), pad: $('pad'), padClear: $('pad-clear'), upload: $('upload'),
  editLast: $('edit-last'), figInput: $('fig-input'), figMask: $('fig-mask'), editInput: $('edit-input'),
  editMask: $('edit-mask'), resultCaption: $('result-caption'), view: $('view'),
};
const MASKS = ['none', 'left', 'right', 'top', 'bottom'];
const DEFAULT_BATCH = { image: 16, points: 1000 };
// onnxruntime-web 1.30.0 on WebGPU corrupted a graph input that an Identity handed straight to an
// output (the multistep history shift): the exporter now passes past outputs on as x·1 instead, and
// graphs of any history depth run on WebGPU (tests/cpu/test_web_browser.py checks unipc on digits).
// A graph exported before that fix still has the Identity: set this back to 1 to refuse them.
const WEBGPU_MAX_HISTORY = Infinity;

const state = {
  models: new Map(), env: {}, workers: new Map(), worker: null, nextId: 0, pending: new Map(), busy: false, lastRun: null,
  last: null, // the last samples {model, samples, shape, cols}: what "edit the last result" starts from
};

// ---------------------------------------------------------------- messages

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = !text;
  if (text) { // no stale samples or figures beside an error
    ui.canvas.getContext('2d').clearRect(0, 0, ui.canvas.width, ui.canvas.height);
    ui.stats.textContent = '';
    ui.perStep.textContent = '';
    ui.figInput.hidden = true;
    ui.figMask.hidden = true;
    ui.resultCaption.textContent = '';
    ui.view.classList.remove('editing');
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
  fillConditioning(m);
  for (const o of ui.mask.options) o.disabled = o.value !== 'none' && m.kind !== 'image'; // halves of an image
  if (ui.mask.selectedOptions[0]?.disabled) ui.mask.value = 'none';
  fillGraphs();
}

// A conditional model: the class picker (for its class input) and the guidance slider (its default w).
function fillConditioning(m) {
  const cond = m.conditioning ?? [];
  ui.condPanel.hidden = !cond.length;
  if (!cond.length) return;
  const cls = cond.find((c) => c.kind === 'class');
  ui.classSel.parentElement.hidden = !cls;
  if (cls) {
    const options = [new Option('one row per class', 'rows'),
      ...Array.from({ length: cls.num_classes }, (_, k) => new Option(`class ${k}`, String(k)))];
    if (cls.null !== null && cls.null !== undefined) options.push(new Option(`none (null label ${cls.null})`, 'null'));
    ui.classSel.replaceChildren(...options);
    ui.classSel.value = 'rows';
  }
  const w = m.guidance ?? 1; // the slider keeps the model's own default exactly (step 'any' off the 0.1 grid)
  ui.guidance.max = String(Math.max(10, Math.ceil(2 * w)));
  ui.guidance.step = Math.round(w * 1e6) % 1e5 === 0 ? '0.1' : 'any';
  ui.guidance.value = String(w);
  ui.rescale.value = '0';
  showSliders();
  const others = cond.filter((c) => c.kind !== 'class');
  ui.condNote.textContent = `${cond.map((c) => c.name).join(', ')}: the graph doubles the batch (conditional and `
    + `null halves) and combines u + w·(c − u); the model's default w is ${m.guidance ?? 1}`
    + (others.length ? `; ${others.map((c) => c.name).join(', ')} (tensor) take their null value here` : '');
}

function showSliders() {
  const hundredths = Math.round(Number(ui.guidance.value) * 100);
  ui.guidanceValue.textContent = (hundredths / 100).toFixed(hundredths % 10 ? 2 : 1);
  ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
}

function editing() {
  return ui.editSource.value !== 'none';
}

function fillGraphs() {
  const s = currentModel().samplers.find((x) => x.name === ui.sampler.value);
  const loop = ui.graph.querySelector('option[value=loop]');
  // a plain full-loop graph has no noise input; an edit one takes every step's noise
  loop.disabled = !s.deterministic && !editing();
  loop.textContent = !loop.disabled ? 'full-loop graph (one Run)' : 'full-loop graph (deterministic samplers only)';
  if (loop.disabled) ui.graph.value = 'step';
}

// auto: WebGPU on a real GPU adapter for the graphs it runs right; WASM otherwise, and on a software
// (fallback) adapter such as SwiftShader, which emulates the GPU on the CPU ~100x slower than WASM.
// Every kernel of the exported graphs fits WebGPU's default limits (the plan row is split at most
// 6 ways per Split node: 7 storage buffers per shader stage, the default allows 8).
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

function graphUrls(model, sampler, steps, graph, edit) {
  const q = new URLSearchParams({ model, sampler, steps: String(steps), graph, ...(edit ? { edit: '1' } : {}) });
  return { onnx: `graph.onnx?${q}`, description: `graph.json?${q}` };
}

// diffusers' img2img cut (ddpm_rt.editing.start_for_strength): of N steps the last min(⌊N·s⌋, N) run
function startForStrength(steps, strength) {
  if (!(strength > 0 && strength <= 1)) fail(`strength must be in (0, 1], got ${strength}`);
  const init = Math.min(Math.floor(steps * strength), steps);
  if (init === 0) {
    fail(`strength ${strength} with ${steps} steps runs no step (⌊${steps}·${strength}⌋ = 0); raise the strength `
      + `to ≥ ${(1 / steps).toPrecision(3)} or the steps to ≥ ${Math.ceil(1 / strength)}`);
  }
  return steps - init;
}

// 1 = known (kept), 0 = generated, [batch, C, H, W]
function maskFor(preset, batch, shape) {
  const n = batch * shape.reduce((a, b) => a * b, 1);
  const mask = new Float32Array(n);
  if (preset === 'none') return mask;
  if (shape.length !== 3) fail(`the mask '${preset}' keeps half of an image; this model samples points (choose nothing)`);
  const [, h, w] = shape;
  const keep = { left: (y, x) => x < w / 2, right: (y, x) => x >= w / 2, top: (y) => y < h / 2,
    bottom: (y) => y >= h / 2 }[preset];
  for (let i = 0; i < n; i++) mask[i] = keep(Math.floor(i / w) % h, i % w) ? 1 : 0;
  return mask;
}

// The image an edit starts from: [batch, ...sample] and the batch it sets.
function editImage(source, options, name, shape, range, batch) {
  const per = shape.reduce((a, b) => a * b, 1);
  if (source === 'given') {
    const image = options.image;
    if (!(image instanceof Float32Array) || image.length % per) fail(`image must be a Float32Array of [batch, ${shape}]`);
    return { image, batch: image.length / per };
  }
  if (source === 'last') {
    const last = state.last;
    if (!last || last.model !== name || last.shape.slice(1).join() !== shape.join()) {
      fail(`there is no last result of ${name} to edit: sample it first (then "Edit the last result")`);
    }
    return { image: new Float32Array(last.samples), batch: last.shape[0], cols: last.cols };
  }
  if (source === 'pad') {
    if (shape.length !== 3) fail('the drawing pad makes an image; this model samples points (edit the last result)');
    const one = canvasToSample(ui.pad, shape, range);
    const image = new Float32Array(batch * per);
    for (let b = 0; b < batch; b++) image.set(one, b * per);
    return { image, batch };
  }
  return fail(`start from '${source}' is not one of this page's choices: none, last, pad`);
}

// The conditioning values of a run: per the class picker (one row per class: label ⌊b / n⌋ with n per
// row), tensors at their null value; `options.cond` overrides ({name: values}).
function condFor(conditioning, options, batch, fixedBatch) {
  if (options.cond !== undefined) return { cond: options.cond, batch, cols: undefined, label: 'given labels' };
  const cond = {};
  let cols;
  let label = '';
  // a chosen graph file of a conditional model while an unconditional one is selected: one row per class
  const choice = ui.classSel.value || 'rows';
  for (const c of conditioning) {
    if (c.kind === 'class') {
      if (choice === 'rows') {
        const n = Math.ceil(batch / c.num_classes);
        if (!fixedBatch) batch = n * c.num_classes; // a full grid: n samples of every class
        cols = n;
        label = 'one row per class';
      } else {
        label = choice === 'null' ? `no class (null label ${c.null})` : `class ${choice}`;
      }
    }
  }
  for (const c of conditioning) {
    const size = batch * (c.shape ?? []).reduce((a, b) => a * b, 1);
    if (c.kind !== 'class') cond[c.name] = new Array(size).fill(c.null ?? 0);
    else if (choice === 'rows') cond[c.name] = Array.from({ length: batch }, (_, b) => Math.floor(b / cols));
    else cond[c.name] = new Array(batch).fill(choice === 'null' ? c.null : Number(choice));
  }
  return { cond, batch, cols, label };
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
  if (options.class !== undefined) setControl(ui.classSel, options.class);
  if (options.guidance !== undefined) ui.guidance.value = String(options.guidance);
  if (options.rescale !== undefined) ui.rescale.value = String(options.rescale);
  const edit = options.edit ?? {};
  if (options.image === undefined && edit.source !== undefined) setControl(ui.editSource, edit.source);
  if (options.image !== undefined && edit.source !== undefined && edit.source !== 'given') {
    fail(`an image handed to run() is the edit's source; drop edit.source '${edit.source}'`);
  }
  if (edit.strength !== undefined) ui.strength.value = String(edit.strength);
  if (typeof edit.mask === 'string') setControl(ui.mask, edit.mask);
  showSliders();
  fillGraphs();
  if (options.graph !== undefined) ui.graph.value = options.graph; // a loop graph of a stochastic sampler: the server says why not
  const model = options.model ?? ui.model.value;
  const desc = options.files?.description;
  const steps = desc ? desc.steps : Number(ui.steps.value);
  let batch = Number(ui.batch.value);
  const seed = Number(ui.seed.value);
  const graphKind = options.graph ?? ui.graph.value;
  const history = options.files ? (options.files.description.history?.depth ?? 0)
    : (currentModel()?.samplers.find((x) => x.name === ui.sampler.value)?.history ?? 0);
  const threads = Number(ui.threads.value);
  if (!Number.isInteger(batch) || batch < 1) fail(`batch must be a positive integer, got ${ui.batch.value}`);
  if (!Number.isInteger(seed) || seed < 0) fail(`seed must be a non-negative integer, got ${ui.seed.value}`);

  // conditioning and edit: from the model's catalog entry, or a chosen graph's own description
  const m = currentModel();
  const name = options.files ? `file:${options.files.name}` : model;
  const shape = desc ? desc.sample_shape : (m?.sample_shape ?? []);
  const range = desc ? desc.data_range : (m?.data_range ?? [-1, 1]);
  const conditioning = desc ? (desc.conditioning ?? []) : (state.models.has(model) ? (m.conditioning ?? []) : []);
  const source = options.image !== undefined ? 'given' : ui.editSource.value;
  const editRun = source !== 'none';
  const ep = chooseEp(ui.ep.value, history);
  let image = null;
  let mask = null;
  let start = 0;
  let cols;
  if (editRun) {
    ({ image, batch, cols } = editImage(source, options, name, shape, range, batch));
    start = edit.start ?? startForStrength(steps, Number(ui.strength.value));
    mask = edit.mask instanceof Float32Array ? edit.mask : (options.mask ?? maskFor(ui.mask.value, batch, shape));
  }
  const guided = conditioning.length > 0;
  let condLabel = '';
  let cond;
  if (guided) {
    const c = condFor(conditioning, options, batch, editRun);
    ({ cond, batch, label: condLabel } = c);
    cols = c.cols ?? cols;
  }
  // the slider when the panel shows (a conditional model is selected); else a chosen graph's own default
  const panel = !ui.condPanel.hidden;
  const guidance = Number(options.guidance ?? (panel ? ui.guidance.value : (desc?.default_guidance ?? 1)));
  const rescale = Number(options.rescale ?? (panel ? ui.rescale.value : 0));
  const graph = options.files ?? graphUrls(model, ui.sampler.value, steps, graphKind, editRun);

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
      ...(guided ? { cond, guidance, rescale } : {}),
      ...(editRun ? { edit: { start, image: new Float32Array(image), mask: new Float32Array(mask) } } : {}),
    }, options.files ? [] : transfer);
  });
  const dataRange = result.dataRange ?? [-1, 1];
  drawSamples(ui.canvas, result.samples, result.shape, dataRange, cols);
  ui.figInput.hidden = !editRun;
  ui.figMask.hidden = !editRun || result.shape.length !== 4;
  ui.resultCaption.textContent = editRun ? 'result' : '';
  ui.view.classList.toggle('editing', editRun);
  if (editRun) { // input | mask | result
    drawSamples(ui.editInput, image, result.shape, dataRange, cols);
    if (result.shape.length === 4) drawSamples(ui.editMask, mask, result.shape, [0, 1], cols);
  }
  state.last = { model: name, samples: new Float32Array(result.samples), shape: result.shape, cols };
  ui.editLast.disabled = false;
  const sorted = [...result.stepMs].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const where = ep === 'wasm' ? `wasm, ${ready.threads} thread${ready.threads > 1 ? 's' : ''}` : ep;
  ui.stats.textContent = `${options.files ? options.files.name : model} · ${result.sampler} ${result.steps} steps · `
    + `${result.graph} graph · ${where} · batch ${batch} — ${median.toFixed(2)} ms/step (median), `
    + `${result.totalMs.toFixed(1)} ms in all, ${(result.totalMs / batch).toFixed(2)} ms/sample; `
    + `session created in ${result.sessionMs.toFixed(0)} ms`
    + (guided ? ` · guided: ${condLabel}, w ${guidance}${rescale ? `, φ ${rescale}` : ''}` : '')
    + (editRun ? ` · edit: steps ${start}..${result.steps - 1} of ${result.steps}`
      + (edit.start === undefined ? ` (strength ${ui.strength.value})` : '')
      + `, keeps ${options.mask || edit.mask instanceof Float32Array ? 'the given mask' : ui.mask.value === 'none' ? 'nothing' : `the ${ui.mask.value} half`}` : '');
  ui.perStep.textContent = result.graph === 'step'
    ? `per step, ms: ${result.stepMs.map((ms) => ms.toFixed(1)).join(' · ')}`
    : `one Run for all ${result.steps} steps: ${result.totalMs.toFixed(1)} ms (${(result.totalMs / result.steps).toFixed(2)} ms per step)`;
  ui.progressText.textContent = `done: ${result.steps - result.start} steps`;
  return { ...result, threads: ep === 'wasm' ? ready.threads : null, model, cond: cond ?? null, cols: cols ?? null };
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
    return { vendor: info.vendor ?? '', architecture: info.architecture ?? '', fallback: info.isFallbackAdapter ?? false,
      storageBuffers: adapter.limits?.maxStorageBuffersPerShaderStage ?? 8 };
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
  ui.editSource.addEventListener('change', fillGraphs);
  ui.guidance.addEventListener('input', showSliders);
  ui.strength.addEventListener('input', showSliders);
  ui.editLast.addEventListener('click', () => {
    ui.editSource.value = 'last';
    fillGraphs();
    run().catch(() => {}); // the message is on the page
  });
  startPad();
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

// ---------------------------------------------------------------- the drawing pad

function startPad() {
  const pad = ui.pad;
  const g = pad.getContext('2d');
  const clear = () => {
    g.fillStyle = '#000';
    g.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  let last = null;
  const at = (ev) => {
    const r = pad.getBoundingClientRect();
    return [(ev.clientX - r.left) * (pad.width / r.width), (ev.clientY - r.top) * (pad.height / r.height)];
  };
  const stroke = (ev) => {
    const [x, y] = at(ev);
    const side = currentModel()?.sample_shape?.at(-1) ?? 16; // a pen ~1.5 sample pixels wide
    g.strokeStyle = '#fff';
    g.lineWidth = (1.5 * pad.width) / side;
    g.lineCap = 'round';
    g.beginPath();
    g.moveTo(...(last ?? [x, y]));
    g.lineTo(x, y);
    g.stroke();
    last = [x, y];
  };
  pad.addEventListener('pointerdown', (ev) => {
    try { pad.setPointerCapture(ev.pointerId); } catch { /* a synthetic pointer: no capture */ }
    last = null;
    stroke(ev);
    ui.editSource.value = 'pad';
    fillGraphs();
  });
  pad.addEventListener('pointermove', (ev) => { if (ev.buttons) stroke(ev); });
  pad.addEventListener('pointerup', () => { last = null; });
  ui.padClear.addEventListener('click', clear);
  ui.upload.addEventListener('change', async () => {
    const file = ui.upload.files[0];
    if (!file) return;
    try {
      const bitmap = await createImageBitmap(file);
      clear();
      const k = Math.min(pad.width / bitmap.width, pad.height / bitmap.height); // fit, centred
      const w = bitmap.width * k;
      const h = bitmap.height * k;
      g.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      ui.editSource.value = 'pad';
      fillGraphs();
      showMessage('');
    } catch (e) {
      showMessage(`${file.name} is not an image this browser can read: ${e.message ?? e}`);
    }
  });
}

window.ddpmRt = {
  run,
  get lastRun() { return state.lastRun; }, // the latest run's promise (the button's, a file's or run()'s)
  get env() { return state.env; },
  get models() { return [...state.models.values()]; },
  ready: start().then(() => true, (e) => { showMessage(e.message); return false; }),
};
