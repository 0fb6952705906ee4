'use strict';
// Exercises the wx simulator's refusals directly, without the glue, and prints one JSON object:
// {checks: {name: {ok, errMsg?, errno?, value?}}}. tests/test_wechat_glue.py asserts on it.
//
//   node selftest.cjs PROJECT_DIR USER_DIR REMOTE_DIR TFJS_DIR

const {Device, USER_DATA_PATH} = require('./simulator.cjs');

function settle(fn, opts) {
  return new Promise((resolve) => fn(Object.assign({}, opts, {
    success: (res) => resolve({ok: true, value: res}),
    fail: (err) => resolve({ok: false, errMsg: err.errMsg, errno: err.errno}),
  })));
}

async function main() {
  const [project, userDir, remoteDir, tfjsDir] = process.argv.slice(2);
  const device = new Device({
    project, userDir, remote: {dir: remoteDir, baseUrl: 'https://models.example.com/bundles/'},
    limits: {userDataBytes: 64 * 1024, storageTotalBytes: 3 * 1024 * 1024},
  });
  await device.start();
  device.server.delayMs = 100;
  const app = device.launch({tfjsDir});
  const {wx} = app.context;
  const fsm = wx.getFileSystemManager();
  const U = USER_DATA_PATH;
  const checks = {};
  const check = async (name, fn, opts) => {
    const r = await settle(fn, opts);
    if (r.value && Object.prototype.toString.call(r.value.data) === '[object ArrayBuffer]') {
      r.value = Object.assign({}, r.value, {data: {byteLength: r.value.data.byteLength}});
    }
    checks[name] = r;
  };
  const f = (m) => fsm[m].bind(fsm);

  await check('read_subpackage_before_load', f('readFile'), {filePath: 'pkg-a/data/model.json', encoding: 'utf8'});
  await app.makeRequire('app.js').async('./pkg-a/index.js');
  await check('read_subpackage_after_load', f('readFile'), {filePath: 'pkg-a/data/model.json', encoding: 'utf8'});
  await check('read_leading_slash', f('readFile'), {filePath: '/pkg-a/data/model.json', encoding: 'utf8'});
  await check('read_dot_slash', f('readFile'), {filePath: './pkg-a/data/model.json'});
  await check('read_dot_dot', f('readFile'), {filePath: 'pkg-a/../pkg-a/data/model.json'});
  await check('read_bin_dropped_at_upload', f('readFile'), {filePath: 'pkg-a/data/weights.bin'});
  await check('read_br_raw', f('readFile'), {filePath: 'pkg-a/data/weights.bin.br'});
  await check('read_compressed', f('readCompressedFile'), {filePath: 'pkg-a/data/weights.bin.br', compressionAlgorithm: 'br'});
  await check('read_compressed_not_brotli', f('readCompressedFile'), {filePath: 'pkg-a/data/model.json', compressionAlgorithm: 'br'});
  await check('write_package', f('writeFile'), {filePath: 'pkg-a/data/x.json', data: '{}'});
  await check('write_no_parent', f('writeFile'), {filePath: `${U}/nope/x.bin`, data: new ArrayBuffer(4)});
  await check('write_typed_array', f('writeFile'), {filePath: `${U}/x.bin`, data: new Uint8Array(4)});
  await check('write_empty', f('writeFile'), {filePath: `${U}/x.bin`, data: new ArrayBuffer(0)});
  await check('mkdir_recursive', f('mkdir'), {dirPath: `${U}/a/b/c`, recursive: true});
  await check('mkdir_exists', f('mkdir'), {dirPath: `${U}/a/b`});
  await check('mkdir_recursive_exists', f('mkdir'), {dirPath: `${U}/a/b`, recursive: true});
  await check('write_ok', f('writeFile'), {filePath: `${U}/a/b/c/one.bin`, data: new ArrayBuffer(40 * 1024)});
  await check('write_over_quota', f('writeFile'), {filePath: `${U}/a/b/c/two.bin`, data: new ArrayBuffer(40 * 1024)});
  await check('rename_missing', f('rename'), {oldPath: `${U}/nope.bin`, newPath: `${U}/a/x.bin`});
  await check('unlink_missing', f('unlink'), {filePath: `${U}/nope.bin`});
  await check('unlink_dir', f('unlink'), {filePath: `${U}/a`});
  await check('rmdir_not_empty', f('rmdir'), {dirPath: `${U}/a`});
  await check('readdir', f('readdir'), {dirPath: `${U}/a/b/c`});
  await check('stat_missing', f('stat'), {path: `${U}/nope`});
  await check('access_missing', f('access'), {path: `${U}/nope`});
  await check('rmdir_recursive', f('rmdir'), {dirPath: `${U}/a`, recursive: true});
  await check('write_small', f('writeFile'), {filePath: `${U}/small.bin`, data: new ArrayBuffer(3)});
  await check('file_info_sha256', f('getFileInfo'), {filePath: `${U}/small.bin`, digestAlgorithm: 'sha256'});
  device.client.getFileInfoDigest = 'md5'; // an older client
  await check('file_info_old_client', f('getFileInfo'), {filePath: `${U}/small.bin`, digestAlgorithm: 'sha256'});
  device.client.getFileInfoDigest = null;

  const mb = 'x'.repeat(1024 * 1024);
  await check('storage_key_over_1mb', wx.setStorage, {key: 'big', data: mb});
  await check('storage_key_ok', wx.setStorage, {key: 'k1', data: mb.slice(0, 1000 * 1000)});
  await check('storage_key_ok2', wx.setStorage, {key: 'k2', data: mb.slice(0, 1000 * 1000)});
  await check('storage_key_ok3', wx.setStorage, {key: 'k3', data: mb.slice(0, 1000 * 1000)});
  await check('storage_total', wx.setStorage, {key: 'k4', data: mb.slice(0, 1000 * 1000)});
  await check('storage_missing', wx.getStorage, {key: 'nope'});
  await check('storage_info', wx.getStorageInfo, {});

  await check('request_http', wx.request, {url: 'http://models.example.com/bundles/a', responseType: 'arraybuffer'});
  await check('request_other_domain', wx.request, {url: 'https://evil.example.com/a', responseType: 'arraybuffer'});
  await check('request_package_path', wx.request, {url: 'pkg-a/data/model.json'});
  await check('request_404', wx.request, {url: 'https://models.example.com/bundles/nope.bin', responseType: 'arraybuffer'});
  const ok = await settle(wx.request, {url: 'https://models.example.com/bundles/blob.bin', responseType: 'arraybuffer'});
  checks.request_arraybuffer = {ok: ok.ok, statusCode: ok.value && ok.value.statusCode,
    isArrayBuffer: ok.value && Object.prototype.toString.call(ok.value.data) === '[object ArrayBuffer]',
    byteLength: ok.value && ok.value.data.byteLength};
  const many = await Promise.all(Array.from({length: 12}, () => settle(wx.request,
    {url: 'https://models.example.com/bundles/blob.bin', responseType: 'arraybuffer'})));
  checks.request_eleven = {ok: many.filter((r) => r.ok).length,
    failed: many.filter((r) => !r.ok).map((r) => r.errMsg), maxInFlight: app.counters.maxInFlight,
    overflows: app.counters.overflows};

  // wx.downloadFile: a temporary file, progress by bytes, the downloadFile domain list, and the
  // same 10 at once as wx.request.
  const progress = [];
  const downloaded = await new Promise((resolve) => {
    const task = wx.downloadFile({url: 'https://models.example.com/bundles/blob.bin',
      success: (res) => resolve({ok: true, value: res}), fail: (err) => resolve({ok: false, errMsg: err.errMsg})});
    task.onProgressUpdate((p) => progress.push(p));
  });
  checks.download = Object.assign({}, downloaded, {progress});
  const temp = downloaded.value && downloaded.value.tempFilePath;
  await check('download_read_temp', f('readFile'), {filePath: temp});
  await check('download_404', wx.downloadFile, {url: 'https://models.example.com/bundles/nope.bin'});
  await check('download_http', wx.downloadFile, {url: 'http://models.example.com/bundles/blob.bin'});
  device.domains.downloadFile.clear(); // registered as a request domain only
  await check('download_not_a_download_domain', wx.downloadFile, {url: 'https://models.example.com/bundles/blob.bin'});
  device.domains.downloadFile.add('models.example.com');
  await check('save_temp', f('saveFile'), {tempFilePath: temp, filePath: `${U}/saved.bin`});
  await check('save_temp_again', f('saveFile'), {tempFilePath: temp, filePath: `${U}/saved2.bin`});
  await check('read_saved', f('readFile'), {filePath: `${U}/saved.bin`});
  app.counters.maxInFlight = 0;
  app.counters.overflows = 0;
  const mixed = await Promise.all(Array.from({length: 12}, (_, i) => settle(i % 2 ? wx.downloadFile : wx.request,
    {url: 'https://models.example.com/bundles/blob.bin', responseType: 'arraybuffer'})));
  checks.network_mixed = {ok: mixed.filter((r) => r.ok).length, maxInFlight: app.counters.maxInFlight,
    overflows: app.counters.overflows};

  device.server.delayMs = 1000;
  await check('download_timeout', wx.downloadFile, {url: 'https://models.example.com/bundles/blob.bin', timeout: 100});
  await check('request_timeout', wx.request, {url: 'https://models.example.com/bundles/blob.bin', responseType: 'arraybuffer', timeout: 100});

  const globals = ['fetch', 'TextDecoder', 'crypto', 'Buffer', 'process', 'XMLHttpRequest', 'atob', 'btoa', 'structuredClone', 'window', 'document'];
  checks.globals_absent = {value: globals.filter((g) => app.context[g] !== undefined || require('vm').runInContext(`typeof ${g}`, app.context) !== 'undefined')};
  checks.node_require_from_app = await app.makeRequire('app.js').async('fs').then(() => ({ok: true}), (e) => ({ok: false, errMsg: e.errMsg}));
  try {
    app.makeRequire('app.js')('./pkg-b/index.js');
    checks.sync_require_unloaded_subpackage = {ok: true};
  } catch (e) {
    checks.sync_require_unloaded_subpackage = {ok: false, errMsg: e.message};
  }
  const rt = await app.makeRequire('bundler/loader.js').async('../tfjs/index.js');
  await rt.tf.ready();
  checks.tfjs_runtime = {ok: typeof rt.tf.loadGraphModel === 'function' && typeof rt.tf.loadLayersModel === 'function' &&
    typeof rt.fetchWechat.fetchFunc === 'function', version: rt.tf.version_core, backend: rt.tf.getBackend()};
  const plugin = app.context.requirePlugin('tfjsPlugin');
  const tryConfig = (cfg) => { try { plugin.configPlugin(cfg); return {ok: true}; } catch (e) { return {ok: false, errMsg: e.message}; } };
  const canvas = () => wx.createOffscreenCanvas({type: 'webgl'});
  const good = {fetchFunc: rt.fetchWechat.fetchFunc(), tf: rt.tf, webgl: rt.webgl, canvas: canvas(), backendName: 'wechat-webgl-1'};
  checks.plugin_good = tryConfig(good);
  checks.plugin_good.backend = rt.tf.getBackend();
  checks.plugin_good.sum = rt.tf.tidy(() => rt.tf.add(rt.tf.scalar(2), rt.tf.scalar(3)).dataSync()[0]);
  checks.plugin_same_backend_name = tryConfig(Object.assign({}, good, {canvas: canvas()}));
  checks.plugin_no_fetch = tryConfig(Object.assign({}, good, {fetchFunc: undefined, backendName: 'wechat-webgl-2'}));
  checks.plugin_bad_name = tryConfig(Object.assign({}, good, {backendName: 'webgl'}));
  app.loseWebglContexts();
  checks.plugin_backends = {ok: true, value: app.backendReport(), configs: app.pluginConfigs.length};
  try {
    app.context.requirePlugin('otherPlugin');
    checks.plugin_unknown = {ok: true};
  } catch (e) {
    checks.plugin_unknown = {ok: false, errMsg: e.message};
  }
  await device.stop();
  process.stdout.write(JSON.stringify({checks}));
}

main().catch((e) => {
  process.stderr.write(`selftest: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
