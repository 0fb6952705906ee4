'use strict';
// Builds one tfjs runtime file for a bundle: tfjs's custom module tool writes the module (the
// kernels to register, the converter's ops), then esbuild bundles and minifies the entry.
//
//   node build_runtime.cjs JOB_JSON_PATH
//
// The job (written by bundler/tfjs_runtime/build.py) names the installed packages, the
// kernels, a model.json listing the graph ops (or none), the entry, the format and the output.
// stdout carries one JSON line: {ok, bytes, skipped} or {ok: false, error}.

const childProcess = require('child_process');
const fs = require('fs');
const path = require('path');

const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const modules = path.join(job.packages, 'node_modules');
const esbuild = require(require.resolve('esbuild', {paths: [job.packages]}));

function customModule() {
  const cli = path.join(modules, '@tensorflow/tfjs/dist/tools/custom_module/cli.js');
  const out = path.join(job.work, 'custom');
  const config = {
    kernels: job.kernels,
    backends: job.backends,
    forwardModeOnly: true,
    models: job.graph_ops_model ? [job.graph_ops_model] : [],
    outputPath: out,
  };
  const configPath = path.join(job.work, 'custom_module.json');
  fs.writeFileSync(configPath, JSON.stringify(config));
  const run = childProcess.spawnSync(process.execPath, [cli, '--config', configPath], {
    cwd: job.work, encoding: 'utf8', env: {...process.env, FORCE_COLOR: '0'},
  });
  if (run.status !== 0) {
    throw new Error(`tfjs's custom module tool failed (exit ${run.status}):\n${run.stdout}\n${run.stderr}`);
  }
  // The tool warns and skips a kernel one backend lacks; say which, for the report.
  const skipped = [];
  for (const m of `${run.stdout}\n${run.stderr}`.matchAll(/Import path '([^']+)' cannot be resolved/g)) {
    skipped.push(m[1].replace(/^@tensorflow\/tfjs-backend-/, '').replace('/dist/kernels/', ': '));
  }
  return {out, skipped};
}

const aliases = (custom) => ({
  name: 'tfjs-custom-module',
  setup(build) {
    const to = {
      '@tensorflow/tfjs': path.join(custom, 'custom_tfjs.js'),
      '@tensorflow/tfjs-core': path.join(custom, 'custom_tfjs_core.js'),
    };
    const ops = path.join(custom, 'custom_ops_for_converter.js');
    if (fs.existsSync(ops)) to['@tensorflow/tfjs-core/dist/ops/ops_for_converter'] = ops;
    build.onResolve({filter: /^@tensorflow\/tfjs(-core)?(\/dist\/ops\/ops_for_converter)?$/}, (args) =>
      (to[args.path] ? {path: to[args.path]} : undefined));
  },
});

// The converter maps every TensorFlow op it knows through tables (operations/op_list/*.js,
// 50 KB): keep the rows of the ops this bundle's graphs have.
const opLists = (ops) => ({
  name: 'tfjs-converter-op-lists',
  setup(build) {
    const wanted = new Set(ops);
    build.onLoad({filter: /tfjs-converter[\\/]dist[\\/]operations[\\/]op_list[\\/]\w+\.js$/}, (args) => {
      const source = fs.readFileSync(args.path, 'utf8').replace(/^\/\/# sourceMappingURL=.*$/m, '');
      const body = source.replace(/export const json\s*=/, 'module.exports =');
      const mod = {exports: null};
      new Function('module', body)(mod);
      const kept = mod.exports.filter((row) => wanted.has(row.tfOpName));
      return {contents: `export const json = ${JSON.stringify(kept)};\n`, loader: 'js'};
    });
  },
});

async function main() {
  const {out: custom, skipped} = customModule();
  const result = await esbuild.build({
    entryPoints: [job.entry],
    bundle: true,
    minify: true,
    format: job.format,
    globalName: job.global_name || undefined,
    platform: 'browser',
    target: job.target,
    nodePaths: [modules],
    plugins: [aliases(custom), opLists(job.graph_ops)],
    // Node's modules: tfjs-core requires them only on its Node platform, never in WeChat or a
    // browser; Node supplies them when verification runs this very file.
    external: ['node-fetch', 'util', 'crypto', 'fs', 'path', 'os', 'worker_threads', 'perf_hooks'],
    // tfjs 3 looks for its global object as `window`, `global`, `process` or `self`.
    define: {global: '__bundlerGlobal'},
    banner: {js: job.banner},
    legalComments: 'none',
    charset: 'utf8',
    logLevel: 'silent',
    write: false,
  });
  const code = result.outputFiles[0].contents;
  fs.writeFileSync(job.out, code);
  process.stdout.write(JSON.stringify({ok: true, bytes: code.length, skipped}) + '\n');
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ok: false, error: String(err && err.stack || err)}) + '\n');
  process.exit(1);
});
