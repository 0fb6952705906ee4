'use strict';
// A strict `wx` for Node: what the generated loader glue may call, refusing what WeChat refuses.
// Every number and message comes from docs/platforms.md or the sources named beside it.
//
//   const device = new Device({project, userDir, remote, limits});   // one phone: files + storage
//   await device.start();                                              // the local CDN
//   const app = device.launch();                                       // one app launch: fresh JS
//   const {loadModel} = app.require('bundler/loader.js');
//
// A Device keeps what survives an app restart (USER_DATA_PATH files on disk, wx storage); each
// launch() is a new vm context with only the globals a mini-program has, its own module cache,
// loaded subpackages and counters.

const fs = require('fs');
const http = require('http');
const path = require('path');
const vm = require('vm');
const zlib = require('zlib');

const KB = 1024;
const MB = 1024 * KB;

// docs/platforms.md, WeChat file system, storage and network.
const DEFAULT_LIMITS = {
  userDataBytes: 200 * MB, // USER_DATA_PATH quota (official file-system doc)
  readFileBytes: 100 * MB, // one file for readFile (official readFile doc)
  storageKeyBytes: 1 * MB, // wx.setStorage, one key (official setStorage doc)
  storageTotalBytes: 10 * MB, // wx.setStorage, all keys (official setStorage doc)
  concurrentRequests: 10, // request/downloadFile/uploadFile at once, together (official network doc)
  requestTimeoutMs: 60000, // default networkTimeout.request and .downloadFile (official app.json doc)
  // What getStorageInfo reports as limitSize; null: the real limit. Tests set it higher to
  // reach the "exceed storage max size" path that a phone's own accounting can trigger.
  storageInfoLimitBytes: null,
};

// Official framework/structure doc: the only non-code file types kept at upload.
const KEPT_EXTENSIONS = new Set([
  // code, compiled into the package
  'js', 'json', 'wxml', 'wxss', 'wxs',
  // docs/platforms.md list (`.bin` and `.onnx` are dropped)
  'png', 'jpg', 'jpeg', 'gif', 'svg', 'cer', 'mp3', 'aac', 'm4a', 'mp4', 'wav', 'ogg', 'silk',
  'wasm', 'br', 'cert',
]);

const USER_DATA_PATH = 'wxfile://usr'; // the device protocol (DevTools uses http://usr)
// Temporary files (wx.downloadFile's tempFilePath) are `wxfile://tmp_<id>` on a phone; they last
// for the app's life only (official file-system doc), so each launch starts with none.
const TEMP_PREFIX = 'wxfile://tmp_';
const TFJS_ROOT = 'tfjs';
const TFJS_PLUGIN_PROVIDER = 'wx6afed118d9e81df9';

// errno values: miniprogram-api-typings 5.2.x, `FileError` in lib.wx.api.d.ts.
const ERRNO = {
  notPermitted: 1300001,
  noEntry: 1300002,
  permission: 1300013,
  notDir: 1300020,
  invalid: 1300022,
  notEmpty: 1300066,
  quota: 1300202,
  emptyWrite: 1301002,
  isDir: 1301003,
  exists: 1301005,
  brotli: 1301111,
  tempMissing: 1301112,
};

class WxError {
  constructor(api, message, errno) {
    this.errMsg = `${api}:fail ${message}`;
    if (errno !== undefined) this.errno = errno;
  }
}

function isKept(file) {
  const dot = file.lastIndexOf('.');
  const slash = file.lastIndexOf('/');
  return dot > slash && KEPT_EXTENSIONS.has(file.slice(dot + 1).toLowerCase());
}

function walk(dir, onFile) {
  let entries;
  try {
    entries = fs.readdirSync(dir, {withFileTypes: true});
  } catch (e) {
    return;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full, onFile);
    else onFile(full, fs.statSync(full).size);
  }
}

function toArrayBuffer(buf) {
  const out = new ArrayBuffer(buf.length);
  new Uint8Array(out).set(buf);
  return out;
}

function isArrayBuffer(x) {
  // ArrayBuffers made inside the app's vm context belong to another realm.
  return Object.prototype.toString.call(x) === '[object ArrayBuffer]';
}

// --- the local CDN -------------------------------------------------------------------------

class Server {
  // Serves `dir` under `prefix` (the path of remote_base_url) on 127.0.0.1, with faults on demand.
  constructor(dir, prefix) {
    this.dir = dir;
    this.prefix = prefix;
    this.delayMs = 0; // before each response, so that requests overlap
    this.failAfter = null; // after this many good responses, reset every connection
    this.corruptOnce = new Set(); // paths whose next response has one byte flipped
    this.good = 0;
    this.inFlight = 0;
    this.maxInFlight = 0;
    this.log = [];
    this.sockets = new Set();
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.origin = `http://127.0.0.1:${this.server.address().port}`;
      resolve(this.origin);
    }));
  }

  close() {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  handle(req, res) {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    res.on('close', () => this.inFlight--);
    const urlPath = decodeURIComponent(req.url.split('?')[0]);
    this.log.push(urlPath);
    setTimeout(() => {
      if (this.failAfter !== null && this.good >= this.failAfter) {
        req.socket.destroy(); // the network is gone: the client sees a reset connection
        return;
      }
      if (req.method !== 'GET' || !urlPath.startsWith(this.prefix)) {
        res.writeHead(404).end('not found');
        return;
      }
      const rel = urlPath.slice(this.prefix.length);
      const file = path.resolve(this.dir, rel);
      if (!file.startsWith(path.resolve(this.dir) + path.sep) || !fs.existsSync(file) ||
          !fs.statSync(file).isFile()) {
        res.writeHead(404).end('not found');
        return;
      }
      let body = fs.readFileSync(file);
      if (this.corruptOnce.delete(rel)) {
        body = Buffer.from(body);
        body[body.length >> 1] ^= 0xff;
      }
      this.good++;
      res.writeHead(200, {'Content-Type': 'application/octet-stream', 'Content-Length': body.length});
      res.end(body);
    }, this.delayMs);
  }
}

