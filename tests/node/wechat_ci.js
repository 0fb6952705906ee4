#!/usr/bin/env node
// Tencent's own tooling, offline, on a generated mini-program project (tests/test_wechat_tencent.py).
//
//   node wechat_ci.js compile <project> <key.pem> <out.json>
//       miniprogram-ci's getCompiledResult: what upload would send, file by file. The key is
//       made here on first use (a throwaway RSA key: nothing is signed or sent), and the
//       project's attributes come from ci.DefaultProjectAttr through the Project's own
//       `attr`, which CIProject.attr() prefers to asking Tencent's server with the key.
//   node wechat_ci.js packnpm <project> <out.json>
//       miniprogram-ci's packNpmManually for every entry of project.config.json's
//       setting.packNpmRelationList (what DevTools' "Build npm" does with packNpmManually on).
//
// Every network connection is refused (net_guard.js, also in the processes miniprogram-ci
// forks); the attempts are reported in out.json. Logs of miniprogram-ci go to stdout/stderr;
// the result is the JSON file.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const GUARD = path.join(__dirname, 'net_guard.js');

function setUpGuard(out) {
  const log = `${out}.net.log`;
  fs.writeFileSync(log, '');
  process.env.BUNDLER_NET_LOG = log;
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS || ''} --require ${JSON.stringify(GUARD)}`.trim();
  require(GUARD);
  return () =>
    fs
      .readFileSync(log, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line));
}

function projectConfig(project) {
  return JSON.parse(fs.readFileSync(path.join(project, 'project.config.json'), 'utf8'));
}

function throwawayKey(file) {
  if (fs.existsSync(file)) return;
  const {privateKey} = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: {type: 'spki', format: 'pem'},
    privateKeyEncoding: {type: 'pkcs1', format: 'pem'},
  });
  fs.writeFileSync(file, privateKey, {mode: 0o600});
}

async function compile(ci, project, keyFile) {
  throwawayKey(keyFile);
  const config = projectConfig(project);
  const proj = new ci.Project({
    appid: config.appid,
    type: 'miniProgram',
    projectPath: project,
    privateKeyPath: keyFile,
    attr: async () => ci.DefaultProjectAttr,
  });
  const messages = [];
  const started = Date.now();
  const result = await ci.getCompiledResult({
    project: proj,
    // As DevTools' upload does: the compile settings (es6, enhance, minified,
    // ignoreUploadUnusedFiles, ...) come from project.config.json.
    setting: {useProjectConfig: true},
    onProgressUpdate: (m) => {
      if (m && typeof m === 'object' && (m.status === 'warn' || m.id === 'initUnusedFiles')) {
        messages.push({id: String(m.id), status: m.status, message: String(m.message)});
      }
    },
  });
  const files = {};
  for (const [name, content] of Object.entries(result)) {
    files[name] = Buffer.isBuffer(content) ? content.length : Buffer.byteLength(content, 'utf8');
  }
  return {ms: Date.now() - started, files, messages};
}

async function packNpm(ci, project) {
  const relations = (projectConfig(project).setting || {}).packNpmRelationList || [];
  const started = Date.now();
  const packed = [];
  for (const rel of relations) {
    const result = await ci.packNpmManually({
      packageJsonPath: path.resolve(project, rel.packageJsonPath),
      miniprogramNpmDistDir: path.resolve(project, rel.miniprogramNpmDistDir),
    });
    packed.push({relation: rel, result});
  }
  return {ms: Date.now() - started, packed};
}

async function main() {
  const [command, project, ...rest] = process.argv.slice(2);
  const out = rest[rest.length - 1];
  if (!['compile', 'packnpm'].includes(command) || !project || !out) {
    throw new Error('usage: wechat_ci.js compile <project> <key.pem> <out.json> | packnpm <project> <out.json>');
  }
  const attempts = setUpGuard(out);
  const ci = require('miniprogram-ci');
  const dir = path.resolve(project);
  let result;
  try {
    result = command === 'compile' ? await compile(ci, dir, path.resolve(rest[0])) : await packNpm(ci, dir);
  } catch (err) {
    result = {error: String((err && err.stack) || err)};
  }
  result.network = attempts();
  fs.writeFileSync(out, JSON.stringify(result, null, 1));
  // miniprogram-ci leaves handles open (its compiler process): the result is written, so go.
  process.exit(result.error ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
