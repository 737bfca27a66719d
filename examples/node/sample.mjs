#!/usr/bin/env node
// Run a ddpm-rt sampler graph (from `ddpm-rt export-sampler`) with ONNX Runtime for Node.js.
//
//   node sample.mjs --model sampler.onnx --out x0.npy [--x-init x_T.npy] [--noise z.npy]
//                   [--batch B --seed S] [--start K] [--stop M] [--threads T] [--opt-level L] [--repeat R]
//                   [--labels L.npy | --class C] [--guidance W] [--guidance-rescale R]      (guided graphs)
//                   [--image I.npy --mask M.npy]                                             (edit graphs)
//
// Everything the host needs is read from the model's metadata_props (key `ddpm_rt_sampler`):
// which graph it is (step | loop), the input names, dtypes and shapes, the step count and which
// steps draw noise. Inputs are validated against it before ONNX Runtime is called; a bad input
// ends with one `error: ...` line on stderr and exit code 2.
//
// Files are NumPy .npy, float32 little-endian, C order:
//   --x-init  [B, ...sample_shape]          x_T ~ N(0, I) (or the sample after `--start` steps)
//   --noise   [steps, B, ...sample_shape]   row i is z at step i, used only where sigma_i > 0
// Without --x-init / --noise the host draws them from its own seeded normal RNG
// (not NumPy's stream: pass files to reproduce a Python run exactly).
//
// Multistep samplers (dpmpp-2m, dpmpp-3m, unipc, ipndm): the step graph also takes hist_1..hist_H
// (past converted outputs) and returns hist_1_next..hist_H_next; metadata `history.carry` lists
// each {output, input} pair. The host feeds zeros at step 0, then each output back as its input.
//
// Guided graphs (conditional models, metadata `guided`): the conditioning inputs (e.g. class_labels,
// int64 [B]: --labels L.npy with dtype int64, or --class C for every sample), guidance_scale
// (--guidance, default: the model's own) and guidance_rescale (--guidance-rescale, default 0); the
// graph forms the null half and combines them itself.
// Edit graphs (metadata `edit`): start (--start K: the first step run), image and mask [B, ...]
// (--image, --mask; mask 1 = known); at step == start the step graph takes the noise z as x and
// noises the image itself. The full-loop edit graph also takes the per-step noise (--noise).

import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import ort from 'onnxruntime-node';

const SAMPLER_KEY = 'ddpm_rt_sampler';
const SUPPORTED_FORMAT = 1;

class InputError extends Error {}

// ---------------------------------------------------------------- ONNX metadata_props
// onnxruntime-node does not expose ModelMetadata, so read the ModelProto's metadata_props
// (field 14, repeated StringStringEntryProto {key = 1, value = 2}) straight from the protobuf.

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new InputError('truncated protobuf varint: not an ONNX file?');
    const b = buf[pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
}

function* protoFields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      [, pos] = readVarint(buf, pos);
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > end) throw new InputError('truncated protobuf field: not an ONNX file?');
      yield [field, pos, pos + len];
      pos += len;
    } else {
      throw new InputError(`unsupported protobuf wire type ${wire}: not an ONNX file?`);
    }
  }
}

function onnxMetadata(buf) {
  const props = {};
  for (const [field, s, e] of protoFields(buf)) {
    if (field !== 14) continue;
    let key = '';
    let value = '';
    for (const [f, a, b] of protoFields(buf, s, e)) {
      if (f === 1) key = buf.toString('utf8', a, b);
      else if (f === 2) value = buf.toString('utf8', a, b);
    }
    props[key] = value;
  }
  return props;
}

// ---------------------------------------------------------------- .npy float32 I/O