// --- the device: what survives a restart ------------------------------------------------------

class Device {
  constructor({project, userDir, remote, limits, overflow}) {
    this.project = path.resolve(project); // the <out>/wechat folder
    this.userDir = path.resolve(userDir); // where USER_DATA_PATH lives on this machine
    this.limits = Object.assign({}, DEFAULT_LIMITS, limits || {});
    this.remote = remote || null; // {dir, baseUrl}: <out>/remote served for remote_base_url
    // Base library >= 1.4.0 queues an 11th request; older ones dropped it with an error. The glue
    // must keep to 10 itself, so by default the simulator fails the 11th loudly and counts it.
    this.overflow = overflow || 'fail';
    this.storage = new Map(); // key -> JSON text, as setStorage serializes
    this.tfjsDir = null;
    this.tempDir = `${this.userDir}-tmp`; // wxfile://tmp_* files, outside USER_DATA_PATH
    // What the WeChat client on this phone answers where clients differ. getFileInfoDigest: an
    // algorithm that getFileInfo uses whatever digestAlgorithm asks (older clients answer md5).
    this.client = {getFileInfoDigest: null};
    this.app = null;
    fs.mkdirSync(this.userDir, {recursive: true});
    this.readAppJson();
  }

  readAppJson() {
    const file = path.join(this.project, 'app.json');
    if (!fs.existsSync(file)) throw new Error(`wx simulator: ${file} is missing`);
    const app = JSON.parse(fs.readFileSync(file, 'utf8'));
    const subs = app.subPackages || app.subpackages || [];
    this.roots = subs.map((s) => String(s.root).replace(/^\/+|\/+$/g, ''));
    this.plugins = app.plugins || {};
  }

  async start() {
    if (!this.remote) return;
    const base = new URL(this.remote.baseUrl);
    if (base.protocol !== 'https:') throw new Error(`wx simulator: remote_base_url must be https, got ${base}`);
    this.server = new Server(this.remote.dir, base.pathname.endsWith('/') ? base.pathname : `${base.pathname}/`);
    await this.server.listen();
    // The server domains the app registered: one list per API (official network doc, "server
    // domain": request, uploadFile and downloadFile each have their own list).
    this.domains = {request: new Set([base.host]), downloadFile: new Set([base.host])};
  }

  stop() {
    return this.server ? this.server.close() : Promise.resolve();
  }

  userUsage() {
    let total = 0;
    walk(this.userDir, (_, size) => { total += size; });
    return total;
  }

  storageBytes(key, json) {
    return Buffer.byteLength(key) + Buffer.byteLength(json);
  }

  storageUsage() {
    let total = 0;
    for (const [k, v] of this.storage) total += this.storageBytes(k, v);
    return total;
  }

  setProject(project) {
    // A new release of the app (new models.js, new subpackages) on the same phone.
    this.project = path.resolve(project);
    this.readAppJson();
  }

  launch(options) {
    // A new launch is a new JS context: the last one's tfjs state and temporary files are gone.
    if (this.app) this.app.terminate();
    fs.rmSync(this.tempDir, {recursive: true, force: true});
    fs.mkdirSync(this.tempDir, {recursive: true});
    this.app = new App(this, options || {});
    return this.app;
  }
}

// --- one app launch ------------------------------------------------------------------------

class App {
  constructor(device, {tfjsDir}) {
    this.device = device;
    this.tfjsDir = tfjsDir || device.tfjsDir;
    this.loadedRoots = new Set(); // subpackages downloaded in this launch
    this.modules = new Map();
    this.console = {log: [], warn: [], error: []};
    this.pluginConfigs = []; // every configPlugin call of this launch
    this.backends = new Map(); // backend name -> {tf, gl}: what configPlugin registered
    this.contexts = []; // the WebGL contexts of this launch's offscreen canvases
    this.pages = []; // what Page() was given, in order
    this.pageStack = []; // the open page instances, the current one last
    this.appInstance = {globalData: {}};
    this.counters = {
      requests: 0, requestUrls: [], byApi: {}, inFlight: 0, maxInFlight: 0, overflows: 0,
      bytesDownloaded: 0, bytesWritten: 0, filesWritten: 0, storageWrites: 0, requireAsync: [],
      digests: 0,
    };
    this.queue = [];
    this.context = vm.createContext(this.globals());
  }

  globals() {
    const say = (kind) => (...args) => {
      this.console[kind === 'warn' || kind === 'error' ? kind : 'log'].push(args.map(String).join(' '));
    };
    return {
      wx: this.wx(),
      console: {log: say('log'), info: say('log'), debug: say('log'), warn: say('warn'), error: say('error')},
      setTimeout, clearTimeout, setInterval, clearInterval,
      requirePlugin: (name) => this.requirePlugin(name),
      Page: (options) => { this.pages.push(options); },
      getApp: () => this.appInstance,
    };
  }

  // ---- modules: require, require.async ----

  packageOf(file) {
    return this.device.roots.find((r) => file === r || file.startsWith(`${r}/`)) || null;
  }

