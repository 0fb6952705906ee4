'use strict';
// Runs a page that Taro or uni-app compiled, in the strict wx simulator, as WeChat runs it:
// app.js first (App()), then the page: Page() options (Taro), or a Component() driven through
// created → attached → onLoad → ready (uni-app); waits until the page shows "ready" or
// "failed…"; then onUnload.
//
//   node framework_page.cjs <taro|uniapp> <project> <user dir> <result.json> [page]
//
// The simulator's wx (file system, storage, network, tfjsPlugin, require and require.async by
// subpackage) is used as it is. What the frameworks' own runtimes need from the mini-program
// framework and the strict simulator lacks (App, Component, getApp, getCurrentPages, a few wx
// info getters) is added here, and each use is counted in `added`: none is a wx API the
// bundle's glue calls.
const fs = require('fs');
const {Device} = require('./simulator.cjs');

const [kind, project, userDir, resultFile, route = 'pages/index/index'] = process.argv.slice(2);
const say = (...a) => process.stderr.write(`${a.map(String).join(' ')}\n`);
console.log = say;
console.info = say;
console.warn = say;

const INFO = {
  SDKVersion: '2.21.1', platform: 'devtools', system: 'iOS 16', model: 'sim', brand: 'sim',
  language: 'zh_CN', version: '8.0.50', pixelRatio: 2, screenWidth: 375, screenHeight: 812,
  windowWidth: 375, windowHeight: 700, statusBarHeight: 20, theme: 'light', enableDebug: false,
  safeArea: {top: 20, bottom: 812, left: 0, right: 375, width: 375, height: 792}, host: {env: 'WeChat'},
};

function frameworkGlobals(app, added) {
  const note = (name) => { added[name] = (added[name] || 0) + 1; };
  const ctx = app.context;
  const registered = {app: null, components: []};
  const extra = {
    canIUse: () => true,
    getSystemInfoSync: () => ({...INFO}),
    getAppBaseInfo: () => ({...INFO}),
    getWindowInfo: () => ({...INFO}),
    getDeviceInfo: () => ({...INFO}),
    getSystemSetting: () => ({}),
    getAppAuthorizeSetting: () => ({}),
    getLaunchOptionsSync: () => ({path: route, query: {}, scene: 1001}),
    getEnterOptionsSync: () => ({path: route, query: {}, scene: 1001}),
    nextTick: (fn) => setTimeout(fn, 0),
    onAppShow() {}, onAppHide() {}, offAppShow() {}, offAppHide() {}, onError() {},
    onUnhandledRejection() {}, onPageNotFound() {}, onThemeChange() {}, reportAnalytics() {},
    preloadAssets() {},
  };
  // The app's `wx` is one object (the runtimes keep a reference): add to it, never replace it.
  const wx = ctx.wx;
  for (const [name, fn] of Object.entries(extra)) {
    if (!(name in wx)) wx[name] = (...args) => { note(`wx.${name}`); return fn(...args); };
  }
  ctx.global = ctx;
  ctx.App = (options) => { note('App'); registered.app = Object.assign(app.appInstance, options); };
  ctx.getApp = () => registered.app || app.appInstance;
  ctx.Component = (options) => { note('Component'); registered.components.push(options); };
  ctx.Behavior = (options) => options;
  ctx.getCurrentPages = () => { note('getCurrentPages'); return app.pageStack.slice(); };
  ctx.__wxConfig = {};
  return registered;
}

// uni-app builds a page with Component(): drive it as WeChat drives such a page.
async function openComponentPage(app, registered) {
  const before = registered.components.length;
  app.require(`${route}.js`);
  const options = registered.components[before];
  if (!options) throw new Error(`${route}.js registered no Component()`);
  const page = {
    route, is: route, __route__: route, options: {},
    data: JSON.parse(JSON.stringify(typeof options.data === 'function' ? options.data() : options.data || {})),
    properties: {},
    setData(patch, cb) {
      for (const [k, v] of Object.entries(patch)) this.data[k] = v === undefined ? v : JSON.parse(JSON.stringify(v));
      if (cb) setTimeout(cb, 0);
    },
    triggerEvent() {}, selectComponent() { return null; }, selectAllComponents() { return []; },
    createSelectorQuery() { return {}; }, getPageId() { return 'page-1'; },
  };
  Object.assign(page, options.methods || {});
  app.pageStack.push(page);
  const life = options.lifetimes || {};
  if (options.created) options.created.call(page);
  if (life.created) life.created.call(page);
  if (life.attached) life.attached.call(page);
  await page.onLoad({});
  if (life.ready) life.ready.call(page);
  return {page, unload: async () => {
    if (page.onUnload) await page.onUnload();
    if (life.detached) life.detached.call(page);
  }};
}

async function openTaroPage(app) {
  await app.openPage(route, {});
  const page = app.pageStack[app.pageStack.length - 1];
  if (page.onShow) page.onShow();
  if (page.onReady) page.onReady();
  return {page, unload: async () => { if (page.onUnload) await page.onUnload(); }};
}

// The page's status, wherever the framework keeps its bindings: "ready" or "failed…".
function status(data) {
  const text = JSON.stringify(data);
  const found = /"(ready|failed[^"]*)"/.exec(text);
  return found ? found[1] : null;
}

async function main() {
  const device = new Device({project, userDir, remote: null, limits: {}, overflow: 'fail'});
  await device.start();
  const app = device.launch({});
  const added = {};
  const registered = frameworkGlobals(app, added);
  const result = {added};
  try {
    app.require('app.js');
    if (!registered.app) throw new Error('app.js registered no App()');
    const launch = {path: route, query: {}, scene: 1001};
    if (registered.app.onLaunch) await registered.app.onLaunch.call(registered.app, launch);
    if (registered.app.onShow) await registered.app.onShow.call(registered.app, launch);
    const root = app.packageOf(`${route}.js`); // navigateTo downloads a subpackage first
    if (root) app.loadedRoots.add(root);
    const opened = kind === 'uniapp' ? await openComponentPage(app, registered) : await openTaroPage(app);
    const started = Date.now();
    while (Date.now() - started < 20000 && !status(opened.page.data)) await new Promise((r) => setTimeout(r, 20));
    result.status = status(opened.page.data) || 'timed out';
    result.data = JSON.stringify(opened.page.data);
    result.require_async = app.counters.requireAsync.slice();
    result.plugin_configs = app.pluginConfigs.length;
    const tf = app.tfjs && app.tfjs.tf;
    result.tensors_before_unload = tf ? tf.memory().numTensors : null;
    await opened.unload();
    await new Promise((r) => setTimeout(r, 50));
    result.tensors_after_unload = tf ? tf.memory().numTensors : null;
    result.console_error = app.console.error;
  } catch (e) {
    result.error = e && e.stack ? e.stack : String(e);
    result.console_error = app.console.error;
  } finally {
    await device.stop();
  }
  fs.writeFileSync(resultFile, JSON.stringify(result, null, 1));
  // uni-app's runtime keeps a 3 s preloadAssets timer: do not wait for it.
  process.exit(0);
}

main().catch((e) => { say(e && e.stack || e); process.exit(2); });
