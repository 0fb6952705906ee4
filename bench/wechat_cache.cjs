'use strict';
// `make bench`, the WeChat part (run by bench/wechat_cache.py): a warm load of one model from
// the bundler's file cache against the tfjsPlugin's localStorageIO route, on one simulated
// phone (tests/wx/simulator.cjs, used as a library), in one process.
//
//   node --expose-gc bench/wechat_cache.cjs JOB_JSON
//
// The job names the project (<out>/wechat), the CDN folder (<out>/remote) and its base URL, the
// tfjs runtime, base64-js, the model, the input and Keras's output, and the repetitions. The
// result (JSON) goes to job.result. A wrong prediction, a request during a warm load or a load
// that fails ends the run with exit status 1.
//
// 1. Launch 1, cold: the generated loader's loadModel downloads the model from the simulator's
//    local HTTP server into the file cache. Then `model.save(localStorageIO(key))`, as the
//    plugin's README does after a first load: the same artifacts, now base64 in wx storage.
// 2. One untimed warm-up round, then --repeat rounds, each route in a new app launch (fresh JS
//    context, nothing in memory), the order alternating:
//    - file:     loadModel(name) → getFileInfo (native sha256) + readFile × (model.json + shards), tfjs.
//    - storage:  tf.loadGraphModel(localStorageIO(key)) → wx.getStorage per key, one base64
//                string, base64-js toByteArray, tfjs.
//    - storage-sync: the same with wx.getStorageSync (not the plugin's code; shows what the
//                asynchronous calls cost in the simulator).
//    - memory:   tf.loadGraphModel({load: () => artifacts}) with the artifacts already in
//                memory: what tfjs itself takes, common to every route.
//    Each timed span starts before the runtime is required (require.async('tfjs/index.js'), as
//    loadModel does) and ends when the model is built; then the model predicts, outside it.

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const {performance} = require('perf_hooks');
const {Device} = require('../tests/wx/simulator.cjs');

// tfjs greets Node users on stdout; keep the console for diagnostics only.
const toStderr = (...args) => process.stderr.write(`${args.map(String).join(' ')}\n`);
console.log = toStderr;
console.info = toStderr;
console.warn = toStderr;

const ROUTES = ['file', 'storage', 'storage-sync', 'memory'];

function fail(message) {
  const err = new Error(message);
  err.benchFailure = true;
  throw err;
}

// Runs a CommonJS file inside the app's vm context (the mini-program's one JS realm).
function runInApp(app, file, requireMap) {
  const source = fs.readFileSync(file, 'utf8');
  const module = {exports: {}};
  const wrapper = vm.runInContext(`(function (module, exports, require) {${source}\n})`, app.context, {filename: file});
  wrapper(module, module.exports, (name) => {
    if (!(name in requireMap)) throw new Error(`${path.basename(file)}: require('${name}') is not available`);
    return requireMap[name];
  });
  return module.exports;
}

// Counts the wx calls each route makes (a thin wrapper; the simulator's behaviour is unchanged).
function instrument(app) {
  const counts = {readFile: 0, getStorage: 0, getStorageSync: 0, setStorage: 0};
  const wx = app.context.wx;
  const fsm = wx.getFileSystemManager(); // one object per launch: every call returns it
  const readFile = fsm.readFile;
  fsm.readFile = (o) => { counts.readFile++; return readFile(o); };
  const getStorage = wx.getStorage;
  wx.getStorage = (o) => { counts.getStorage++; return getStorage(o); };
  const getStorageSync = wx.getStorageSync;
  wx.getStorageSync = (k) => { counts.getStorageSync++; return getStorageSync(k); };
  const setStorageSync = wx.setStorageSync;
  wx.setStorageSync = (k, d) => { counts.setStorage++; return setStorageSync(k, d); };
  return counts;
}

function plugin(app, job) {
  // base64-js as the plugin bundles it: evaluated in the same realm as the plugin's code.
  const base64 = runInApp(app, path.join(job.base64_dir, 'node_modules/base64-js/index.js'), {});
  return runInApp(app, path.join(__dirname, 'wechat_local_storage_io.js'), {'base64-js': base64});
}

function readInput(tf, job) {
  const bytes = fs.readFileSync(job.input.file);
  const aligned = new Uint8Array(bytes.byteLength);
  aligned.set(bytes);
  // The runtime runs in the app's realm, where Node's typed arrays are not its own.
  return tf.tensor(Array.from(new Float32Array(aligned.buffer)), job.input.shape, 'float32');
}