  resolve(from, request) {
    if (typeof request !== 'string' || !request) throw new Error(`require args is '${request}'`);
    if (request.startsWith('/')) throw new Error(`module '${request}' is not defined: absolute paths are not supported`);
    const joined = path.posix.normalize(path.posix.join(path.posix.dirname(from), request));
    if (joined.startsWith('../')) throw new Error(`module '${request}' is not defined: it leaves the project`);
    return joined.endsWith('.js') ? joined : `${joined}.js`;
  }

  visible(file) {
    const full = path.join(this.device.project, file);
    return isKept(file) && fs.existsSync(full) && fs.statSync(full).isFile();
  }

  makeRequire(from) {
    const req = (request) => {
      const file = this.resolve(from, request);
      const root = this.packageOf(file);
      if (root && !this.loadedRoots.has(root)) {
        throw new Error(`module '${file}' is not defined, require args is '${request}': ` +
          `subpackage ${root} is not loaded (use require.async)`);
      }
      return this.load(file, request);
    };
    req.async = (request) => new Promise((resolve, reject) => {
      setTimeout(() => {
        let file;
        try {
          file = this.resolve(from, request);
          this.counters.requireAsync.push(file);
          const root = this.packageOf(file);
          if (root === TFJS_ROOT && file === `${TFJS_ROOT}/index.js`) {
            this.loadedRoots.add(root);
            resolve(this.tfjsModule());
            return;
          }
          if (root) this.loadedRoots.add(root);
          resolve(this.load(file, request));
        } catch (e) {
          reject({mod: file || request, errMsg: e.message});
        }
      }, 1);
    });
    return req;
  }

  load(file, request) {
    if (this.modules.has(file)) return this.modules.get(file).exports;
    if (!this.visible(file)) throw new Error(`module '${file}' is not defined, require args is '${request}'`);
    const source = fs.readFileSync(path.join(this.device.project, file), 'utf8');
    const module = {exports: {}};
    this.modules.set(file, module);
    const wrapper = vm.runInContext(`(function (module, exports, require) {${source}\n})`, this.context,
      {filename: path.join(this.device.project, file)});
    wrapper(module, module.exports, this.makeRequire(file));
    return module.exports;
  }

  // Runs a page as wx.navigateTo does: its module calls Page(options); onLoad(query) is called on
  // a new instance whose setData merges into data, kept on the page stack. Resolves to the data.
  // The stack holds 10 pages at most (official route doc; navigateTo then fails with
  // "navigateTo:fail webview count limit exceed").
  async openPage(page, query) {
    if (this.pageStack.length >= 10) throw new Error('navigateTo:fail webview count limit exceed');
    // The page's module runs once (Page() registers it); each visit is a new instance.
    this.pageOptions = this.pageOptions || {};
    if (!this.pageOptions[page]) {
      const before = this.pages.length;
      this.require(`${page}.js`);
      this.pageOptions[page] = this.pages[before];
      if (!this.pageOptions[page]) throw new Error(`wx simulator: ${page}.js did not call Page()`);
    }
    const options = this.pageOptions[page];
    const instance = Object.assign({}, options, {
      route: page,
      data: JSON.parse(JSON.stringify(options.data || {})),
      setData(patch, cb) {
        Object.assign(this.data, JSON.parse(JSON.stringify(patch)));
        if (cb) setTimeout(cb, 0);
      },
    });
    this.pageStack.push(instance);
    if (typeof instance.onLoad === 'function') await instance.onLoad(query || {});
    return instance.data;
  }

  // wx.navigateBack: the current page is unloaded (onUnload) and leaves the stack.
  async closePage() {
    const instance = this.pageStack.pop();
    if (!instance) throw new Error('navigateBack:fail cannot navigate back at first page.');
    if (typeof instance.onUnload === 'function') await instance.onUnload();
    return instance.data;
  }

  require(file) {
    // The app's own code asking for a main-package module (the page's require).
    return this.makeRequire('app.js')(`./${file}`);
  }

  tfjsModule() {
    if (this.tfjs) return this.tfjs;
    const file = `${TFJS_ROOT}/index.js`;
    if (this.visible(file)) {
      // The project's own runtime, run in the app's realm as any module is: no window, no
      // process, no Node global; tfjs finds its global object through the file's banner.
      this.tfjs = this.load(file, `../${file}`);
      return this.tfjs;
    }
    // A project without one (the simulator's own self-test): tfjs from npm, across realms.
    if (!this.tfjsDir) throw new Error('wx simulator: no tfjs runtime folder was given');
    const tf = require(require.resolve('@tensorflow/tfjs', {paths: [this.tfjsDir]}));
    // The app's objects come from the vm realm; tfjs checks `instanceof ArrayBuffer` against its
    // own. WeChat has one realm, so hand tfjs a same-realm copy of what the IOHandler returns.
    const bridge = (handler) => (handler && typeof handler.load === 'function'
      ? {load: async () => structuredClone(await handler.load())} : handler);
    const api = Object.assign({}, tf, {
      loadGraphModel: (h, o) => tf.loadGraphModel(bridge(h), o),
      loadLayersModel: (h, o) => tf.loadLayersModel(bridge(h), o),
    });
    const fetchWechat = {
      fetchFunc: () => () => Promise.reject(new Error('wx simulator: fetchWechat is a stub; the glue must not fetch')),
    };
    // The webgl backend needs the plugin's canvas: the simulator runs tfjs on its cpu backend.
    this.tfjs = {tf: api, webgl: {simulated: 'webgl backend (not run: the cpu backend is used)'}, fetchWechat};
    return this.tfjs;
  }

