// The tfjsPlugin's `localStorageIO(key)`, ported to plain JS for bench/wechat_cache.cjs.
//
// Follows src/plugin/utils/local_storage.ts of tensorflow/tfjs-wechat (plugin 0.2.0, the last
// commit touching it is 5de6555 "support to save model into binary files"; HEAD 6190272)
// step for step: the same keys, the same 800 KB split of one base64 string, the same storage
// calls in the same order, base64-js for the base64 (the plugin's dependency, pinned at 1.3.1).
// Only the TypeScript types are gone. It runs inside the simulated app (the wx simulator's
// `requirePlugin('tfjsPlugin')` has only configPlugin), with `wx` the simulator's and
// `require('base64-js')` given by the bench.
//
//   tensorflowjs_models/<key>/info                  JSON text of ModelArtifactsInfo
//   tensorflowjs_models/<key>/model_without_weight  JSON text of the artifacts less weightData
//                                                    (modelTopology, weightSpecs, format, ...)
//   tensorflowjs_models/<key>/weight_data_size      the number of chunks
//   tensorflowjs_models/<key>/weight_data:<i>       base64 of weightData, 800 * 1024 characters
//                                                    per key (the last one shorter)
'use strict';
const {fromByteArray, toByteArray} = require('base64-js');

const PATH_PREFIX = 'tensorflowjs_models';
const CHUNK_CHARS = 800 * 1024;

function modelKeys(path) {
  const key = (suffix) => [PATH_PREFIX, path, suffix].join('/');
  return {
    info: key('info'),
    modelArtifactsWithoutWeights: key('model_without_weight'),
    weightData: key('weight_data'),
    weightDataChunkSize: key('weight_data_size'),
  };
}

function artifactsInfo(artifacts) {
  if (artifacts.modelTopology instanceof ArrayBuffer) {
    throw new Error('Expected JSON model topology, received ArrayBuffer.');
  }
  return {
    dateSaved: new Date(),
    modelTopologyType: 'JSON',
    weightDataBytes: artifacts.weightData == null ? 0 : artifacts.weightData.byteLength,
  };
}

// The plugin splits with a regular expression: str.match(/.{1,N}/g).
function splitString(str, size) {
  return str.match(new RegExp(`.{1,${size}}`, 'g'));
}

// The plugin reads every key with the asynchronous wx.getStorage.
function getStorage(key) {
  return new Promise((resolve, reject) => {
    wx.getStorage({key, success: (res) => resolve(res.data), fail: (res) => reject(res)});
  });
}

// Not the plugin's code: the same reads with wx.getStorageSync, to show what the asynchronous
// calls cost in the simulator (bench/README.md, "The WeChat cache benchmark").
function getStorageSync(key) {
  return Promise.resolve(wx.getStorageSync(key));
}

class LocalStorageHandler {
  constructor(modelPath, read) {
    if (modelPath == null || !modelPath) {
      throw new Error('modelPath must not be null, undefined or empty.');
    }
    this.modelPath = modelPath;
    this.keys = modelKeys(modelPath);
    this.read = read;
  }

  async save(modelArtifacts) {
    if (modelArtifacts.modelTopology instanceof ArrayBuffer) {
      throw new Error('AsyncStorageHandler.save() does not support saving model topology in binary format.');
    }
    const modelArtifactsInfo = artifactsInfo(modelArtifacts);
    const {weightData, ...modelArtifactsWithoutWeights} = modelArtifacts;
    const weights = splitString(fromByteArray(new Uint8Array(weightData)), CHUNK_CHARS);
    try {
      wx.setStorageSync(this.keys.info, JSON.stringify(modelArtifactsInfo));
      wx.setStorageSync(this.keys.modelArtifactsWithoutWeights, JSON.stringify(modelArtifactsWithoutWeights));
      wx.setStorageSync(this.keys.weightDataChunkSize, weights.length);
      weights.forEach((value, index) => {
        wx.setStorageSync(`${this.keys.weightData}:${index}`, value);
      });
      return {modelArtifactsInfo};
    } catch (err) {
      wx.removeStorageSync(this.keys.info);
      weights.forEach((value, index) => {
        wx.removeStorageSync(`${this.keys.weightData}:${index}`);
      });
      wx.removeStorageSync(this.keys.weightDataChunkSize);
      wx.removeStorageSync(this.keys.modelArtifactsWithoutWeights);
      throw new Error(`Failed to save model '${this.modelPath}' to local storage.
            Error info ${err}`);
    }
  }

  async load() {
    const info = JSON.parse(await this.read(this.keys.info));
    if (info == null) {
      throw new Error(`In local storage, there is no model with name '${this.modelPath}'`);
    }
    if (info.modelTopologyType !== 'JSON') {
      throw new Error('BrowserLocalStorage does not support loading non-JSON model topology yet.');
    }
    const modelArtifacts = JSON.parse(await this.read(this.keys.modelArtifactsWithoutWeights));
    const weightDataSize = await this.read(this.keys.weightDataChunkSize);
    let weightDataBase64 = '';
    for (let i = 0; i < weightDataSize; i++) {
      const partialData = await this.read(`${this.keys.weightData}:${i}`);
      if (partialData == null) {
        throw new Error(`In local storage, the binary weight values of model '${this.modelPath}' are missing.`);
      }
      weightDataBase64 += partialData;
    }
    modelArtifacts.weightData = toByteArray(weightDataBase64).buffer;
    return modelArtifacts;
  }
}

function localStorageIO(modelPath) {
  return new LocalStorageHandler(modelPath, getStorage);
}

function localStorageIOSyncReads(modelPath) {
  return new LocalStorageHandler(modelPath, getStorageSync);
}

module.exports = {localStorageIO, localStorageIOSyncReads, CHUNK_CHARS, PATH_PREFIX};
