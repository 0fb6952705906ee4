'use strict';
// Loads converted models in a real tfjs runtime (pure JS, cpu backend) and runs them on inputs
// prepared by bundler/models/verify_node.py. The runtime is either the npm package
// (`tfjs_dir`) or the very file a bundle ships (`runtime_file`): a CommonJS module that
// exports `{tf}` (WeChat) or a script that sets the global `tf` (web).
//
//   node verify_runner.cjs JOB_JSON_PATH
//
// stdout carries exactly one JSON line per model and nothing else; everything tfjs logs goes
// to stderr. Exit status 0 means the job ran (models may still have failed); 2 means the job
// file itself was unusable.

const fs = require('fs');
const path = require('path');

// tfjs writes a "looks like you are running TensorFlow.js in Node.js" banner and warnings
// through console.*, and the Python side parses stdout line by line: keep stdout for our
// JSON lines only, by redirecting everything else before tfjs is required.
const stdoutWrite = process.stdout.write.bind(process.stdout);
const toStderr = (...args) => {
  process.stderr.write(args.map((a) => (typeof a === 'string' ? a : require('util').inspect(a))).join(' ') + '\n');
};
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;
console.debug = toStderr;
process.stdout.write = (chunk, encoding, cb) => process.stderr.write(chunk, encoding, cb);

function emit(obj) {
  stdoutWrite(JSON.stringify(obj) + '\n');
}

function fail(message) {
  process.stderr.write(`verify_runner: ${message}\n`);
  process.exit(2);
}

const DTYPES = {
  float32: Float32Array,
  int32: Int32Array,
  bool: Uint8Array, // one byte per value, 0 or 1
};

// Error texts as thrown by tfjs 3.x and 4.x (tfjs-converter, tfjs-layers, tfjs-core).
const OP_PATTERNS = [
  /Unknown op '([^']+)'/, // converter: op has no mapping at all
  /Node type (\S+) is not implemented/, // converter: op known to a category but not executable
];
const KERNEL_PATTERN = /Kernel '([^']+)' not registered for backend/; // core: no such kernel
const LAYER_PATTERN = /Unknown layer: (\S+?)\.(?:\s|$)/;

function matchFirst(patterns, text) {
  for (const re of patterns) {
    const m = re.exec(text);
    if (m) return m[1];
  }
  return null;
}

function errorText(err) {
  if (err instanceof Error) return err.message || String(err);
  return String(err);
}

function readBytes(file) {
  const buf = fs.readFileSync(file);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function loadArtifacts(modelJsonPath) {
  const modelJson = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
  const base = path.dirname(modelJsonPath);
  const manifest = modelJson.weightsManifest || [];
  const weightSpecs = [];
  const parts = [];
  let total = 0;
  for (const group of manifest) {
    for (const spec of group.weights || []) weightSpecs.push(spec);
    for (const rel of group.paths || []) {
      const file = path.resolve(base, rel);
      let bytes;
      try {
        bytes = readBytes(file);
      } catch (e) {
        if (e && e.code === 'ENOENT') {
          throw new Error(`weight file not found: ${file} (listed in ${modelJsonPath})`);
        }
        throw new Error(`cannot read weight file ${file}: ${errorText(e)}`);
      }
      parts.push(bytes);
      total += bytes.byteLength;
    }
  }
  // One contiguous ArrayBuffer: tfjs 3.x accepts nothing else (4.x also takes a list).
  const weightData = new ArrayBuffer(total);
  const view = new Uint8Array(weightData);
  let offset = 0;
  for (const p of parts) {
    view.set(p, offset);
    offset += p.byteLength;
  }
  const artifacts = { modelTopology: modelJson.modelTopology, weightSpecs, weightData };
  for (const key of [
    'format',
    'generatedBy',
    'convertedBy',
    'signature',
    'userDefinedMetadata',
    'modelInitializer',
    'initializerSignature',
    'trainingConfig',
  ]) {
    if (modelJson[key] !== undefined) artifacts[key] = modelJson[key];
  }
  return artifacts;
}

function readInput(tf, spec) {
  const Ctor = DTYPES[spec.dtype];
  if (!Ctor) throw new Error(`input ${spec.name}: unsupported dtype ${spec.dtype}`);
  const bytes = fs.readFileSync(spec.file);
  const count = spec.shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength !== count * Ctor.BYTES_PER_ELEMENT) {
    throw new Error(
      `input ${spec.name}: ${spec.file} holds ${bytes.byteLength} bytes, ` +
        `shape [${spec.shape}] of ${spec.dtype} needs ${count * Ctor.BYTES_PER_ELEMENT}`,
    );
  }
  // Copy into a fresh, aligned buffer: Buffer slices may sit at odd offsets of a shared pool.
  const aligned = new Uint8Array(bytes.byteLength);
  aligned.set(bytes);
  return tf.tensor(new Ctor(aligned.buffer), spec.shape, spec.dtype);
}