  requirePlugin(name) {
    const spec = this.device.plugins[name];
    if (name !== 'tfjsPlugin' || !spec) throw new Error(`plugin '${name}' is not defined in app.json plugins`);
    if (spec.provider !== TFJS_PLUGIN_PROVIDER) {
      throw new Error(`plugin tfjsPlugin: provider ${spec.provider}, expected ${TFJS_PLUGIN_PROVIDER}`);
    }
    // tfjsPlugin 0.2.0's configPlugin (tfjs-wechat, src/plugin/utils/wechat_platform.ts): unless
    // tf.getBackend() is already backendName, it sets the 'wechat' platform, then, if
    // tf.findBackend(backendName) is null, gets canvas.getContext('webgl', {...,
    // failIfMajorPerformanceCaveat: true}), registers a webgl backend on that context under
    // backendName (priority 2), copies the 'webgl' kernels to it, and calls tf.setBackend.
    // Every call with a new name is one more backend, each holding its own GL context and
    // textures: nothing is ever removed. A name registered before is not registered again
    // (tfjs: "<name> backend was already registered. Reusing existing backend factory."), so a
    // new canvas passed under it is silently ignored: the simulator refuses that as an error.
    // pluginConfigs and backends count the calls and the backends of this launch.
    return {
      configPlugin: (config, debug) => {
        const problems = [];
        if (!config || typeof config !== 'object') problems.push('config must be an object');
        else {
          if (typeof config.fetchFunc !== 'function') problems.push('fetchFunc must be a function');
          if (!config.tf || typeof config.tf.setBackend !== 'function') problems.push('tf must be the tfjs module');
          if (config.webgl !== undefined && typeof config.webgl !== 'object') problems.push('webgl must be the backend module');
          if (typeof config.backendName !== 'string' || !/^wechat-webgl-\S+$/.test(config.backendName)) {
            problems.push('backendName must be "wechat-webgl-<unique>"');
          } else if (this.backends.has(config.backendName)) {
            problems.push(`backendName ${config.backendName} is already registered in this app launch: ` +
              'tfjsPlugin would keep the old backend and ignore this canvas');
          }
          if (config.webgl && !config.canvas) problems.push('canvas is required with webgl');
        }
        if (problems.length) throw new Error(`configPlugin: ${problems.join('; ')}`);
        this.pluginConfigs.push({backendName: config.backendName, debug: !!debug});
        this.setPlatform(config);
        if (config.webgl && config.canvas) this.registerBackend(config);
      },
    };
  }

  // setupWechatPlatform's first steps: tf.ENV.setPlatform('wechat', new PlatformWeChat(fetchFunc))
  // (fetch through fetchFunc, now, utf-8 encode and decode) and setBase64Methods, which puts
  // atob and btoa (abab's) on tfjs's global: a mini-program has neither, and tfjs-converter
  // decodes a graph's string attributes with atob, so a graph model builds only after this.
  setPlatform({tf, fetchFunc}) {
    const env = tf.ENV || tf.env();
    const utf8 = (encoding) => {
      if (encoding !== 'utf-8' && encoding !== 'utf8') throw new Error(`Browser's encoder only supports utf-8, but got ${encoding}`);
    };
    env.setPlatform('wechat', {
      fetch: (p, init) => fetchFunc(p, init),
      now: () => Date.now(),
      encode: (text, encoding) => { utf8(encoding); return new Uint8Array(Buffer.from(text, 'utf8')); },
      decode: (bytes, encoding) => { utf8(encoding); return Buffer.from(bytes).toString('utf8'); },
    });
    env.global.atob = (text) => Buffer.from(String(text), 'base64').toString('latin1');
    env.global.btoa = (text) => Buffer.from(String(text), 'latin1').toString('base64');
  }

  // What configPlugin registers, with tfjs's cpu backend standing in for webgl (the simulator has
  // no GPU). The backend carries the `gpgpu.gl` a MathBackendWebGL has, so a lost context shows.
  registerBackend({tf, canvas, backendName}) {
    const gl = typeof canvas.getContext === 'function' ? canvas.getContext('webgl', {
      alpha: false, antialias: false, premultipliedAlpha: false, preserveDrawingBuffer: false,
      depth: false, stencil: false, failIfMajorPerformanceCaveat: true,
    }) : null;
    const cpu = tf.findBackendFactory('cpu');
    tf.registerBackend(backendName, () => Object.assign(cpu(), {gpgpu: {gl}}), 2);
    for (const kernel of tf.getKernelsForBackend('cpu')) {
      if (!tf.getKernel(kernel.kernelName, backendName)) tf.registerKernel(Object.assign({}, kernel, {backendName}));
    }
    tf.setBackend(backendName);
    this.backends.set(backendName, {tf, gl});
  }

  // The backends configPlugin registered in this launch, and whether each is still registered.
  backendReport() {
    return [...this.backends].map(([name, {tf, gl}]) => ({
      name, live: tf.findBackendFactory(name) != null, lost: !!(gl && gl.isContextLost()),
    }));
  }

  // The phone drops every WebGL context of the app (GPU reset, memory pressure, long background).
  loseWebglContexts() {
    for (const context of this.contexts) context.lost = true;
  }

  // The app's JS context ends (a new launch): its tfjs engine goes with it. A runtime loaded in
  // the app's realm goes by itself; the npm tfjs is shared by every launch in this process, so
  // this launch's backends are removed and its engine reset.
  terminate() {
    const tf = this.tfjs && this.tfjs.tf;
    if (!tf || typeof tf.engine !== 'function') return;
    for (const name of this.backends.keys()) if (tf.findBackendFactory(name) != null) tf.removeBackend(name);
    tf.engine().reset();
  }

