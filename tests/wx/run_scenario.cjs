'use strict';
// Runs one scenario of the generated WeChat glue in the wx simulator and records what happened.
//
//   node run_scenario.cjs JOB_JSON
//
// The job (written by tests/test_wechat_glue.py) names the project, the remote folder, the tfjs
// runtime, the inputs of each model, and a list of steps:
//   {op: "launch", project?}            a new app launch (fresh JS) on the same phone
//   {op: "load", models: [names], predict?, release?}
//                                        loadModel for each name at once, then predict; then
//                                        release(name) unless release is false (the models stay
//                                        loaded in the loader for the next steps)
//   {op: "server", fail_after?, delay_ms?, corrupt_once?: [paths under remote/]}
//   {op: "limits", ...}                  change the phone's limits (e.g. userDataBytes)
//   {op: "corrupt_file", path}           flip one byte of a USER_DATA_PATH file
//   {op: "app_file", path, bytes}        the app's own data in USER_DATA_PATH
//   {op: "app_storage", key, bytes}      the app's own data in wx storage
//   {op: "corrupt_storage", key}         change one base64 character of a storage value
//   {op: "storage_value", key, value}    set a storage key to any JSON value
//   {op: "inspect"}                      list user files and storage keys
//   {op: "configure_plugin", config?}    call requirePlugin('tfjsPlugin').configPlugin
//   {op: "page", page}                   open a page (navigateTo): Page(options), then onLoad;
//                                        its final data
//   {op: "back"}                         close the current page (navigateBack): onUnload
//   {op: "call", module, fn, args}       call an exported function of a main-package module
//   {op: "memory"}                       tfjs's live tensors, configPlugin calls, backends
//   {op: "lose_webgl_context"}           the phone drops the app's WebGL contexts
//   {op: "client", ...}                  how this phone's WeChat client answers (device.client)
// The result (JSON) goes to job.result: one record per step. Nothing is asserted here.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const {Device, USER_DATA_PATH} = require('./simulator.cjs');

// tfjs greets Node users on stdout; keep the console for diagnostics only.
const toStderr = (...args) => process.stderr.write(`${args.map(String).join(' ')}\n`);
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;

const DTYPES = {float32: Float32Array, int32: Int32Array};

function userFile(device, p) {
  if (!p.startsWith(`${USER_DATA_PATH}/`)) throw new Error(`not a USER_DATA_PATH path: ${p}`);
  return path.join(device.userDir, p.slice(USER_DATA_PATH.length + 1));
}

function listUserFiles(device) {
  const out = [];
  const walk = (dir) => {
    if (!fs.existsSync(dir)) return;
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else {
        const data = fs.readFileSync(full);
        out.push({
          path: `${USER_DATA_PATH}/${path.relative(device.userDir, full).split(path.sep).join('/')}`,
          bytes: data.length,
          sha256: crypto.createHash('sha256').update(data).digest('hex'),
        });
      }
    }
  };
  walk(device.userDir);
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

function inspect(device) {
  return {
    user_files: listUserFiles(device),
    user_bytes: device.userUsage(),
    storage: [...device.storage.entries()].map(([key, json]) => ({key, bytes: device.storageBytes(key, json)})),
    storage_bytes: device.storageUsage(),
  };
}

function readInput(tf, spec) {
  const Ctor = DTYPES[spec.dtype];
  const bytes = fs.readFileSync(spec.file);
  const aligned = new Uint8Array(bytes.byteLength);
  aligned.set(bytes);
  // The runtime runs in the app's realm, where Node's typed arrays are not `instanceof` its
  // own: hand it plain numbers, as app code would.
  return tf.tensor(Array.from(new Ctor(aligned.buffer)), spec.shape, spec.dtype);
}

async function predict(tf, model, specs, prefix) {
  const inputs = specs.map((s) => readInput(tf, s));
  try {
    let outs;
    const x = inputs.length === 1 ? inputs[0] : inputs;
    if (typeof model.executeAsync !== 'function') outs = model.predict(x);
    else {
      // execute, and executeAsync for a graph with control flow (tfjs warns when executeAsync
      // was not needed, and the app's console is checked).
      try {
        outs = model.execute(x);
      } catch (e) {
        outs = await model.executeAsync(x);
      }
    }
    outs = Array.isArray(outs) ? outs : [outs];
    const files = [];
    for (let i = 0; i < outs.length; i++) {
      const data = Float32Array.from(await outs[i].data());
      const file = `${prefix}-out${i}.bin`;
      fs.writeFileSync(file, Buffer.from(data.buffer));
      files.push({shape: outs[i].shape, file});
      outs[i].dispose();
    }
    return files;
  } finally {
    inputs.forEach((t) => t.dispose());
  }
}