function asList(result) {
  if (Array.isArray(result)) return result;
  return [result];
}

async function runGraph(tf, model, inputs) {
  let feed;
  if (model.inputs.length === 1 && inputs.length === 1) {
    // Name mismatches are common (signature key vs node name); one input is unambiguous.
    feed = inputs[0].tensor;
  } else {
    feed = {};
    for (const inp of inputs) feed[inp.name] = inp.tensor;
  }
  return asList(await model.executeAsync(feed));
}

function runLayers(tf, model, inputs, options) {
  if (inputs.length === 1) return asList(model.predict(inputs[0].tensor, options));
  const byName = new Map(inputs.map((i) => [i.name, i.tensor]));
  const names = model.inputNames || [];
  const ordered = names.every((n) => byName.has(n))
    ? names.map((n) => byName.get(n))
    : inputs.map((i) => i.tensor);
  return asList(model.predict(ordered, options));
}

function runOnce(tf, model, job, inputs) {
  if (job.format === 'graph') return runGraph(tf, model, inputs);
  // One row per batch: the split-and-concat path, against a reference that ran one batch.
  return runLayers(tf, model, inputs, job.one_row_batches ? { batchSize: 1 } : undefined);
}

// Many rows (the user's samples) run `chunk_rows` at a time, the outputs joined: memory stays
// bounded, and a model that fixes its batch size gets batches of that size.
async function run(tf, model, job, inputs) {
  const rows = inputs.length ? inputs[0].tensor.shape[0] : 0;
  const chunk = job.chunk_rows;
  if (!chunk || !(rows > chunk)) return runOnce(tf, model, job, inputs);
  const parts = [];
  for (let start = 0; start < rows; start += chunk) {
    const size = Math.min(chunk, rows - start);
    const slice = inputs.map((inp) => ({ name: inp.name, tensor: tf.slice(inp.tensor, start, size) }));
    try {
      parts.push(await runOnce(tf, model, job, slice));
    } finally {
      for (const s of slice) s.tensor.dispose();
    }
  }
  const joined = parts[0].map((_, k) => tf.concat(parts.map((p) => p[k])));
  for (const p of parts) for (const t of p) t.dispose();
  return joined;
}

// A second batch size, for paths only some batches take: a layers model predicts its rows in
// batches of one (tfjs-layers splits a batch past its batchSize, 32 by default, and
// concatenates the parts); a graph model runs the first row alone. Each row must predict what
// it predicted in the first run.
async function otherBatch(tf, model, job, inputs, first, tensors) {
  let outs;
  let rows;
  if (job.format === 'layers') {
    rows = Math.min(inputs[0].tensor.shape[0], job.other_batch_rows || Infinity);
    const some = inputs.map((inp) => {
      const t = tf.slice(inp.tensor, 0, rows);
      tensors.push(t);
      return { name: inp.name, tensor: t };
    });
    outs = runLayers(tf, model, some, { batchSize: 1 });
  } else {
    rows = 1;
    const one = inputs.map((inp) => {
      const t = tf.slice(inp.tensor, 0, 1);
      tensors.push(t);
      return { name: inp.name, tensor: t };
    });
    outs = await runGraph(tf, model, one);
  }
  tensors.push(...outs);
  let maxDiff = 0;
  for (let i = 0; i < outs.length; i++) {
    const got = await outs[i].data();
    const want = (await first[i].data()).subarray(0, got.length);
    if (outs[i].shape[0] !== rows || got.length !== want.length) {
      throw new Error(`${rows} row(s) gave output ${i} of shape [${outs[i].shape}]`);
    }
    for (let k = 0; k < got.length; k++) {
      const d = Math.abs(got[k] - want[k]);
      if (Number.isFinite(d)) maxDiff = Math.max(maxDiff, d);
      else if (!(Number.isNaN(got[k]) && Number.isNaN(want[k])) && got[k] !== want[k]) maxDiff = Infinity;
    }
  }
  return { rows, batch_size: 1, max_diff: maxDiff };
}

