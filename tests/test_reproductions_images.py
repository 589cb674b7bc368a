"""The image reproductions 1-3 of issue 18 at ``ci`` size (the digits models): every claim asserted (those that do
not reproduce are asserted to come out false, so a change that makes one hold is noticed), the JSON and PNG files,
and independent pins: identities of the guiders and schedules, brute-force references of the measures. ``pytest -m
slow`` runs the ``paper`` sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from guidelab.experiments.reproductions import CLAIMS, REPRODUCTIONS

IMAGE = ("chidambaram-mnist", "stagewise-images", "adg-images")

HOLDS: dict[str, tuple[str, ...]] = {
    "chidambaram-mnist": ("samples_move_past_the_positive_class", "fd_turns_worse_at_large_gamma"),
    "stagewise-images": (
        "early_strong_guidance_covers_fewer_clusters",
        "tvcfg_equal_accuracy_to_constant",
        "tvcfg_lower_fd_than_constant",
    ),
    "adg-images": (
        "cfg_x0_norm_grows_with_gamma",
        "adg_x0_norm_bounded",
        "adg_less_saturation_than_cfg_at_high_gamma",
        "adg_keeps_accuracy_at_high_gamma",
    ),
}
FAILS: dict[str, dict[str, str]] = {
    "chidambaram-mnist": {
        "prescribed_gamma_near_best_by_accuracy_x_diversity": "accuracy is 1 at every γ and the feature spread grows "
        "again at large γ, so the product peaks at the largest γ",
        "prescribed_gamma_near_best_by_fd": "FD is least at γ = 1 on the binary digits model; the rule prescribes 5",
    },
    "stagewise-images": {
        "late_strong_guidance_less_within_cluster_variation": "at equal mean scale, early strong guidance (step-down) "
        "shrinks within-cluster variation more than late strong guidance (step-up) on the digits UNet",
    },
}


@pytest.fixture(scope="module")
def ci(tmp_path_factory: pytest.TempPathFactory):
    """Each image reproduction run once at ci size (on first use): name -> (result, out_dir)."""
    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            cache[name] = (REPRODUCTIONS[name]("ci", out), out)
        return cache[name]

    return get


def test_registered_with_their_sources():
    assert set(IMAGE) <= set(REPRODUCTIONS)
    assert CLAIMS["chidambaram-mnist"][1] == "arXiv 2409.13074"
    assert CLAIMS["stagewise-images"][1] == "arXiv 2509.22007"
    assert CLAIMS["adg-images"][1] == "arXiv 2506.11039"


@pytest.mark.parametrize("name", IMAGE)
def test_each_checks_its_size(name: str, tmp_path: Path):
    with pytest.raises(ValueError, match="size"):
        REPRODUCTIONS[name]("huge", tmp_path)


@pytest.mark.parametrize("name", IMAGE)
def test_writes_json_and_figures_and_every_claim_is_asserted(ci, name: str):
    result, out = ci(name)
    on_disk = json.loads((out / f"{name}.json").read_text())
    assert on_disk == json.loads(json.dumps(result, allow_nan=False))  # strict JSON
    assert result["reproduction"] == name and result["size"] == "ci"
    assert set(result["claims"]) == set(HOLDS[name]) | set(FAILS.get(name, {}))
    assert result["figures"]
    for figure in result["figures"]:
        data = (out / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for name_, ok in result["claims"].items():  # a claim that fails is noted with its numbers
        if not ok:
            assert any(name_ in note or "Not reproduced" in note for note in result["notes"]), name_


@pytest.mark.parametrize(("name", "claim"), [(n, c) for n, cs in HOLDS.items() for c in cs], ids=lambda v: str(v))
def test_claim_holds(ci, name: str, claim: str):
    result, _ = ci(name)
    assert result["claims"][claim], {"claim": claim, "notes": result["notes"]}


@pytest.mark.parametrize(
    ("name", "claim", "reason"),
    [(n, c, r) for n, cs in FAILS.items() for c, r in cs.items()],
    ids=lambda v: str(v)[:60],
)
def test_claim_does_not_reproduce(ci, name: str, claim: str, reason: str):
    result, _ = ci(name)
    assert result["claims"][claim] is False, f"{claim} now holds: move it to HOLDS ({reason})"


def test_the_report_shows_every_claim_and_figure(ci, tmp_path: Path):
    """``guidelab report`` on a folder holding the three outputs renders each one's claims and every PNG."""
    import shutil

    from guidelab.report.build import write_report

    for name in IMAGE:
        shutil.copytree(ci(name)[1], tmp_path / name)
    html = write_report(tmp_path).read_text()
    for name in IMAGE:
        result, _ = ci(name)
        assert f">{name}<" in html or name in html
        for claim in result["claims"]:
            assert claim in html
        for figure in result["figures"]:
            assert f"<figcaption>{figure}</figcaption>" in html


