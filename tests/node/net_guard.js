// Preloaded (`--require`, and through NODE_OPTIONS into every process miniprogram-ci forks):
// refuses every network connection and notes each attempt, so that "offline" is a fact the
// tests check rather than a hope. Local IPC (Unix sockets, the pipes of child processes) is
// left alone.
//
// BUNDLER_NET_LOG names a file; each refused attempt appends one JSON line to it.
'use strict';

const fs = require('fs');

const LOG = process.env.BUNDLER_NET_LOG || '';

function refuse(kind, target) {
  const line = JSON.stringify({pid: process.pid, kind, target: String(target)});
  if (LOG) {
    try {
      fs.appendFileSync(LOG, line + '\n');
    } catch (_) {
      // The log is evidence, never a reason to fail differently.
    }
  }
  const err = new Error(`offline test: ${kind} to ${target} refused`);
  err.code = 'ECONNREFUSED';
  return err;
}

function describe(args) {
  const a = args[0];
  if (typeof a === 'string') return a;
  if (a instanceof URL) return a.href;
  if (a && typeof a === 'object') {
    const host = a.hostname || a.host || 'localhost';
    return `${a.protocol || ''}//${host}${a.port ? ':' + a.port : ''}${a.path || ''}`;
  }
  return '?';
}

for (const name of ['http', 'https']) {
  const mod = require(name);
  for (const fn of ['request', 'get']) {
    mod[fn] = function refusedRequest(...args) {
      throw refuse(`${name}.${fn}`, describe(args));
    };
  }
}

const net = require('net');
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function guardedConnect(...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  const isPipe =
    (typeof first === 'string' && !/^\d+$/.test(first)) || (first && typeof first.path === 'string');
  if (isPipe) return connect.apply(this, args);
  const target = typeof first === 'object' && first ? `${first.host || 'localhost'}:${first.port}` : `${args[1] || 'localhost'}:${first}`;
  throw refuse('net.connect', target);
};

const tls = require('tls');
tls.connect = function refusedTls(...args) {
  throw refuse('tls.connect', describe(args));
};

const dns = require('dns');
dns.lookup = function refusedLookup(host, ...rest) {
  const cb = rest[rest.length - 1];
  const err = refuse('dns.lookup', host);
  if (typeof cb === 'function') process.nextTick(cb, err);
  else throw err;
};
if (dns.promises) {
  dns.promises.lookup = async (host) => {
    throw refuse('dns.lookup', host);
  };
}

if (typeof globalThis.fetch === 'function') {
  globalThis.fetch = async (input) => {
    throw refuse('fetch', input && input.url ? input.url : input);
  };
}
