"""The WeChat planner: pure arithmetic over sizes and limits."""

from __future__ import annotations

import dataclasses

import pytest

from bundler.errors import PlanError
from bundler.limits import KB, MB, WechatLimits
from bundler.targets.wechat.plan import ModelFiles, Plan, plan

LIMITS = WechatLimits()
PAGES = ["pages/index/index", "pages/big/index"]
SUB_FILES = [("pages/index/index.js", 100), ("index.js", 200)]


def model(
    name: str, shard_sizes: list[int], delivery: str = "auto", preload: tuple[str, ...] = ()
) -> ModelFiles:
    shards = tuple(
        (f"h/group1-shard{i + 1}of{len(shard_sizes)}.bin.br", size)
        for i, size in enumerate(shard_sizes)
    )
    return ModelFiles(name, delivery, ("h/model.json", 10 * KB), shards, preload)


def run(models: list[ModelFiles], limits: WechatLimits = LIMITS, remote: str | None = None) -> Plan:
    return plan(
        models,
        limits,
        main_files=[("app.js", 20 * KB)],
        runtime_files=[("miniprogram_npm/core.js", int(1.5 * MB))],
        subpackage_files=SUB_FILES,
        remote_base_url=remote,
        pages=PAGES,
    )


def test_a_model_larger_than_one_subpackage_is_cut_into_several_in_order() -> None:
    planned = run([model("big", [int(1.9 * MB)] * 3)])
    roots = planned.subpackages["big"]
    assert roots == ("models-big-1", "models-big-2", "models-big-3")
    packages = {p.root: p for p in planned.packages}
    for root in roots:
        assert packages[root].bytes <= LIMITS.subpackage_bytes
    # model.json travels with the first shard; the shards keep their order.
    first = [name for name, _ in packages["models-big-1"].files]
    assert first[-2:] == ["big/h/model.json", "big/h/group1-shard1of3.bin.br"]
    assert planned.delivery == {"big": "package"}


def test_the_main_package_and_the_runtime_come_first_and_hold_no_weights() -> None:
    planned = run([model("m", [100 * KB])])
    main, runtime, *rest = planned.packages
    assert (main.root, runtime.root) == ("__APP__", "tfjs")
    assert not any(".br" in name for name, _ in main.files + runtime.files)
    assert [p.root for p in rest] == ["models-m-1"]


def test_auto_goes_remote_when_the_packages_are_full_and_a_cdn_is_set() -> None:
    small = model("small", [500 * KB])
    huge = model("huge", [int(1.9 * MB)] * 16)  # ~30 MB: over what is left of the 30 MB
    planned = run([huge, small], remote="https://cdn.example.com/m/")
    assert planned.delivery == {"huge": "remote", "small": "package"}
    assert "huge" not in planned.subpackages


def test_auto_without_a_cdn_fails_with_the_numbers_and_what_to_do() -> None:
    huge = model("huge", [int(1.9 * MB)] * 16)
    with pytest.raises(PlanError) as err:
        run([huge])
    text = str(err.value)
    assert text.startswith('model "huge" needs ')
    assert "under the 30,720.0 KB limit for all packages together" in text
    assert "too many" in text and "quantize" in text and "remote_base_url" in text


def test_package_delivery_that_cannot_fit_says_by_how_much() -> None:
    with pytest.raises(PlanError) as err:
        run([model("huge", [int(1.9 * MB)] * 16, delivery="package")])
    assert 'or use delivery = "remote"' in str(err.value)


def test_remote_delivery_needs_a_base_url() -> None:
    with pytest.raises(PlanError) as err:
        run([model("m", [KB], delivery="remote")])
    assert str(err.value) == (
        'model "m": delivery = "remote" needs [wechat] remote_base_url, the https:// address '
        "the shards will be downloaded from"
    )


def test_the_subpackage_count_limit_sends_auto_models_remote() -> None:
    limits = dataclasses.replace(LIMITS, subpackage_count=3)  # the runtime takes one
    models = [model(f"m{i}", [KB]) for i in range(4)]
    planned = run(models, limits, remote="https://cdn.example.com/")
    assert [planned.delivery[f"m{i}"] for i in range(4)] == [
        "package",
        "package",
        "remote",
        "remote",
    ]


def test_a_page_preloads_the_runtime_first_then_its_models_subpackages() -> None:
    # The runtime (1.5 MB) and the model (11 KB and its page) fit the 2 MB together.
    planned = run([model("m", [KB], preload=("pages/big/index",))])
    assert planned.preload == {"pages/big/index": ("tfjs", "models-m-1")}
    assert planned.not_preloaded == {}
    assert planned.preload_warnings == ()


def test_no_model_preloaded_means_no_preload_rule_at_all() -> None:
    planned = run([model("m", [KB])])
    assert (planned.preload, planned.not_preloaded, planned.preload_warnings) == ({}, {}, ())