async function loadStep(job, device, state, step, index) {
  const app = state.app;
  const c = app.counters;
  Object.assign(c, {requests: 0, requestUrls: [], byApi: {}, maxInFlight: c.inFlight, overflows: 0, bytesDownloaded: 0,
    bytesWritten: 0, filesWritten: 0, storageWrites: 0, requireAsync: [], digests: 0});
  const serverLog = device.server ? device.server.log.length : 0;
  if (device.server) device.server.maxInFlight = device.server.inFlight;
  const warnStart = app.console.warn.length;
  const loader = app.require('bundler/loader.js');
  const {loadModel} = loader;
  const t0 = Date.now();
  const runs = step.models.map(async (name, j) => {
    const progress = [];
    const warnings = [];
    const record = {model: name, progress, warnings};
    try {
      const model = await loadModel(name, {
        onProgress: (f) => progress.push(f),
        onWarning: (w) => warnings.push(String(w)),
      });
      record.ok = true;
      record.kind = typeof model.executeAsync === 'function' ? 'GraphModel' : 'LayersModel';
      record.model_object = model;
    } catch (e) {
      record.ok = false;
      record.error = e && e.message ? e.message : String(e && e.errMsg ? e.errMsg : e);
      record.error_is_error = e instanceof vm.runInContext('Error', app.context) || e instanceof Error;
    }
    record.j = j;
    return record;
  });
  const results = await Promise.all(runs);
  const ms = Date.now() - t0;
  const tf = app.tfjs ? app.tfjs.tf : null;
  const objects = new Set();
  state.models = state.models || new Map();
  for (const r of results) {
    if (r.ok) {
      r.same_object_as_first = r.model_object === results.find((x) => x.model === r.model && x.ok).model_object;
      r.same_object_as_last_step = r.model_object === state.models.get(r.model);
      objects.add(r.model_object);
      const specs = job.inputs[r.model];
      if (specs && step.predict !== false) {
        r.outputs = await predict(tf, r.model_object, specs, path.join(job.out_dir, `step${index}-${r.j}`));
      }
    }
  }
  for (const r of results) if (r.ok) state.models.set(r.model, r.model_object);
  for (const r of results) delete r.model_object;
  if (step.release !== false) {
    // The loader owns the models it caches: give them back to it (a loader without release
    // leaves them to the caller).
    if (typeof loader.release === 'function') {
      for (const name of new Set(results.filter((r) => r.ok).map((r) => r.model))) await loader.release(name);
    } else {
      for (const m of objects) m.dispose();
    }
  }
  return {
    op: 'load', ms, results, by_api: c.byApi,
    requests: c.requests, request_urls: c.requestUrls, max_in_flight: c.maxInFlight, overflows: c.overflows,
    bytes_downloaded: c.bytesDownloaded, bytes_written: c.bytesWritten, files_written: c.filesWritten, digests: c.digests,
    storage_writes: c.storageWrites, require_async: c.requireAsync,
    server_requests: device.server ? device.server.log.slice(serverLog) : [],
    server_max_in_flight: device.server ? device.server.maxInFlight : 0,
    console_warn: app.console.warn.slice(warnStart),
    console_error: app.console.error.slice(),
    state: inspect(device),
  };
}