async function runModel(tf, job) {
  const base = { id: job.id };
  let model;
  let stage = 'load';
  const tensors = [];
  try {
    const t0 = performance.now();
    const artifacts = loadArtifacts(job.model_json);
    const handler = { load: async () => artifacts };
    if (job.format === 'graph') {
      model = await tf.loadGraphModel(handler);
    } else if (job.format === 'layers') {
      model = await tf.loadLayersModel(handler);
    } else {
      throw new Error(`unknown model format ${JSON.stringify(job.format)}`);
    }
    const loadMs = performance.now() - t0;

    stage = 'predict';
    const t1 = performance.now();
    const inputs = job.inputs.map((spec) => {
      const tensor = readInput(tf, spec);
      tensors.push(tensor);
      return { name: spec.name, tensor };
    });
    const outs = await run(tf, model, job, inputs);
    tensors.push(...outs);
    const outputs = [];
    for (let i = 0; i < outs.length; i++) {
      const data = await outs[i].data();
      const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
      const file = `${job.outputs_prefix}${i}.bin`;
      fs.writeFileSync(file, Buffer.from(f32.buffer, f32.byteOffset, f32.byteLength));
      outputs.push({ shape: outs[i].shape, file });
    }
    const predictMs = performance.now() - t1;
    stage = 'batch';
    const batch = job.other_batch ? await otherBatch(tf, model, job, inputs, outs, tensors) : null;
    emit({ ...base, ok: true, outputs, load_ms: loadMs, predict_ms: predictMs, batch });
  } catch (err) {
    const message = errorText(err);
    emit({
      ...base,
      ok: false,
      stage,
      error: message,
      unsupported_op: matchFirst(OP_PATTERNS, message),
      missing_kernel: (KERNEL_PATTERN.exec(message) || [null, null])[1],
      unsupported_layer: (LAYER_PATTERN.exec(message) || [null, null])[1],
    });
  } finally {
    for (const t of tensors) {
      try {
        t.dispose();
      } catch (_) {
        // already disposed
      }
    }
    if (model && typeof model.dispose === 'function') {
      try {
        model.dispose();
      } catch (_) {
        // a half-loaded model may not dispose cleanly; the process ends soon anyway
      }
    }
  }
}

function loadRuntime(job) {
  if (!job.runtime_file) return require(require.resolve('@tensorflow/tfjs', { paths: [job.tfjs_dir] }));
  if (job.runtime_format === 'cjs') return require(job.runtime_file).tf;
  // A script for a page: run it as a browser would, in the global scope, where it sets `tf`.
  // On Node, tfjs asks for Node's own modules (util) with require.
  globalThis.require = require;
  require('vm').runInThisContext(fs.readFileSync(job.runtime_file, 'utf8'), { filename: job.runtime_file });
  return globalThis.tf;
}

function readJob(jobPath) {
  let job;
  try {
    job = JSON.parse(fs.readFileSync(jobPath, 'utf8'));
  } catch (e) {
    fail(`cannot read job file ${jobPath}: ${errorText(e)}`);
  }
  if (!job || !(typeof job.tfjs_dir === 'string' || job.runtime_file) || !Array.isArray(job.models)) {
    fail(`job file ${jobPath} needs "tfjs_dir" or "runtime_file", and "models" (list)`);
  }
  for (const m of job.models) {
    if (!m || typeof m.id !== 'string' || typeof m.model_json !== 'string' ||
        !Array.isArray(m.inputs) || typeof m.outputs_prefix !== 'string') {
      fail(`job file ${jobPath}: each model needs id, model_json, format, inputs, outputs_prefix`);
    }
  }
  return job;
}

async function main() {
  if (process.argv.length !== 3) fail('usage: node verify_runner.cjs JOB_JSON_PATH');
  const job = readJob(process.argv[2]);
  let tf;
  try {
    tf = loadRuntime(job);
  } catch (e) {
    fail(`cannot load ${job.runtime_file || `@tensorflow/tfjs from ${job.tfjs_dir}`}: ${errorText(e)}`);
  }
  // Pure JS cpu backend: deterministic and available everywhere; webgl is absent in Node.
  await tf.setBackend('cpu');
  await tf.ready();
  for (const m of job.models) {
    await runModel(tf, m);
  }
}

main().then(
  () => {
    process.exitCode = 0;
  },
  (err) => {
    process.stderr.write(`verify_runner: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  },
);