  // wx.createOffscreenCanvas (base library 2.16.1+ for {type: 'webgl'}): a stand-in whose WebGL
  // context is only the object tfjs keeps and asks isContextLost() of.
  offscreenCanvas() {
    const app = this;
    const canvas = {width: 300, height: 150, context: null};
    canvas.getContext = (type) => {
      if (type !== 'webgl' && type !== 'experimental-webgl') return null;
      if (!canvas.context) {
        canvas.context = {canvas, lost: false, isContextLost() { return this.lost; }};
        app.contexts.push(canvas.context);
      }
      return canvas.context;
    };
    return canvas;
  }

  // ---- the wx object ----

  wx() {
    const app = this;
    const fsm = this.fileSystemManager();
    return {
      env: {USER_DATA_PATH},
      // Base library 2.16.1+; tfjsPlugin draws on it. A stand-in: WebGL is not simulated.
      createOffscreenCanvas: () => app.offscreenCanvas(),
      getFileSystemManager: () => fsm,
      request: (opts) => app.request(opts),
      downloadFile: (opts) => app.downloadFile(opts),
      setStorage: (o) => app.async(o, 'setStorage', () => app.setStorage('setStorage', o)),
      getStorage: (o) => app.async(o, 'getStorage', () => app.getStorage('getStorage', o)),
      removeStorage: (o) => app.async(o, 'removeStorage', () => { app.device.storage.delete(String(o.key)); return {}; }),
      getStorageInfo: (o) => app.async(o, 'getStorageInfo', () => app.storageInfo()),
      setStorageSync: (key, data) => app.sync(() => app.setStorage('setStorageSync', {key, data})),
      getStorageSync: (key) => { // WeChat returns '' for a missing key
        const json = app.device.storage.get(String(key));
        return json === undefined ? '' : JSON.parse(json);
      },
      removeStorageSync: (key) => { app.device.storage.delete(String(key)); },
      getStorageInfoSync: () => app.storageInfo(),
    };
  }

  async(opts, api, work) {
    const o = opts || {};
    setTimeout(() => {
      let result;
      try {
        result = Object.assign({errMsg: `${api}:ok`}, work());
      } catch (e) {
        const err = e instanceof WxError ? e : new WxError(api, e.message);
        if (o.fail) o.fail(err);
        if (o.complete) o.complete(err);
        return;
      }
      if (o.success) o.success(result);
      if (o.complete) o.complete(result);
    }, 0);
  }

  sync(work) {
    try {
      return work();
    } catch (e) {
      throw new Error(e.errMsg || e.message);
    }
  }

  // ---- storage ----

  setStorage(api, {key, data}) {
    if (typeof key !== 'string' || !key) throw new WxError(api, 'parameter error: parameter.key should be String');
    if (data === undefined) throw new WxError(api, 'parameter error: parameter.data should not be undefined');
    const json = JSON.stringify(data);
    const {storageKeyBytes, storageTotalBytes} = this.device.limits;
    const size = this.device.storageBytes(key, json);
    if (size > storageKeyBytes) throw new WxError(api, 'exceed storage item max length');
    const old = this.device.storage.get(key);
    const others = this.device.storageUsage() - (old === undefined ? 0 : this.device.storageBytes(key, old));
    if (others + size > storageTotalBytes) {
      throw new WxError(api, `exceed storage max size ${Math.round(storageTotalBytes / MB)}Mb`);
    }
    this.device.storage.set(key, json);
    this.counters.storageWrites++;
    return {};
  }

  getStorage(api, {key}) {
    const json = this.device.storage.get(String(key));
    if (json === undefined) throw new WxError(api, 'data not found');
    return {data: JSON.parse(json)}; // a copy, as WeChat deserializes
  }

  storageInfo() {
    return {
      keys: [...this.device.storage.keys()],
      currentSize: Math.ceil(this.device.storageUsage() / KB),
      limitSize: Math.floor((this.device.limits.storageInfoLimitBytes || this.device.limits.storageTotalBytes) / KB),
    };
  }

  // ---- network ----

  request(opts) {
    const o = opts || {};
    const task = {abort: () => { if (task.cancel) task.cancel(); }, onHeadersReceived() {}, offHeadersReceived() {}};
    this.network('request', o, task, (body, res) => {
      let data;
      if (o.responseType === 'arraybuffer') data = toArrayBuffer(body);
      else {
        data = body.toString('utf8');
        if ((o.dataType || 'json') === 'json') {
          try { data = JSON.parse(data); } catch (e) { /* WeChat leaves text that is not JSON */ }
        }
      }
      return {data, statusCode: res.statusCode, header: res.headers, cookies: [], errMsg: 'request:ok'};
    });
    return task;
  }

