"""Every platform number the bundler uses, named once, with its source (see docs/platforms.md).

Each WeChat limit can be overridden in the manifest under `[wechat.limits]`, by field name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KB = 1024  # WeChat's "KB" in its size messages ("上限为 2048 kb") is 1024 bytes.
MB = 1024 * KB


@dataclass(frozen=True)
class WechatLimits:
    """Limits of a WeChat mini-program; defaults as documented in 2026."""

    # Official subpackages doc: main package 2 MB (upload error "上限为 2048 kb").
    main_package_bytes: int = 2 * MB
    # Official subpackages doc: one subpackage 2 MB.
    subpackage_bytes: int = 2 * MB
    # Official subpackages doc: 30 MB for all packages (20 MB for service-provider apps).
    total_bytes: int = 30 * MB
    # WeChat developer community, 2021: DevTools error `["subPackages"] exceed limit 100`.
    subpackage_count: int = 100
    # Official preload doc: packages preloaded by the pages of one package share 2 MB.
    preload_bytes: int = 2 * MB
    # Official setStorage doc: 1 MB per key, 10 MB in all.
    storage_key_bytes: int = 1 * MB
    storage_total_bytes: int = 10 * MB
    # Official file-system doc: USER_DATA_PATH holds 200 MB (10 MB in 2019-2020).
    user_data_bytes: int = 200 * MB
    # Official readFile doc: one file at most 100 MB.
    file_bytes: int = 100 * MB
    # Official network doc: at most 10 request/downloadFile/uploadFile at once.
    concurrent_requests: int = 10
    # The bundler's own margin, not a platform limit: room kept in each model subpackage for
    # its small page and index.js, so that a shard cut to fit the rest never pushes the
    # subpackage over `subpackage_bytes`.
    subpackage_reserve_bytes: int = 16 * KB
    # The compiler adds @babel/runtime helpers to the main package when es6/enhance are on
    # (measured with miniprogram-ci 2.1.42 on the example: 11,271 bytes); kept in reserve.
    compiler_helpers_bytes: int = 16 * KB

    @property
    def shard_budget_bytes(self) -> int:
        """The largest compressed shard that fits one subpackage beside its page."""
        return self.subpackage_bytes - self.subpackage_reserve_bytes


# Official framework/structure doc: the file types kept at upload (`.bin` and `.onnx` are
# dropped though DevTools reads them), plus the code files themselves.
_CODE = "js json wxml wxss wxs"
_MEDIA = "png jpg jpeg gif svg cer mp3 aac m4a mp4 wav ogg silk wasm br cert"
UPLOAD_KEPT_EXTENSIONS = frozenset(f"{_CODE} {_MEDIA}".split())
# The oldest base library with every API the glue uses: readCompressedFile came in 2.21.1
# (miniprogram-api-typings 5.2.3), require.async in 2.11.2 (official require doc; the
# announcement says 2.17.3).
WECHAT_BASE_LIBRARY = "2.21.1"

WECHAT_LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(WechatLimits))

# tfjs converter's default shard size, "the max file size for caching for all major browsers"
# (tensorflowjs write_weights.py); the web target keeps it.
WEB_SHARD_BUDGET_BYTES = 4 * MB

# tfjsPlugin 0.2.0 (appid wx6afed118d9e81df9, 2021-04) supports the tfjs 3.x runtime;
# 3.21.0 is the last 3.x release and the one measured (docs/platforms.md).
TFJS_PLUGIN_PROVIDER = "wx6afed118d9e81df9"
DEFAULT_TFJS_PLUGIN_VERSION = "0.2.0"
DEFAULT_WECHAT_TFJS_VERSION = "3.21.0"
# The appid of WeChat DevTools' tourist mode. A project that declares a plugin fails under it
# with "插件未授权使用" (plugin not authorized): a plugin is added to a real appid in its admin
# console (official "使用插件" doc, which names the tab 第三方服务; developers call it 第三方设置).
TOURIST_APPID = "touristappid"
PLUGIN_CONSOLE = "mp.weixin.qq.com → 设置 → 第三方设置 → 插件管理"
# The web target loads what tensorflowjs 4.22 (pinned in pyproject.toml) writes with the
# matching runtime.
DEFAULT_WEB_TFJS_VERSION = "4.22.0"

# Brotli quality for weight shards (the bundler's choice, measured here). Quality 11 takes
# ~2 s per MB of float weights and saves under 1% against quality 9 (measured on random
# float32: 3,669,764 vs 3,697,187 bytes of 4,000,000), so shards default to 9; small text
# files always get 11.
DEFAULT_SHARD_BROTLI_QUALITY = 9
TEXT_BROTLI_QUALITY = 11

# --- the bundler's own sizes (not platform limits) -------------------------------------------

# Room planned in the main package for the files rendered only after the plan (app.json,
# project.config.json, bundler/models.js, the home page's data): a generous estimate, checked
# against the real bytes once they are rendered (the main package is measured again then).
# On the example (3 models of one shard each) they take 5,091 bytes of the 11,440 planned.
GENERATED_BASE_BYTES = 4 * KB
GENERATED_PER_MODEL_BYTES = 2 * KB
GENERATED_PER_SHARD_BYTES = 400

# The web target keeps compressed copies on disk (in the cache) only for files at least this
# large: reading a smaller one back costs more than compressing it again (tf.min.js, ~1.4 MB,
# takes seconds at brotli 11; the page and the loader, a few KB, take milliseconds).
KEPT_COMPRESSED_MIN_BYTES = 64 * KB