async function runStep(job, device, state, step, index) {
  switch (step.op) {
    case 'launch':
      if (step.project) device.setProject(step.project);
      state.app = device.launch({tfjsDir: job.tfjs_dir});
      state.models = new Map();
      return {op: 'launch'};
    case 'load':
      return loadStep(job, device, state, step, index);
    case 'server':
      if ('fail_after' in step) {
        device.server.failAfter = step.fail_after;
        device.server.good = 0;
      }
      if ('delay_ms' in step) device.server.delayMs = step.delay_ms;
      for (const p of step.corrupt_once || []) device.server.corruptOnce.add(p);
      return {op: 'server'};
    case 'limits':
      Object.assign(device.limits, step.limits);
      return {op: 'limits'};
    case 'corrupt_file': {
      const file = userFile(device, step.path);
      const data = fs.readFileSync(file);
      data[data.length >> 1] ^= 0x5a;
      fs.writeFileSync(file, data);
      return {op: 'corrupt_file'};
    }
    case 'app_file': {
      const file = userFile(device, step.path);
      fs.mkdirSync(path.dirname(file), {recursive: true});
      fs.writeFileSync(file, Buffer.alloc(step.bytes, 7));
      return {op: 'app_file'};
    }
    case 'app_storage':
      device.storage.set(step.key, JSON.stringify('x'.repeat(step.bytes)));
      return {op: 'app_storage'};
    case 'corrupt_storage': {
      const json = device.storage.get(step.key);
      if (json === undefined) throw new Error(`no storage key ${step.key}`);
      const at = json.length >> 1;
      const swapped = json[at] === 'A' ? 'B' : 'A';
      device.storage.set(step.key, json.slice(0, at) + swapped + json.slice(at + 1));
      return {op: 'corrupt_storage'};
    }
    case 'storage_value':
      device.storage.set(step.key, JSON.stringify(step.value));
      return {op: 'storage_value'};
    case 'inspect':
      return {op: 'inspect', state: inspect(device)};
    case 'configure_plugin': {
      const plugin = state.app.context.requirePlugin('tfjsPlugin');
      const tfjs = state.app.tfjsModule();
      const config = Object.assign({
        fetchFunc: tfjs.fetchWechat.fetchFunc(), tf: tfjs.tf, canvas: {},
        backendName: `wechat-webgl-${Date.now()}`,
      }, step.config || {});
      try {
        plugin.configPlugin(config);
        return {op: 'configure_plugin', ok: true};
      } catch (e) {
        return {op: 'configure_plugin', ok: false, error: e.message};
      }
    }
    case 'page': {
      const warnStart = state.app.console.warn.length;
      const configs = state.app.pluginConfigs.length;
      const data = await state.app.openPage(step.page, step.query);
      return {op: 'page', data, plugin_configs: state.app.pluginConfigs.slice(configs),
        console_warn: state.app.console.warn.slice(warnStart), console_error: state.app.console.error.slice()};
    }
    case 'back': {
      const data = await state.app.closePage();
      return {op: 'back', data, console_error: state.app.console.error.slice()};
    }
    case 'call': {
      const mod = state.app.require(step.module);
      const value = await mod[step.fn](...(step.args || []));
      // Values that are not plain data (a tfjs runtime, a model) are reported by their type.
      const plain = value === undefined || value === null || ['boolean', 'number', 'string'].includes(typeof value);
      return {op: 'call', value: value === undefined ? null : plain ? value : `[${typeof value}]`};
    }
    case 'memory': {
      const tf = state.app.tfjs ? state.app.tfjs.tf : null;
      return {op: 'memory', tensors: tf ? tf.memory().numTensors : 0, backend: tf ? tf.getBackend() || null : null,
        plugin_configs: state.app.pluginConfigs.length, backends: state.app.backendReport()};
    }
    case 'lose_webgl_context':
      state.app.loseWebglContexts();
      return {op: 'lose_webgl_context'};
    case 'client':
      Object.assign(device.client, step.client);
      return {op: 'client'};
    default:
      throw new Error(`unknown step ${JSON.stringify(step.op)}`);
  }
}

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const device = new Device({
    project: job.project,
    userDir: job.user_dir,
    remote: job.remote ? {dir: job.remote.dir, baseUrl: job.remote.base_url} : null,
    limits: job.limits,
    overflow: job.overflow,
  });
  await device.start();
  if (device.server && job.server) device.server.delayMs = job.server.delay_ms || 0;
  const records = [];
  const state = {app: device.launch({tfjsDir: job.tfjs_dir})};
  let error = null;
  try {
    for (let i = 0; i < job.steps.length; i++) records.push(await runStep(job, device, state, job.steps[i], i));
  } catch (e) {
    error = e && e.stack ? e.stack : String(e);
  } finally {
    await device.stop();
  }
  fs.writeFileSync(job.result, JSON.stringify({records, error}));
}

main().catch((e) => {
  process.stderr.write(`run_scenario: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