  // wx.downloadFile (official doc and miniprogram-api-typings 5.2.3): an HTTPS GET on the
  // downloadFile domain list, the body written to a temporary file; success gets {tempFilePath,
  // statusCode} for any HTTP status ("as long as the server answers, the body is written to the
  // file and success is called": check statusCode). `timeout` (base library 2.10.0) defaults to
  // networkTimeout.downloadFile, 60 s. The returned DownloadTask has onProgressUpdate(listener)
  // with {progress (percent), totalBytesWritten, totalBytesExpectedToWrite}, offProgressUpdate,
  // abort. It counts toward the same 10 at once as wx.request. `filePath` (download straight to
  // a user file) is not simulated: the glue downloads to a temporary file and checks it first.
  downloadFile(opts) {
    const o = opts || {};
    const listeners = [];
    const task = {
      abort: () => { if (task.cancel) task.cancel(); },
      onProgressUpdate: (fn) => { listeners.push(fn); },
      offProgressUpdate: (fn) => { if (listeners.includes(fn)) listeners.splice(listeners.indexOf(fn), 1); },
      onHeadersReceived() {}, offHeadersReceived() {},
      progress: (written, expected) => setTimeout(() => listeners.slice().forEach((fn) => fn({
        progress: expected ? Math.floor(written * 100 / expected) : 0,
        totalBytesWritten: written, totalBytesExpectedToWrite: expected,
      })), 0),
    };
    if (o.filePath !== undefined) {
      this.async(o, 'downloadFile', () => { throw new Error('wx simulator: filePath is not simulated'); });
      return task;
    }
    this.network('downloadFile', o, task, (body, res) => {
      const name = `tmp_${require('crypto').randomBytes(16).toString('hex')}`;
      fs.writeFileSync(path.join(this.device.tempDir, name), body);
      return {tempFilePath: `wxfile://${name}`, statusCode: res.statusCode, errMsg: 'downloadFile:ok'};
    });
    return task;
  }

  // What wx.request and wx.downloadFile share: https URLs on the API's domain list only, and at
  // most 10 of request/uploadFile/downloadFile at once in all (official network doc: "wx.request、
  // wx.uploadFile、wx.downloadFile 的最大并发限制是 10 个"; the simulator counts them together).
  network(api, o, task, respond) {
    const fail = (message) => setTimeout(() => {
      const err = {errMsg: `${api}:fail ${message}`};
      if (o.fail) o.fail(err);
      if (o.complete) o.complete(err);
    }, 0);
    this.counters.requests++;
    this.counters.byApi[api] = (this.counters.byApi[api] || 0) + 1;
    let url;
    try {
      url = new URL(String(o.url));
    } catch (e) {
      fail('invalid url');
      return;
    }
    if (url.protocol !== 'https:') {
      fail(`invalid url "${o.url}"`);
      return;
    }
    if (!this.device.domains || !this.device.domains[api].has(url.host)) {
      // request's message as the simulator always gave it; downloadFile's as WeChat gives it.
      fail(api === 'request' ? `url not in domain list: ${url.origin}` : 'url not in domain list');
      return;
    }
    const start = () => this.send(api, o, url, task, respond);
    if (this.counters.inFlight >= this.device.limits.concurrentRequests) {
      this.counters.overflows++;
      if (this.device.overflow === 'queue') {
        this.queue.push(start);
      } else {
        fail(`exceed max concurrent request count ${this.device.limits.concurrentRequests} ` +
          '(wx simulator: base library 1.4.0+ would queue it; the glue must keep to the limit)');
      }
      return;
    }
    start();
  }

  send(api, o, url, task, respond) {
    this.counters.inFlight++;
    this.counters.maxInFlight = Math.max(this.counters.maxInFlight, this.counters.inFlight);
    this.counters.requestUrls.push(url.href);
    let settled = false;
    const finish = (ok, result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.counters.inFlight--;
      if (this.queue.length) this.queue.shift()();
      setTimeout(() => {
        if (ok && o.success) o.success(result);
        if (!ok && o.fail) o.fail(result);
        if (o.complete) o.complete(result);
      }, 0);
    };
    const timeout = o.timeout > 0 ? o.timeout : this.device.limits.requestTimeoutMs;
    const req = http.get(this.device.server.origin + url.pathname + url.search, {agent: false}, (res) => {
      const parts = [];
      const expected = Number(res.headers['content-length']) || 0;
      let written = 0;
      res.on('data', (c) => {
        parts.push(c);
        written += c.length;
        if (task.progress) task.progress(written, expected);
      });
      res.on('error', (e) => finish(false, {errMsg: `${api}:fail ${e.message}`}));
      res.on('end', () => {
        const body = Buffer.concat(parts);
        this.counters.bytesDownloaded += body.length;
        finish(true, respond(body, res));
      });
    });
    req.on('error', (e) => finish(false, {errMsg: `${api}:fail ${e.code === 'ECONNRESET' ? 'net::ERR_CONNECTION_RESET' : e.message}`}));
    const timer = setTimeout(() => { req.destroy(); finish(false, {errMsg: `${api}:fail timeout`}); }, timeout);
    task.cancel = () => { req.destroy(); finish(false, {errMsg: `${api}:fail abort`}); };
  }

  // ---- the file system manager ----