# --- chidambaram-mnist ------------------------------------------------------------------------------------------


def test_monotone_rule_and_prescription_on_hand_made_series():
    from guidelab.experiments.reproductions.chidambaram_mnist import is_monotone, prescribed_gamma

    assert is_monotone([0.5, 0.7, 0.69, 1.0], tol=0.02)  # a dip of 0.01 within tolerance
    assert not is_monotone([0.5, 0.7, 0.6, 1.0], tol=0.02)
    assert is_monotone([3.0, 2.0, 2.01, 1.0], tol=0.02)  # decreasing overall
    assert not is_monotone([3.0, 1.0, 1.5, 0.5], tol=0.02)
    g = [1.0, 2.0, 4.0, 8.0]
    assert prescribed_gamma(g, [True, True, False, True]) == 2.0
    assert prescribed_gamma(g, [True] * 4) == 8.0
    assert prescribed_gamma(g, [False] * 4) is None  # no admissible γ
    assert prescribed_gamma(g, [False, True, True, True]) is None


def test_projection_axis_puts_the_class_means_at_0_and_1():
    from guidelab.data import load_dataset
    from guidelab.experiments.reproductions.chidambaram_mnist import _axis, _project

    origin, d = _axis("digits")
    train = load_dataset("digits", "train")
    zeros, rest = train.images[train.labels == 0], train.images[train.labels != 0]
    means = torch.stack([zeros.double().mean(0), rest.double().mean(0)])
    assert _project(means, origin, d).tolist() == pytest.approx([1.0, 0.0], abs=1e-12)


def test_chidambaram_mnist_rule_is_applied_to_the_reported_trajectories(ci):
    from guidelab.experiments.reproductions.chidambaram_mnist import is_monotone, prescribed_gamma

    result, _ = ci("chidambaram-mnist")
    res, tol = result["results"], result["config"]["monotone_tol"]
    rows = res["by_gamma"]
    flags = [is_monotone(r["x0_hat_projection_mean"], tol) for r in rows]
    assert flags == [r["monotone"] for r in rows]
    assert all((r["largest_reversal"] <= tol) == r["monotone"] for r in rows)
    assert res["prescribed_gamma"] == prescribed_gamma([r["gamma"] for r in rows], flags)
    assert res["best_gamma_fd"] == min(rows, key=lambda r: r["fd"])["gamma"]
    # at t = 1 (same noise for every γ) CFG's x0̂ = x0̂_u + γ(x0̂_c − x0̂_u) is exactly linear in γ
    first = [r["x0_hat_projection_mean"][0] for r in rows]
    g = [r["gamma"] for r in rows]
    slope = (first[-1] - first[0]) / (g[-1] - g[0])
    assert first == pytest.approx([first[0] + slope * (x - g[0]) for x in g], abs=1e-4)


def test_binary_model_is_zero_against_the_rest():
    from guidelab.models.trained import load_trained

    model = load_trained("shipped", "digits-0-vs-rest")
    assert model.num_classes == 2 and model.class_names == ("0", "not-0")
    assert model.checkpoint_config["train"]["one_vs_rest"] == 0


# --- stagewise-images --------------------------------------------------------------------------------------------


def test_stagewise_images_schedules_share_the_mean_scale(ci):
    result, _ = ci("stagewise-images")
    gbar = result["config"]["gamma_bar"]
    for name, row in result["results"]["by_schedule"].items():
        assert row["mean_scale"] == pytest.approx(gbar, abs=1e-9), name
    tables = result["results"]["schedules"]
    quarter = len(tables["constant"]) // 4
    assert tables["step-down"][:quarter] == pytest.approx([2 * gbar] * quarter)
    assert tables["step-up"][quarter:] == pytest.approx([1.2 * gbar] * (3 * quarter))