def test_the_runtime_takes_the_budget_and_models_follow_as_they_fit() -> None:
    # Alone the two models fit the 2 MB (no error); after the 1.5 MB runtime, a's 610 KB does
    # not, and b's 110 KB still does. The runtime counts once although both pages preload it.
    models = [
        model("a", [600 * KB], preload=("pages/index/index",)),
        model("b", [100 * KB], preload=("pages/big/index",)),
    ]
    planned = run(models)
    assert planned.preload == {
        "pages/index/index": ("tfjs",),
        "pages/big/index": ("tfjs", "models-b-1"),
    }
    assert planned.not_preloaded == {"pages/index/index": ("models-a-1",)}
    assert planned.preload_warnings == (
        'model "a": models-a-1 (610.3 KB) not preloaded: the tfjs runtime subpackage '
        "(1,536.0 KB) is preloaded first within the 2,048.0 KB that the main package's pages "
        "may preload together, and 401.7 KB of it remains; it is downloaded when a page first "
        "loads the model",
    )
    # Not preloaded is not delivered otherwise: a is still in its subpackage.
    assert planned.delivery == {"a": "package", "b": "package"}
    assert planned.subpackages["a"] == ("models-a-1",)


def test_a_model_in_several_subpackages_is_preloaded_as_far_as_it_fits() -> None:
    # Small limits, so that a model of two subpackages fits the budget alone (410 + 400 KB of
    # 1 MB) but not after the 500 KB runtime.
    limits = dataclasses.replace(LIMITS, subpackage_bytes=600 * KB, preload_bytes=MB)
    planned = plan(
        [model("big", [400 * KB, 400 * KB], preload=("pages/big/index",))],
        limits,
        main_files=[("app.js", 20 * KB)],
        runtime_files=[("miniprogram_npm/core.js", 500 * KB)],
        subpackage_files=SUB_FILES,
        remote_base_url=None,
        pages=PAGES,
    )
    assert planned.subpackages["big"] == ("models-big-1", "models-big-2")
    assert planned.preload == {"pages/big/index": ("tfjs", "models-big-1")}
    assert planned.not_preloaded == {"pages/big/index": ("models-big-2",)}
    assert planned.preload_warnings == (
        'model "big": models-big-2 (400.3 KB) not preloaded: the tfjs runtime subpackage '
        "(500.0 KB) is preloaded first within the 1,024.0 KB that the main package's pages may "
        "preload together, and 113.7 KB of it remains; it is downloaded when a page first "
        "loads the model",
    )


def test_a_runtime_over_the_preload_budget_is_left_out_and_the_models_still_preloaded() -> None:
    limits = dataclasses.replace(LIMITS, preload_bytes=MB)
    planned = run([model("m", [KB], preload=("pages/big/index",))], limits)
    assert planned.preload == {"pages/big/index": ("models-m-1",)}
    assert planned.not_preloaded == {"pages/big/index": ("tfjs",)}
    assert planned.preload_warnings == (
        "the tfjs runtime subpackage (1,536.0 KB) is not preloaded: it is over the 1,024.0 KB "
        "that the main package's pages may preload together",
    )


def test_a_page_that_preloads_a_remote_model_preloads_the_runtime() -> None:
    planned = run(
        [model("m", [KB], delivery="remote", preload=("pages/big/index",))],
        remote="https://cdn.example.com/m/",
    )
    assert planned.preload == {"pages/big/index": ("tfjs",)}


def test_preload_over_the_shared_budget_fails() -> None:
    models = [
        model("a", [int(1.5 * MB)], preload=("pages/index/index",)),
        model("b", [int(1.5 * MB)], preload=("pages/big/index",)),
    ]
    with pytest.raises(PlanError) as err:
        run(models)
    assert "over the 2,048.0 KB that the pages of one package may preload together" in str(
        err.value
    )


def test_preload_of_a_page_the_app_lacks_fails() -> None:
    with pytest.raises(PlanError) as err:
        run([model("m", [KB], preload=("pages/nope/index",))])
    assert str(err.value) == (
        'model "m": preload names the page "pages/nope/index", which the app does not have; '
        "its pages are: pages/index/index, pages/big/index"
    )


def test_a_runtime_over_its_subpackage_limit_fails_with_advice() -> None:
    with pytest.raises(PlanError) as err:
        plan(
            [],
            LIMITS,
            main_files=[],
            runtime_files=[("miniprogram_npm/a.js", 2 * MB), ("miniprogram_npm/b.js", MB)],
            subpackage_files=SUB_FILES,
            remote_base_url=None,
            pages=PAGES,
        )
    text = str(err.value)
    assert text.startswith("the tfjs runtime subpackage takes 3,072.0 KB, over its 2,048.0 KB")
    assert "ship models of one format only" in text


def test_a_shard_larger_than_a_subpackage_fails() -> None:
    with pytest.raises(PlanError) as err:
        run([model("m", [3 * MB])])
    assert "cannot fit one subpackage" in str(err.value)