async function predict(tf, model, job) {
  const x = readInput(tf, job);
  try {
    const y = typeof model.executeAsync === 'function' ? await model.executeAsync(x) : model.predict(x);
    const out = Float32Array.from(await y.data());
    y.dispose();
    return out;
  } finally {
    x.dispose();
  }
}

function maxAbsDiff(a, b) {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function collect() {
  if (typeof global.gc === 'function') global.gc();
}

function timerTickMs(n) {
  // What one `await` on an asynchronous wx call costs at least in the simulator: each is
  // answered from a setTimeout(…, 0), which Node runs no sooner than 1 ms later.
  return new Promise((resolve) => {
    const t0 = performance.now();
    let i = 0;
    const next = () => (++i < n ? setTimeout(next, 0) : resolve((performance.now() - t0) / n));
    setTimeout(next, 0);
  });
}

// One route in a new app launch: returns the time, the wx calls and the prediction.
async function loadOnce(device, job, route, memoryArtifacts) {
  const app = device.launch({tfjsDir: job.tfjs_dir});
  const counts = instrument(app);
  const requireFromLoader = app.makeRequire('bundler/loader.js');
  let start;
  let model;
  if (route === 'file') {
    const {loadModel} = app.require('bundler/loader.js');
    collect();
    start = performance.now();
    model = await loadModel(job.model);
  } else {
    const io = plugin(app, job); // the plugin is loaded with the app, before the page asks
    const handler = route === 'storage' ? io.localStorageIO(job.storage_key)
      : route === 'storage-sync' ? io.localStorageIOSyncReads(job.storage_key)
        : {load: async () => memoryArtifacts};
    const {setup} = app.require('bundler/loader.js');
    collect();
    start = performance.now();
    // As any app must before tfjs runs in WeChat: the runtime, and tfjsPlugin configured once
    // (loadModel does the same on the file route).
    const {tf} = await setup();
    model = await tf.loadGraphModel(handler);
  }
  const ms = performance.now() - start;
  const c = app.counters;
  if (c.requests !== 0) fail(`${route}: a warm load made ${c.requests} requests (${c.requestUrls.join(', ')})`);
  if (c.filesWritten !== 0 || c.storageWrites !== 0 || counts.setStorage !== 0) {
    fail(`${route}: a warm load wrote ${c.filesWritten} files and ${c.storageWrites + counts.setStorage} storage keys`);
  }
  const out = await predict(app.tfjsModule().tf, model, job);
  model.dispose();
  return {route, ms, requests: c.requests, wx: counts, out};
}

// The glue's JS sha256() over the cached files (the fallback where getFileInfo has no digest), and
// base64-js's toByteArray over the stored weight string (every localStorageIO load decodes it).
async function components(device, job) {
  const app = device.launch({tfjsDir: job.tfjs_dir});
  // The generated loader.js, evaluated once more with its sha256 handed out (the file is
  // read, not changed); `require('./models.js')` gets an empty build.
  const file = path.join(job.project, 'bundler/loader.js');
  const glue = vm.runInContext(
    `(function (module, exports, require) {${fs.readFileSync(file, 'utf8')}\n;return {sha256};})`,
    app.context, {filename: file})({exports: {}}, {}, () => ({}));
  const cached = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else cached.push(new Uint8Array(fs.readFileSync(full)));
    }
  };
  walk(device.userDir);
  const base64 = runInApp(app, path.join(job.base64_dir, 'node_modules/base64-js/index.js'), {});
  const prefix = `tensorflowjs_models/${job.storage_key}/weight_data`;
  const chunks = JSON.parse(device.storage.get(`${prefix}_size`));
  let text = '';
  for (let i = 0; i < chunks; i++) text += JSON.parse(device.storage.get(`${prefix}:${i}`));
  const sha = [];
  const b64 = [];
  for (let r = 0; r <= job.repeat; r++) {
    collect();
    let t0 = performance.now();
    for (const bytes of cached) glue.sha256(bytes);
    const s = performance.now() - t0;
    collect();
    t0 = performance.now();
    base64.toByteArray(text);
    const b = performance.now() - t0;
    if (r > 0) { sha.push(s); b64.push(b); } // the first is a warm-up
  }
  const med = (xs) => {
    const v = xs.slice().sort((a, b) => a - b);
    return v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  };
  return {
    glue_sha256_ms: med(sha), glue_sha256_bytes: cached.reduce((n, b) => n + b.length, 0), glue_sha256_files: cached.length,
    base64_decode_ms: med(b64), base64_chars: text.length,
  };
}