def test_cluster_assignment_matches_kmeans_predict():
    from sklearn.cluster import KMeans

    from guidelab.experiments.reproductions.stagewise_images import _assign

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    km = KMeans(n_clusters=3, n_init=2, random_state=0).fit(x.numpy())
    y = torch.randn(20, 5, generator=g, dtype=torch.float64)
    assign, d2 = _assign(km, y)
    np.testing.assert_array_equal(assign, km.predict(y.numpy()))
    brute = ((y.numpy()[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(d2, brute, rtol=1e-9)


# --- adg-images ------------------------------------------------------------------------------------------------


def test_adg_images_gamma_1_is_the_conditional_model_for_both_guiders(ci):
    result, _ = ci("adg-images")
    cfg1, adg1 = result["results"]["cfg"][0], result["results"]["adg"][0]
    assert cfg1["gamma"] == adg1["gamma"] == 1.0
    assert cfg1["x0_hat_rms_mean"] == adg1["x0_hat_rms_mean"]
    assert cfg1["accuracy"] == adg1["accuracy"]


@pytest.fixture
def one_thread():
    """Tiny batches: more torch threads only wait on each other (as the reproductions' own runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_recorded_x0_hat_is_the_guided_one(one_thread):
    """At the first evaluation (t = 1, x_t the start noise) the recorded x0̂ is CFG's combination of the model's two
    predictions, and ADG's obeys its norm bound ‖x0̂‖ ≤ √2·‖x0̂_c‖ (the rule: ‖x0̂‖² = ‖F‖²(1 + sin 2a·sin θ))."""
    from guidelab.experiments.reproductions._common import per_copy
    from guidelab.experiments.reproductions._image_lab import guided_images, load_lab
    from guidelab.guiders import build_guider

    lab = load_lab("digits")
    labels = torch.arange(4)
    gammas = (1.0, 5.0)
    cfg = guided_images(lab, build_guider("cfg", scale=per_copy(gammas, 4)), 2, 4, labels, 2, 0)
    adg = guided_images(lab, build_guider("adg", scale=per_copy(gammas, 4)), 2, 4, labels, 2, 0)
    x1 = cfg.x_t[0, 0]
    assert torch.equal(x1, cfg.x_t[0, 1]) and torch.equal(x1, adg.x_t[0, 1])  # same noise for every setting
    t = torch.ones(4, dtype=torch.float64)
    with torch.no_grad():
        c = lab.model(x1, t, labels).double()
        u = lab.model(x1, t, torch.full((4,), -1)).double()
    torch.testing.assert_close(cfg.x0_hat[0, 0], c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cfg.x0_hat[0, 1], u + 5.0 * (c - u), rtol=1e-5, atol=1e-5)
    norm_adg = adg.x0_hat[0, 1].flatten(1).norm(dim=1)
    assert bool((norm_adg <= math.sqrt(2) * c.flatten(1).norm(dim=1) * (1 + 1e-6)).all())


def test_out_of_range_and_rms_against_loops():
    from guidelab.experiments.reproductions.adg_images import out_of_range, rms

    x = torch.tensor([[[[0.0, 1.06], [-1.2, 1.0]]], [[[2.0, 2.0], [2.0, -1.0]]]], dtype=torch.float64)
    assert out_of_range(x).tolist() == [0.5, 0.75]
    assert rms(x).tolist() == pytest.approx([math.sqrt((1.06**2 + 1.44 + 1) / 4), math.sqrt(13 / 4)])


# --- paper size ------------------------------------------------------------------------------------------------


# Paper size (MNIST): the claims that do not reproduce there, asserted to come out false (measured numbers in the
# README's reproduction table and the JSON notes). chidambaram-mnist's two prescription claims hold at paper size
# (prescribed γ = 1, best γ = 1 by FD and by accuracy × diversity), unlike at ci.
PAPER_FAILS: dict[str, dict[str, str]] = {
    "stagewise-images": {
        "early_strong_guidance_covers_fewer_clusters": "step-down covers fewer clusters (0.675 against 0.775) but its "
        "entropy ratio is within 0.02 of step-up's",
        "late_strong_guidance_less_within_cluster_variation": "step-up keeps more within-cluster variation",
        "tvcfg_lower_fd_than_constant": "TV-CFG's FD is higher than constant CFG's on the MNIST UNet (2.84, 2.55)",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE)
def test_paper_size(name: str, tmp_path: Path):
    """Paper size: every claim holds but those of PAPER_FAILS, which come out false (so a change is noticed)."""
    result = REPRODUCTIONS[name]("paper", tmp_path)
    assert json.loads((tmp_path / f"{name}.json").read_text())["claims"] == result["claims"]
    assert result["size"] == "paper" and set(HOLDS[name]) | set(FAILS.get(name, {})) <= set(result["claims"])
    expected = {claim: claim not in PAPER_FAILS.get(name, {}) for claim in result["claims"]}
    assert result["claims"] == expected, result["notes"]