function readNpy(path, what, dtypes = ['<f4']) {
  let buf;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new InputError(`cannot read ${what} ${path}: ${e.code ?? e.message}`);
  }
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') {
    throw new InputError(`${what} ${path} is not a .npy file (save it with numpy.save)`);
  }
  const major = buf[6];
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const off = major === 1 ? 10 + hlen : 12 + hlen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, off);
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new InputError(`${what} ${path} has a malformed .npy header`);
  }
  if (!dtypes.includes(descr)) {
    throw new InputError(`${what} ${path} has dtype ${descr}; it must be ${dtypes.join(' or ')}: save x.astype(numpy.${descr === '<f4' ? 'int64' : 'float32'})`);
  }
  const width = descr === '<i8' ? 8 : 4;
  if (fortran === 'True') {
    throw new InputError(`${what} ${path} is Fortran-ordered; save numpy.ascontiguousarray(x)`);
  }
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  if (buf.length - off !== count * width) {
    throw new InputError(`${what} ${path}: header says shape [${shape}] but the file holds ${(buf.length - off) / width} values`);
  }
  // copy into a fresh, aligned buffer (the file buffer may sit at any byte offset)
  const data = width === 8 ? new BigInt64Array(count) : new Float32Array(count);
  new Uint8Array(data.buffer).set(buf.subarray(off, off + count * width));
  return { data, shape, dtype: descr };
}

function writeNpy(path, data, shape) {
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, Buffer.concat([head, Buffer.from(header, 'latin1'), body]));
  renameSync(tmp, path); // atomic: readers never see half a file
}

// ---------------------------------------------------------------- normal RNG (when no files)

function normalRng(seed) {
  // splitmix32 -> uniform in (0, 1) -> Box-Muller
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    z = (z ^ (z >>> 16)) >>> 0;
    return (z + 0.5) / 4294967296;
  };
  return (n) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const r = Math.sqrt(-2 * Math.log(uniform()));
      const th = 2 * Math.PI * uniform();
      out[i] = r * Math.cos(th);
      if (i + 1 < n) out[i + 1] = r * Math.sin(th);
    }
    return out;
  };
}

// ---------------------------------------------------------------- arguments

const USAGE = 'usage: node sample.mjs --model FILE.onnx --out OUT.npy [--x-init X.npy] [--noise Z.npy] '
  + '[--batch B] [--seed S] [--start K] [--stop M] [--threads T] [--opt-level disabled|basic|extended|all] '
  + '[--repeat R] [--labels L.npy | --class C] [--guidance W] [--guidance-rescale R] [--image I.npy --mask M.npy]';
const OPT_LEVELS = ['disabled', 'basic', 'extended', 'all'];

function parseArgs(argv) {
  const opts = { seed: '0' };
  const known = ['model', 'out', 'x-init', 'noise', 'batch', 'seed', 'start', 'stop', 'threads', 'opt-level', 'repeat',
    'labels', 'class', 'guidance', 'guidance-rescale', 'image', 'mask'];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m || !known.includes(m[1])) throw new InputError(`unknown argument ${a}; ${USAGE}`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new InputError(`--${m[1]} needs a value`);
    opts[m[1]] = value;
  }
  if (opts['opt-level'] !== undefined && !OPT_LEVELS.includes(opts['opt-level'])) {
    throw new InputError(`--opt-level must be one of ${OPT_LEVELS.join(', ')}, got ${opts['opt-level']}`);
  }
  for (const req of ['model', 'out']) {
    if (!opts[req]) throw new InputError(`--${req} is required; ${USAGE}`);
  }
  return opts;
}

function intOption(opts, name, min, max) {
  if (opts[name] === undefined) return undefined;
  const v = Number(opts[name]);
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new InputError(`--${name} must be an integer in [${min}, ${max}], got ${opts[name]}`);
  }
  return v;
}

function sameShape(a, b) {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

// ---------------------------------------------------------------- the sampler

function readSamplerGraph(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new InputError(`cannot read model ${path}: ${e.code ?? e.message}`);
  }
  const props = onnxMetadata(bytes);
  if (!(SAMPLER_KEY in props)) {
    throw new InputError(`${path} has no '${SAMPLER_KEY}' metadata: export a sampler graph with \`ddpm-rt export-sampler\``);
  }
  let desc;
  try {
    desc = JSON.parse(props[SAMPLER_KEY]);
  } catch {
    throw new InputError(`${path}: '${SAMPLER_KEY}' metadata is not valid JSON`);
  }
  if (desc.format !== SUPPORTED_FORMAT || !['step', 'loop'].includes(desc.graph)) {
    throw new InputError(`${path}: sampler format ${desc.format} / graph ${desc.graph} is not supported by this host (format ${SUPPORTED_FORMAT})`);
  }
  return { bytes, desc };
}

