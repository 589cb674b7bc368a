"""Registry: built-ins build and describe themselves, YAML/JSON target files load, configs rebuild the
same target, and bad specs fail with one-line ValueErrors naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from guidelab.paths import get_path
from guidelab.targets import BoxMixture, GaussianMixture, Target, TargetSpec, get_target, list_targets

GAUSS_SPEC = {
    "kind": "gaussian-mixture",
    "name": "my-target",
    "description": "two classes",
    "dim": 2,
    "classes": [
        {
            "name": "a",
            "prior": 3.0,
            "components": [
                {"weight": 0.7, "mean": [1, 2], "cov": [[1, 0.2], [0.2, 1]]},
                {"weight": 2.1, "mean": [0, 0], "var": [0.5, 0.2]},
            ],
        },
        {"name": "b", "prior": 1.0, "components": [{"weight": 1, "mean": [-1, 0], "std": 0.3}]},
    ],
}

BOX_SPEC = {
    "kind": "box-mixture",
    "name": "boxes",
    "classes": [
        {"name": "pos", "components": [{"low": [1, 1], "high": [2, 2]}, {"weight": 3, "low": [2, 0], "high": [3, 1]}]},
        {"name": "neg", "components": [{"low": [-2, -2], "high": [-1, -1]}]},
    ],
}


@pytest.mark.parametrize("name", list(list_targets()))
def test_builtins_build_sample_and_describe(name):
    target = get_target(name)
    assert isinstance(target, Target)
    assert target.description
    assert "\n" not in target.description
    assert list_targets()[name] == target.description
    assert target.config() == {"name": name}
    assert name in repr(target)
    x = target.sample(64, 0, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (64, target.dim)
    path = get_path("rf")
    x0_hat = target.posterior_mean(x, 0.5, path, None)
    assert torch.isfinite(x0_hat).all()
    rebuilt = get_target(target.config())
    torch.testing.assert_close(rebuilt.posterior_mean(x, 0.5, path, 0), target.posterior_mean(x, 0.5, path, 0))


def test_builtin_contents():
    uni = get_target("chidambaram-uniform-1d")
    assert isinstance(uni, BoxMixture)
    assert uni.class_names == ["pos", "neg"]
    torch.testing.assert_close(uni.low.flatten(), torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(uni.class_prior, torch.tensor([0.5, 0.5], dtype=torch.float64))
    uni2 = get_target("chidambaram-uniform-2d")
    assert uni2.support_contains(torch.tensor([[1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]]), None).tolist() == [1, 1, 0]
    gauss = get_target("chidambaram-gauss-1d")
    torch.testing.assert_close(gauss.means.flatten(), torch.tensor([1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(gauss.covariances.flatten(), torch.ones(2, dtype=torch.float64))
    mm = get_target("multimodal-2d")
    a_comps = (mm.component_class == 0).nonzero().flatten()
    w = mm.log_component_weight[a_comps].exp()
    torch.testing.assert_close(w.sort().values, torch.tensor([0.25, 0.75], dtype=torch.float64))
    strong, weak = a_comps[w.argmax()], a_comps[w.argmin()]
    b_mean = mm.means[(mm.component_class == 1).nonzero().flatten()[0]]
    assert (mm.means[weak] - b_mean).norm() < (mm.means[strong] - b_mean).norm()
    for k in range(3):
        std = mm.eigenvalues[k].sqrt()
        assert std.min() >= 0.25
        assert std.max() <= 0.55
        assert std.max() / std.min() > 1.2
        assert mm.covariances[k, 0, 1].abs() > 1e-3  # full, not diagonal
    hd = get_target("gmm-highdim")
    assert hd.dim == 64
    assert hd.num_classes == 16
    assert hd.num_components == 32
    assert hd.eigenvalues.min() >= 0.1
    assert hd.eigenvalues.max() <= 1.0
    torch.testing.assert_close(get_target("gmm-highdim").means, hd.means)  # fixed seed
    small = get_target("gmm-highdim", dim=8, num_classes=3)
    assert small.dim == 8
    assert small.config() == {"name": "gmm-highdim", "dim": 8, "num_classes": 3}
    assert get_target(small.config()).dim == 8


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_target_files_load(tmp_path, fmt):
    path = tmp_path / f"target.{fmt}"
    path.write_text(yaml.safe_dump(GAUSS_SPEC) if fmt == "yaml" else json.dumps(GAUSS_SPEC))
    target = get_target(str(path))
    assert isinstance(target, GaussianMixture)
    assert target.name == "my-target"
    assert target.description == "two classes"
    assert target.class_names == ["a", "b"]
    torch.testing.assert_close(target.class_prior, torch.tensor([0.75, 0.25], dtype=torch.float64))
    torch.testing.assert_close(target.log_component_weight.exp(), torch.tensor([0.25, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(target.covariances[1], torch.diag(torch.tensor([0.5, 0.2], dtype=torch.float64)))
    torch.testing.assert_close(target.covariances[2], 0.09 * torch.eye(2, dtype=torch.float64))
    # config() is the spec: it rebuilds the same target, also split as get_target(name, **rest).
    config = target.config()
    assert config["kind"] == "gaussian-mixture"
    again = get_target(config)
    torch.testing.assert_close(again.covariances, target.covariances)
    rest = dict(config)
    again = get_target(rest.pop("name"), **rest)
    torch.testing.assert_close(again.means, target.means)


def test_box_spec_defaults(tmp_path):
    path = tmp_path / "boxes.yml"
    path.write_text(yaml.safe_dump(BOX_SPEC))
    target = get_target(path)
    assert isinstance(target, BoxMixture)
    assert target.dim == 2
    torch.testing.assert_close(target.class_prior, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(target.log_component_weight.exp(), torch.tensor([0.25, 0.75, 1.0], dtype=torch.float64))
    assert target.support_contains(torch.tensor([[2.5, 0.5]]), "pos").item()
    assert not target.support_contains(torch.tensor([[2.5, 0.5]]), "neg").item()
    spec = TargetSpec.model_validate(BOX_SPEC)
    assert spec.dim == 2
    assert isinstance(spec.build(), BoxMixture)


def _with(spec: dict, path: tuple, value) -> dict:
    spec = json.loads(json.dumps(spec))
    node = spec
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return spec


_DELETE = object()

BAD_SPECS = [
    (
        ("classes", 0, "components", 0, "cov"),
        [[1, 0], [0, -0.2]],
        r"classes\[0\]\.components\[0\]\.cov: not positive definite \(smallest eigenvalue -0.2\)",
    ),
    (
        ("classes", 0, "components", 0, "cov"),
        [[1, 0.3], [0.1, 1]],
        r"classes\[0\]\.components\[0\]\.cov: not symmetric",
    ),
    (("classes", 0, "components", 0, "cov"), [[1, 0]], r"classes\[0\]\.components\[0\]\.cov: expected a 2 × 2 matrix"),
    (
        ("classes", 1, "components", 0, "mean"),
        [1, 2, 3],
        r"classes\[1\]\.components\[0\]\.mean: expected 2 values, got 3",
    ),
    (
        ("classes", 0, "components", 1, "weight"),
        -1,
        r"classes\[0\]\.components\[1\]\.weight: .*greater than or equal to 0",
    ),
    (("classes", 0, "components", 1, "var"), [0.5, 0], r"classes\[0\]\.components\[1\]\.var: variances must be > 0"),
    (("classes", 1, "components", 0, "std"), -0.3, r"classes\[1\]\.components\[0\]\.std: .*greater than 0"),
    (
        ("classes", 1, "components", 0, "cov"),
        [[1, 0], [0, 1]],
        r"classes\[1\]\.components\[0\]: give exactly one of cov, std, var",
    ),
    (("classes", 1, "components", 0, "mean"), _DELETE, r"classes\[1\]\.components\[0\]\.mean: missing"),
    (("classes", 1, "components", 0, "mean"), ["x", 0], r"classes\[1\]\.components\[0\]\.mean\[0\]: .*valid number"),
    (
        ("classes", 1, "components", 0, "covv"),
        1,
        r"classes\[1\]\.components\[0\]\.covv: unknown key; did you mean 'cov'\? accepted: weight, mean, cov,",
    ),
    (("classes", 1, "prior"), _DELETE, r"classes\[1\]\.prior: give a prior for every class or for none"),
    (("classes", 1, "name"), "a", r"classes\[1\]\.name: duplicate class name 'a'"),
    (("classes", 1, "components"), [], r"classes\[1\]\.components: .*at least 1"),
    (("kind",), "gauss", r"kind: unknown value 'gauss'; accepted: gaussian-mixture, box-mixture$"),
    (("kind",), "box_mixture", r"kind: unknown value 'box_mixture'; did you mean 'box-mixture'\? accepted: "),
    (("dim",), 0, r"dim: .*greater than or equal to 1"),
]


@pytest.mark.parametrize(("where", "value", "message"), BAD_SPECS, ids=[m[:40] for _, _, m in BAD_SPECS])
def test_bad_specs_name_the_field(tmp_path, where, value, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(GAUSS_SPEC, where, value), allow_unicode=True))
    with pytest.raises(ValueError, match=message) as info:
        get_target(str(path))
    text = str(info.value)
    assert text.startswith(f"target file {path}: ")
    assert "\n" not in text


BAD_BOX_SPECS = [
    (
        ("classes", 0, "components", 0, "high"),
        [0.5, 2],
        r"classes\[0\]\.components\[0\]\.high: must exceed low .*dim 0",
    ),
    (("classes", 1, "components", 0, "low"), [1], r"classes\[1\]\.components\[0\]\.low: expected 2 values, got 1"),
    (("classes", 1, "components", 0, "mean"), [0, 0], r"classes\[1\]\.components\[0\]\.mean: not a field of a box"),
    (
        ("classes", 0, "components"),
        [{"weight": 0, "low": [0, 0], "high": [1, 1]}],
        r"classes\[0\]\.components: the weights",
    ),
]


@pytest.mark.parametrize(("where", "value", "message"), BAD_BOX_SPECS, ids=[m[:40] for _, _, m in BAD_BOX_SPECS])
def test_bad_box_specs(where, value, message):
    with pytest.raises(ValueError, match=message) as info:
        get_target(_with(BOX_SPEC, where, value))
    assert str(info.value).startswith("target spec: ")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ValueError, match="target: no built-in target or file named 'xyz'"):
        get_target("xyz")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"target file .*broken.json: not valid JSON"):
        get_target(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        get_target(str(listing))
    with pytest.raises(ValueError, match=r"^target 'gmm-highdim': unknown parameter 'colour'; accepted: "):
        get_target("gmm-highdim", colour="red")


def test_target_passthrough_and_class_names():
    target = get_target("multimodal-2d")
    assert get_target(target) is target
    assert target.class_index("b") == 1
    assert target.class_index("null") == -1
    with pytest.raises(ValueError, match="cond: unknown class 'c'"):
        target.class_index("c")
    assert np.isclose(float(target.class_prior.sum()), 1.0)