async function bench(job, device) {
  const expected = new Float32Array(new Uint8Array(fs.readFileSync(job.expected.file)).buffer);
  const check = (what, out) => {
    const err = maxAbsDiff(out, expected);
    if (!(err <= job.atol)) fail(`${what}: the model predicts ${err} away from Keras (tolerance ${job.atol})`);
    return err;
  };

  // 1. Cold: the network fills the file cache; then the plugin's route saves the same model.
  const app = device.launch({tfjsDir: job.tfjs_dir});
  const counts = instrument(app);
  const {loadModel} = app.require('bundler/loader.js');
  let t0 = performance.now();
  const model = await loadModel(job.model);
  const coldMs = performance.now() - t0;
  if (app.counters.requests === 0) fail('the cold load made no request: the file cache was not empty');
  const cold = {
    ms: coldMs, requests: app.counters.requests, bytes_downloaded: app.counters.bytesDownloaded,
    files_written: app.counters.filesWritten, bytes_written: app.counters.bytesWritten,
  };
  const reference = await predict(app.tfjsModule().tf, model, job);
  cold.keras_max_abs_err = check('cold load from the network', reference);
  const io = plugin(app, job);
  t0 = performance.now();
  const saved = await model.save(io.localStorageIO(job.storage_key));
  const save = {ms: performance.now() - t0, set_storage_calls: counts.setStorage,
    weight_data_bytes: saved.modelArtifactsInfo.weightDataBytes};
  // What tfjs got (after the simulator's realm bridge): the in-memory baseline's artifacts.
  const memoryArtifacts = model.artifacts;
  model.dispose();

  // 2. Warm loads.
  const rounds = [];
  const tickMs = await timerTickMs(200);
  for (let r = 0; r <= job.repeat; r++) {
    const order = r % 2 === 1 ? ROUTES : ROUTES.slice().reverse();
    const round = {round: r, warmup: r === 0, order};
    for (const route of order) {
      const res = await loadOnce(device, job, route, memoryArtifacts);
      const vsCold = maxAbsDiff(res.out, reference);
      if (vsCold !== 0) fail(`${route}: the prediction differs from the cold load's by ${vsCold} (must be identical)`);
      const err = check(route, res.out);
      round[route] = {ms: res.ms, requests: res.requests, wx: res.wx, keras_max_abs_err: err, same_as_file_cache: true};
      collect();
    }
    rounds.push(round);
    process.stderr.write(`round ${r}${r === 0 ? ' (warm-up)' : ''}: ${order.map((k) => `${k} ${round[k].ms.toFixed(1)} ms`).join(', ')}\n`);
  }

  // 3. Where the time goes: the two pure-JS steps each route runs over every byte, measured
  //    alone with the routes' own code in an app's realm (median of the rounds).
  const parts = await components(device, job);

  // 4. What each route keeps on the phone.
  const userFiles = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else userFiles.push({path: path.relative(device.userDir, full).split(path.sep).join('/'), bytes: fs.statSync(full).size});
    }
  };
  walk(device.userDir);
  const storageKeys = [...device.storage.entries()].map(([key, json]) => ({
    key, bytes: device.storageBytes(key, json), value_chars: json.length,
  }));
  const info = app.context.wx.getStorageInfoSync();
  return {
    cold, save, timer_tick_ms: tickMs, rounds, components: parts,
    output_values: reference.length,
    storage: {
      file_cache: {files: userFiles, bytes: device.userUsage(), limit_bytes: device.limits.userDataBytes},
      local_storage: {
        keys: storageKeys, bytes: device.storageUsage(), limit_bytes: device.limits.storageTotalBytes,
        key_limit_bytes: device.limits.storageKeyBytes, storage_info_current_kb: info.currentSize,
      },
    },
  };
}

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const device = new Device({
    project: job.project,
    userDir: job.user_dir,
    remote: {dir: job.remote_dir, baseUrl: job.base_url},
  });
  await device.start();
  let result;
  let error = null;
  try {
    result = await bench(job, device);
  } catch (e) {
    error = e && e.benchFailure ? e.message : (e && e.stack) || String(e && e.errMsg ? e.errMsg : e);
  } finally {
    await device.stop();
  }
  fs.writeFileSync(job.result, JSON.stringify({result: result || null, error}));
  if (error) {
    process.stderr.write(`wechat_cache: ${error}\n`);
    process.exit(1);
  }
}

main().catch((e) => {
  process.stderr.write(`wechat_cache: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