// The guided / edit inputs the metadata lists, from the command line (validated against it).
function extraFeeds(opts, desc, batch, xDims, start) {
  const feeds = {};
  const given = (name) => opts[name] !== undefined;
  for (const io of desc.inputs) {
    const cond = (desc.conditioning ?? []).find((c) => c.name === io.name);
    if (cond) {
      if (given('labels')) {
        const arr = readNpy(opts.labels, '--labels', cond.kind === 'class' ? ['<i8'] : ['<f4']);
        if (arr.shape[0] !== batch) throw new InputError(`--labels holds ${arr.shape[0]} rows for a batch of ${batch}`);
        feeds[io.name] = new ort.Tensor(cond.kind === 'class' ? 'int64' : 'float32', arr.data, arr.shape);
      } else if (given('class') && cond.kind === 'class') {
        const c = Number(opts.class);
        if (!Number.isInteger(c) || c < 0 || c >= cond.num_classes) {
          throw new InputError(`--class must be an integer in [0, ${cond.num_classes - 1}], got ${opts.class}`);
        }
        feeds[io.name] = new ort.Tensor('int64', new BigInt64Array(batch).fill(BigInt(c)), [batch]);
      } else {
        throw new InputError(`this graph is conditional (${io.name}): give --labels L.npy${cond.kind === 'class' ? ' or --class C' : ''}`);
      }
    } else if (io.name === 'guidance_scale' || io.name === 'guidance_rescale') {
      const flag = io.name === 'guidance_scale' ? 'guidance' : 'guidance-rescale';
      const v = Number(opts[flag] ?? (io.name === 'guidance_scale' ? (desc.default_guidance ?? 1) : 0));
      if (!Number.isFinite(v) || v < 0) throw new InputError(`--${flag} must be a number >= 0, got ${opts[flag]}`);
      feeds[io.name] = new ort.Tensor('float32', Float32Array.of(v), []);
    } else if (io.name === 'start') {
      feeds.start = new ort.Tensor('int64', BigInt64Array.of(BigInt(start)), []);
    } else if (io.name === 'image' || io.name === 'mask') {
      if (!given(io.name)) throw new InputError(`this is an edit graph: give --${io.name} ${io.name.toUpperCase()}.npy [batch, ...sample_shape]`);
      const arr = readNpy(opts[io.name], `--${io.name}`);
      if (!sameShape(arr.shape, xDims)) throw new InputError(`--${io.name} has shape [${arr.shape}]; this graph needs [${xDims}]`);
      feeds[io.name] = new ort.Tensor('float32', arr.data, xDims);
    }
  }
  for (const flag of ['labels', 'class', 'guidance', 'guidance-rescale', 'image', 'mask']) {
    const used = { labels: desc.guided, class: desc.guided, guidance: desc.guided, 'guidance-rescale': desc.guided,
      image: desc.edit, mask: desc.edit }[flag];
    if (given(flag) && !used) throw new InputError(`--${flag} is not an input of this graph (guided: ${!!desc.guided}, edit: ${!!desc.edit})`);
  }
  return feeds;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const { bytes, desc } = readSamplerGraph(opts.model);
  const steps = desc.steps;
  const sampleShape = desc.sample_shape;
  const perSample = sampleShape.reduce((a, b) => a * b, 1);
  const start = intOption(opts, 'start', 0, steps) ?? 0;
  const stop = intOption(opts, 'stop', 0, steps) ?? steps;
  if (start >= stop) throw new InputError(`--start (${start}) must be < --stop (${stop}); the plan has steps 0..${steps - 1}`);
  if (desc.graph !== 'step' && (stop !== steps || (start !== 0 && !desc.edit))) {
    throw new InputError(`the full-loop graph always runs all ${steps} steps; --start/--stop need a step graph (or an edit graph for --start)`);
  }
  // multistep step graphs carry a history (metadata `history.carry`), which starts as zeros
  // at the first step run and lives only inside one run: it cannot be resumed from x alone
  const carry = desc.history?.carry ?? [];
  if (carry.length && start !== 0 && !desc.edit) {
    throw new InputError(`--start ${start}: this ${desc.sampler} graph carries a history of past outputs, so it runs from step 0`);
  }
  const threads = intOption(opts, 'threads', 1, 1024);
  const repeat = intOption(opts, 'repeat', 1, 100000) ?? 1;
  const rng = normalRng(intOption(opts, 'seed', 0, 2 ** 32 - 1));

  // x_init: [B, ...sample_shape]
  let x;
  let batch;
  if (opts['x-init']) {
    const arr = readNpy(opts['x-init'], '--x-init');
    batch = arr.shape[0];
    if (arr.shape.length !== sampleShape.length + 1 || !sameShape(arr.shape.slice(1), sampleShape) || !(batch >= 1)) {
      throw new InputError(`--x-init has shape [${arr.shape}]; this graph needs [batch, ${sampleShape}] (batch >= 1)`);
    }
    x = arr.data;
  } else {
    batch = intOption(opts, 'batch', 1, 1 << 20) ?? 1;
    x = rng(batch * perSample);
  }
  const xDims = [batch, ...sampleShape];

  // per-step noise: [steps, B, ...sample_shape]; only rows at noise_steps are read
  let noise = null;
  const noisy = new Set(desc.noise_steps);
  const loopTakesNoise = desc.inputs.some((i) => i.name === 'noise');
  if (opts.noise) {
    if (desc.graph !== 'step' && !loopTakesNoise) throw new InputError('the full-loop graph is deterministic and takes no --noise');
    const arr = readNpy(opts.noise, '--noise');
    if (!sameShape(arr.shape, [steps, ...xDims])) {
      throw new InputError(`--noise has shape [${arr.shape}]; this graph needs [${[steps, ...xDims]}] (steps, batch, ...sample)`);
    }
    noise = arr.data;
  }

  const options = { executionProviders: ['cpu'], logSeverityLevel: 3 };
  if (threads !== undefined) options.intraOpNumThreads = threads;
  // ORT's default level is 'all'; 'basic' skips hardware-specific rewrites (e.g. NCHWc)
  if (opts['opt-level'] !== undefined) options.graphOptimizationLevel = opts['opt-level'];
  const session = await ort.InferenceSession.create(bytes, options);
  const inputNames = desc.inputs.map((i) => i.name);
  const outputName = desc.outputs[0].name;
  const extras = extraFeeds(opts, desc, batch, xDims, start);
  if (desc.graph !== 'step' && loopTakesNoise) {
    extras.noise = new ort.Tensor('float32', noise ?? rng(steps * batch * perSample), [steps, ...xDims]);
  }

  const sampleOnce = async (xInit) => {
    if (desc.graph !== 'step') {
      const res = await session.run({ [inputNames[0]]: new ort.Tensor('float32', xInit, xDims), ...extras });
      return res[outputName].data;
    }
    const [xName, stepName, noiseName] = inputNames;
    const n = batch * perSample;
    const zeros = new Float32Array(n);
    // multistep history: each carried output is fed back as its input at the next step
    const hist = Object.fromEntries(carry.map((c) => [c.input, zeros]));
    let xs = xInit;
    for (let i = start; i < stop; i++) {
      let z = zeros;
      if (noisy.has(i)) z = noise ? noise.subarray(i * n, (i + 1) * n) : rng(n);
      const feeds = {
        [xName]: new ort.Tensor('float32', xs, xDims),
        [stepName]: new ort.Tensor('int64', BigInt64Array.of(BigInt(i)), []),
        [noiseName]: new ort.Tensor('float32', z, xDims),
        ...extras,
      };
      for (const c of carry) feeds[c.input] = new ort.Tensor('float32', hist[c.input], xDims);
      const res = await session.run(feeds);
      xs = res[outputName].data;
      for (const c of carry) hist[c.input] = res[c.output].data;
    }
    return xs;
  };

  const times = [];
  let result;
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    result = await sampleOnce(x);
    times.push(performance.now() - t0);
  }
  writeNpy(opts.out, result, xDims);
  const sorted = [...times].sort((a, b) => a - b);
  console.log(JSON.stringify({
    graph: desc.graph, sampler: desc.sampler, steps_run: stop - start, start, stop, batch,
    run_ms: Number(sorted[Math.floor((sorted.length - 1) / 2)].toFixed(3)),
    run_ms_min: Number(sorted[0].toFixed(3)), repeat, out: opts.out, ort: ort.env.versions?.node,
  }));
}

main().catch((e) => {
  const msg = String(e?.message ?? e).split('\n')[0];
  process.stderr.write(`error: ${msg}\n`);
  process.exit(e instanceof InputError ? 2 : 1);
});