  // Returns {kind: 'user' | 'temp', full} or {kind: 'package', rel, full}; throws WxError.
  where(api, p, verb) {
    if (typeof p !== 'string' || !p) throw new WxError(api, 'parameter error: path should be String', ERRNO.invalid);
    if (p === USER_DATA_PATH || p.startsWith(`${USER_DATA_PATH}/`)) {
      const rel = p.slice(USER_DATA_PATH.length).replace(/^\/+/, '');
      const norm = path.posix.normalize(rel || '.');
      if (norm.startsWith('..')) throw new WxError(api, `permission denied, ${verb} ${p}`, ERRNO.permission);
      return {kind: 'user', full: path.join(this.device.userDir, norm)};
    }
    if (p.startsWith(TEMP_PREFIX) && /^[\w.]+$/.test(p.slice(TEMP_PREFIX.length))) {
      return {kind: 'temp', full: path.join(this.device.tempDir, p.slice('wxfile://'.length))};
    }
    if (/^[a-z]+:\/\//i.test(p)) throw new WxError(api, `no such file or directory, ${verb} ${p}`, ERRNO.noEntry);
    // Code package files: a path from the project root; "./x" and "../x" are not accepted.
    const rel = p.replace(/^\//, '');
    if (rel.split('/').some((part) => part === '.' || part === '..' || part === '')) {
      throw new WxError(api, `no such file or directory, ${verb} ${p}`, ERRNO.noEntry);
    }
    return {kind: 'package', rel, full: path.join(this.device.project, rel)};
  }

  readable(api, p, verb) {
    const w = this.where(api, p, verb);
    if (w.kind === 'package') {
      const root = this.packageOf(w.rel);
      const missing = () => new WxError(api, `no such file or directory, ${verb} ${p}`, ERRNO.noEntry);
      // Upload drops file types it does not keep; a subpackage is on the phone once loaded.
      if (!fs.existsSync(w.full)) throw missing();
      if (fs.statSync(w.full).isFile() && !isKept(w.rel)) throw missing();
      if (root && !this.loadedRoots.has(root)) throw missing();
    }
    return w;
  }

  writable(api, p, verb) {
    const w = this.where(api, p, verb);
    if (w.kind !== 'user') throw new WxError(api, `permission denied, ${verb} ${p}`, ERRNO.permission);
    return w;
  }

  fileSystemManager() {
    const app = this;
    const op = (api, work) => (o) => app.async(o, api, () => work(o || {}));
    const noEntry = (api, msg) => new WxError(api, `no such file or directory${msg}`, ERRNO.noEntry);
    const readBytes = (api, o) => {
      const w = app.readable(api, o.filePath, 'open');
      if (!fs.existsSync(w.full)) throw noEntry(api, `, open ${o.filePath}`);
      const st = fs.statSync(w.full);
      if (st.isDirectory()) throw new WxError(api, `illegal operation on a directory, open "${o.filePath}"`, ERRNO.isDir);
      if (st.size > app.device.limits.readFileBytes) {
        throw new WxError(api, 'the maximum size of the file storage limit is exceeded', ERRNO.quota);
      }
      return fs.readFileSync(w.full);
    };
    return {
      readFile: op('readFile', (o) => {
        const buf = readBytes('readFile', o);
        if (o.encoding === undefined) return {data: toArrayBuffer(buf)};
        if (o.encoding !== 'utf8' && o.encoding !== 'utf-8') {
          throw new WxError('readFile', `wx simulator: encoding ${o.encoding} is not simulated`, ERRNO.invalid);
        }
        return {data: buf.toString('utf8')};
      }),
      readCompressedFile: op('readCompressedFile', (o) => {
        if (o.compressionAlgorithm !== 'br') {
          throw new WxError('readCompressedFile', 'parameter error: compressionAlgorithm should be "br"', ERRNO.invalid);
        }
        const buf = readBytes('readCompressedFile', o);
        try {
          return {data: toArrayBuffer(zlib.brotliDecompressSync(buf))};
        } catch (e) {
          throw new WxError('readCompressedFile', 'decompress fail', ERRNO.brotli);
        }
      }),
      writeFile: op('writeFile', (o) => {
        const w = app.writable('writeFile', o.filePath, 'open');
        let buf;
        if (typeof o.data === 'string') buf = Buffer.from(o.data, o.encoding === 'base64' ? 'base64' : 'utf8');
        else if (isArrayBuffer(o.data)) buf = Buffer.from(new Uint8Array(o.data));
        else throw new WxError('writeFile', 'parameter error: parameter.data should be String or ArrayBuffer', ERRNO.invalid);
        if (buf.length === 0) throw new WxError('writeFile', 'data to write is empty', ERRNO.emptyWrite);
        if (!fs.existsSync(path.dirname(w.full)) || !fs.statSync(path.dirname(w.full)).isDirectory()) {
          throw noEntry('writeFile', `, open ${o.filePath}`);
        }
        if (fs.existsSync(w.full) && fs.statSync(w.full).isDirectory()) {
          throw new WxError('writeFile', `illegal operation on a directory, open "${o.filePath}"`, ERRNO.isDir);
        }
        const old = fs.existsSync(w.full) ? fs.statSync(w.full).size : 0;
        if (app.device.userUsage() - old + buf.length > app.device.limits.userDataBytes) {
          throw new WxError('writeFile', 'the maximum size of the file storage limit is exceeded', ERRNO.quota);
        }
        fs.writeFileSync(w.full, buf);
        app.counters.bytesWritten += buf.length;
        app.counters.filesWritten++;
        return {};
      }),
      rename: op('rename', (o) => {
        const verb = `rename ${o.oldPath} -> ${o.newPath}`;
        const from = app.writable('rename', o.oldPath, verb);
        const to = app.writable('rename', o.newPath, verb);
        if (!fs.existsSync(from.full) || !fs.existsSync(path.dirname(to.full))) {
          throw noEntry('rename', `, ${verb}`);
        }
        fs.renameSync(from.full, to.full); // replaces an existing file, as POSIX rename does
        return {};
      }),
      unlink: op('unlink', (o) => {
        const w = app.writable('unlink', o.filePath, 'unlink');
        if (!fs.existsSync(w.full)) throw noEntry('unlink', ` ${o.filePath}`);
        if (fs.statSync(w.full).isDirectory()) {
          throw new WxError('unlink', `operation not permitted, unlink ${o.filePath}`, ERRNO.notPermitted);
        }
        fs.unlinkSync(w.full);
        return {};
      }),
      // An existing dirPath fails with errno 1301005, "file already exists ${dirPath}"
      // (miniprogram-api-typings 5.2.3, FileError), with `recursive: true` too: the official mkdir
      // doc says recursive creates each missing parent ("a parent that exists is not created")
      // and then dirPath itself, which is what exists.
      mkdir: op('mkdir', (o) => {
        const w = app.writable('mkdir', o.dirPath, 'open');
        if (fs.existsSync(w.full)) throw new WxError('mkdir', `file already exists ${o.dirPath}`, ERRNO.exists);
        if (o.recursive) {
          fs.mkdirSync(w.full, {recursive: true});
          return {};
        }
        if (!fs.existsSync(path.dirname(w.full))) throw noEntry('mkdir', ` ${o.dirPath}`);
        fs.mkdirSync(w.full);
        return {};
      }),
      rmdir: op('rmdir', (o) => {
        const w = app.writable('rmdir', o.dirPath, 'open');
        if (!fs.existsSync(w.full)) throw noEntry('rmdir', ` ${o.dirPath}`);
        if (!fs.statSync(w.full).isDirectory()) throw new WxError('rmdir', `not a directory ${o.dirPath}`, ERRNO.notDir);
        if (!o.recursive && fs.readdirSync(w.full).length) throw new WxError('rmdir', 'directory not empty', ERRNO.notEmpty);
        fs.rmSync(w.full, {recursive: true});
        return {};
      }),
      readdir: op('readdir', (o) => {
        const w = app.readable('readdir', o.dirPath, 'open');
        if (!fs.existsSync(w.full)) throw noEntry('readdir', ` ${o.dirPath}`);
        if (!fs.statSync(w.full).isDirectory()) throw new WxError('readdir', `not a directory ${o.dirPath}`, ERRNO.notDir);
        let files = fs.readdirSync(w.full);
        if (w.kind === 'package') {
          files = files.filter((f) => fs.statSync(path.join(w.full, f)).isDirectory() || isKept(f));
        }
        return {files};
      }),
      access: op('access', (o) => {
        const w = app.readable('access', o.path, 'access');
        if (!fs.existsSync(w.full)) throw noEntry('access', ` ${o.path}`);
        return {};
      }),
      // getFileInfo computes the digest natively (md5, sha1 or sha256: miniprogram-api-typings
      // 5.2.3, GetFileInfoOption.digestAlgorithm). Older clients know md5 and sha1 only (the older
      // wx.getFileInfo lists those two) and answer md5, 32 hex digits, whatever was asked: with
      // device.client.getFileInfoDigest = 'md5' the simulator does that.
      getFileInfo: op('getFileInfo', (o) => {
        const w = app.readable('getFileInfo', o.filePath, 'open');
        if (!fs.existsSync(w.full)) throw noEntry('getFileInfo', ` ${o.filePath}`);
        const algorithm = o.digestAlgorithm === undefined ? 'md5' : o.digestAlgorithm;
        if (!['md5', 'sha1', 'sha256'].includes(algorithm)) {
          throw new WxError('getFileInfo', `parameter error: digestAlgorithm ${algorithm}`, ERRNO.invalid);
        }
        const buf = fs.readFileSync(w.full);
        app.counters.digests++;
        const answered = app.device.client.getFileInfoDigest || algorithm;
        return {size: buf.length, digest: require('crypto').createHash(answered).update(buf).digest('hex')};
      }),
      // saveFile moves a temporary file to filePath (official doc: "this API moves the temporary
      // file: tempFilePath is unusable after success"). A missing temporary file fails with errno
      // 1301112, "tempFilePath file not exist"; the user file quota applies (1300202).
      saveFile: op('saveFile', (o) => {
        const from = typeof o.tempFilePath === 'string' && o.tempFilePath.startsWith(TEMP_PREFIX)
          ? app.where('saveFile', o.tempFilePath, 'open') : null;
        if (!from || !fs.existsSync(from.full)) throw new WxError('saveFile', 'tempFilePath file not exist', ERRNO.tempMissing);
        if (o.filePath === undefined) throw new WxError('saveFile', 'wx simulator: saveFile without filePath is not simulated');
        const to = app.writable('saveFile', o.filePath, 'open');
        if (!fs.existsSync(path.dirname(to.full)) || !fs.statSync(path.dirname(to.full)).isDirectory()) {
          throw noEntry('saveFile', `, open ${o.filePath}`);
        }
        if (fs.existsSync(to.full) && fs.statSync(to.full).isDirectory()) {
          throw new WxError('saveFile', `illegal operation on a directory, open "${o.filePath}"`, ERRNO.isDir);
        }
        const size = fs.statSync(from.full).size;
        const old = fs.existsSync(to.full) ? fs.statSync(to.full).size : 0;
        if (app.device.userUsage() - old + size > app.device.limits.userDataBytes) {
          throw new WxError('saveFile', 'the maximum size of the file storage limit is exceeded', ERRNO.quota);
        }
        fs.renameSync(from.full, to.full);
        app.counters.bytesWritten += size;
        app.counters.filesWritten++;
        return {savedFilePath: o.filePath};
      }),
      stat: op('stat', (o) => {
        const w = app.readable('stat', o.path, 'stat');
        if (!fs.existsSync(w.full)) throw noEntry('stat', ` ${o.path}`);
        const st = fs.statSync(w.full);
        const stats = {
          mode: st.mode, size: st.isDirectory() ? 0 : st.size,
          lastAccessedTime: Math.floor(st.atimeMs / 1000), lastModifiedTime: Math.floor(st.mtimeMs / 1000),
          isDirectory: () => st.isDirectory(), isFile: () => st.isFile(),
        };
        return {stats};
      }),
    };
  }
}

module.exports = {Device, App, Server, DEFAULT_LIMITS, KEPT_EXTENSIONS, USER_DATA_PATH, ERRNO, isKept};
