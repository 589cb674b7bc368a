"""guidelab's main paths on an accelerator against the CPU: exact denoisers, every guider's combine, every guider with
every solver on exact targets, the default metrics, the shipped digits model, the diffusers routes and the command
line, each run on the device under test and compared with an independent run on the CPU.

**The device under test** is ``GUIDELAB_TEST_DEVICE`` (``cuda``, ``cuda:1``, ``mps``, ``cpu``); unset, it is ``cuda``
where torch sees one, and the module is skipped otherwise. With ``GUIDELAB_TEST_DEVICE=cpu`` every test runs on the
CPU against the CPU; the "device" side then takes guidelab's torch paths (the numba kernels of the guider combines,
the exact mixtures and the pairwise sums are switched off for it, as they are for CUDA tensors) while the reference
takes the CPU's defaults, so even there two code paths are compared. The module is marked ``device``.

**Noise.** :class:`~guidelab.noise.NoiseSource` draws on the device it is given (``torch.Generator(device)``): a CUDA
run's noise for a seed is not the CPU run's. Comparisons of whole trajectories therefore draw the noise on the CPU for
both runs (:class:`CPUNoise`, patched into the sampler and Rectified-CFG++, moved to the state's device as the source
does), so they check everything but the generator, every stochastic solver included; the generator's own promises on
the device (reproducible, per sample, independent of n and of the batch, standard normal) are tested separately.
Pipelines are compared on explicit latents drawn on the CPU.

**Tolerances** (each comparison is against a CPU run, never a run against itself):

- exact denoisers (posterior mean, log p_t, scores, class posteriors), float64: 1e-10 relative (``close``:
  ``|a − b| ≤ 1e-10·(|b| + 1)`` elementwise); the CPU's numba loops and the device's torch path agree to rounding;
- guider combines, float64: 1e-11 relative error of the pair (x0̂, ε̂) per sample (diffusers' CFG-Zero* and TCFG,
  which compute in float32 inside: 1e-5 and 3e-5, ``FLOAT32_INSIDE``); float16 and bfloat16 on the device
  against float64 on the same rounded inputs: 2·eps of the dtype (2^-9, 2^-6), as tests/test_guiders_precision.py;
- sampling on exact targets, float64: 1e-9·(1 + max |x|) (the per-step rounding differences grow along 6 steps);
  float32 on the device against float64 on the device: finite, and every sample within 2e-3·(1 + max |x|); β-CFG at
  its default g = 1 depends on rounding by design (see ``ROUNDING_BOUND``): 1e-2, float32 only finite;
- half-precision states on the device against float64 on the CPU: median error ≤ 4·eps, largest ≤ 64·eps of
  (1 + max |x|);
- metrics, float64: 1e-9 relative;
- diffusers pipelines and the digits model, float32, TF32 off: 1e-3 of the largest |value| (GPU convolutions and
  attention sum in other orders); float16: runs, finite, within 0.1 of the largest |value| of float32;
- the same seed twice on the device: bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os

import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.noise import NoiseSource
from guidelab.paths import PathCoefficients, get_path, path_scalars
from guidelab.sampling import SOLVERS, sample
from guidelab.targets import get_target

ENV = "GUIDELAB_TEST_DEVICE"


def _device_under_test() -> torch.device | None:
    name = os.environ.get(ENV, "").strip()
    if name:
        return torch.device(name)  # a bad name fails the collection, loudly: it was asked for
    return torch.device("cuda") if torch.cuda.is_available() else None


DEV = _device_under_test()
ON_CPU = DEV is not None and DEV.type == "cpu"
D64 = torch.float64
HALVES = [torch.float16, torch.bfloat16]

pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(
        DEV is None,
        reason=f"no accelerator: torch.cuda.is_available() is False and {ENV} is unset "
        f"(set {ENV}=cuda, mps or cpu to run these)",
    ),
]


# --- helpers ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_paths():
    """The device side's code paths. On the CPU: guidelab's torch paths, the numba kernels off (what CUDA tensors
    take); on an accelerator nothing changes, so a CPU-only path taken for a device tensor fails there."""
    if not ON_CPU:
        yield
        return
    from guidelab.guiders import fused_jit
    from guidelab.metrics import pairwise_jit
    from guidelab.targets import mixture_jit

    sets = [fused_jit.KERNELS, mixture_jit.KERNELS, pairwise_jit.KERNELS]
    saved = [k._kernels for k in sets]
    for k in sets:
        k._kernels = False
    try:
        yield
    finally:
        for k, v in zip(sets, saved, strict=True):
            k._kernels = v


@contextlib.contextmanager
def exact_float32():
    """No TF32 in float32 matmuls and convolutions for the duration (restored after)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class CPUNoise(NoiseSource):
    """The sampler's noise source with its generators on the CPU whatever device it is asked for (the draws are moved
    to the state's device by NoiseSource itself): the same numbers on every device."""

    def __init__(self, seed=0, device="cpu", ids=None):
        super().__init__(seed, "cpu", ids)


@pytest.fixture
def cpu_noise(monkeypatch):
    import guidelab.guiders.rectified_cfg_pp as rcfg
    import guidelab.sampling as sampling

    monkeypatch.setattr(sampling, "NoiseSource", CPUNoise)
    monkeypatch.setattr(rcfg, "NoiseSource", CPUNoise)


def on_cpu(value):
    """Tensors (also inside tuples, lists, dicts and records) moved to the CPU in float64, for comparison."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double() if value.is_floating_point() else value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_cpu(v) for v in value)
    return value


def where(value) -> set[str]:
    """The device types of the tensors in ``value``."""
    if isinstance(value, torch.Tensor):
        return {value.device.type}
    if isinstance(value, dict):
        return set().union(*(where(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(where(v) for v in value)) if value else set()
    return set()


def close(got, want, rtol, what=""):
    """``|got − want| ≤ rtol·(|want| + 1)`` elementwise, infinities and NaNs in the same places."""
    got, want = on_cpu(got), on_cpu(want)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} against {tuple(want.shape)}"
    same_special = (got == want) | (torch.isnan(got) & torch.isnan(want))
    finite = torch.isfinite(want) & torch.isfinite(got)
    err = torch.where(finite, (got - want).abs() / (want.abs() + 1), torch.zeros_like(got))
    bad = ~(same_special | (finite & (err <= rtol)))
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} entries differ, max relative {float(err.max()):.3g}"


def rel_max(a, b) -> float:
    """max |a − b| / max |b| (both moved to the CPU in float64)."""
    a, b = on_cpu(a), on_cpu(b)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_the_device_is_usable():
    x = torch.arange(6, dtype=torch.float32, device=DEV).reshape(2, 3)
    assert x.device.type == DEV.type
    assert float((x @ x.T).sum()) == 83.0
    if DEV.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEV)}, torch {torch.__version__}, CUDA {torch.version.cuda}")


# --- exact targets --------------------------------------------------------------------------------------------

TARGETS = {
    "multimodal-2d": {},
    "chidambaram-uniform-1d": {},
    "chidambaram-uniform-2d": {},
    "chidambaram-gauss-1d": {},
    "gmm-highdim": {},  # 64-D, 16 classes × 2 components
}


@pytest.fixture(scope="module")
def targets():
    return {name: get_target(name, **params) for name, params in TARGETS.items()}


def _points(target, n, seed):
    """States x_t that reach every regime: near the data, far in the tails, between the modes."""
    g = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, target.dim, generator=g, dtype=D64) + 0.5


def _labels(target, n):
    return torch.tensor([(k % (target.num_classes + 1)) - 1 for k in range(n)])  # −1 (null) and every class


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "ve"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_exact_denoisers_match_the_cpu(targets, name, path_name):
    """Posterior means, log p_t, per-component log p_t, class posteriors and scores at one shared time and at one time
    per sample (t from 1e-4 to 1), float64: 1e-10 relative."""
    target, path = targets[name], get_path(path_name)
    n = 257
    x = _points(target, n, seed=1)
    labels = _labels(target, n)
    t_each = torch.linspace(1e-4, 1.0, n, dtype=D64)[torch.randperm(n, generator=torch.Generator().manual_seed(2))]
    for t in (torch.tensor(0.37, dtype=D64), t_each):
        ref_mean, ref_lp = target.posterior_mean_and_log_prob(x, t, path, labels)
        ref_uncond = target.log_prob_t(x, t, path, None)
        ref_comp = target.component_log_prob_t(x, t, path)
        ref_post = target.class_log_posterior(x, t, path)
        with torch_paths():
            xd, td, ld = x.to(DEV), t.to(DEV), labels.to(DEV)
            mean, lp = target.posterior_mean_and_log_prob(xd, td, path, ld)
            got = {
                "mean": mean,
                "log_prob": lp,
                "log_prob_uncond": target.log_prob_t(xd, td, path, None),
                "component_log_prob": target.component_log_prob_t(xd, td, path),
                "class_log_posterior": target.class_log_posterior(xd, td, path),
                "class_0_mean": target.posterior_mean(xd, td, path, 0),
            }
        assert where(got) == {DEV.type}, f"results left the device: {where(got)}"
        want = {
            "mean": ref_mean,
            "log_prob": ref_lp,
            "log_prob_uncond": ref_uncond,
            "component_log_prob": ref_comp,
            "class_log_posterior": ref_post,
            "class_0_mean": target.posterior_mean(x, t, path, 0),
        }
        for key in want:
            close(got[key], want[key], 1e-10, f"{name} on {path_name}, {key}, t {'shared' if t.ndim == 0 else 'each'}")
    tt = torch.tensor(0.3, dtype=D64)
    with torch_paths():
        score = target.score(x[:64].to(DEV), tt.to(DEV), path, labels[:64].to(DEV))
    close(score, target.score(x[:64], tt, path, labels[:64]), 1e-10, f"{name} score")


@pytest.mark.parametrize("name", list(TARGETS))
def test_exact_denoisers_in_float32_and_the_denoiser_object(targets, name):
    """float32 on the device: within 1e-4·(|mean| + 1) of the float64 CPU mean; the ExactDenoiser object on device
    states (what samplers call) equals the CPU in float64."""
    target, path = targets[name], get_path("rf")
    x, labels = _points(target, 200, seed=3), _labels(target, 200)
    t = torch.full((200,), 0.45, dtype=D64)
    want = target.posterior_mean(x, t, path, labels)
    with torch_paths():
        got32 = target.posterior_mean(x.float().to(DEV), t.float().to(DEV), path, labels.to(DEV))
        den = target.denoiser(path)
        got = den(x.to(DEV), t.to(DEV), labels.to(DEV))
    assert got32.dtype == torch.float32 and got32.device.type == DEV.type
    close(got32, want, 1e-4, f"{name} float32")
    close(got, target.denoiser(path)(x, t, labels), 1e-10, f"{name} ExactDenoiser")


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_sampling_with_a_device_generator(targets, name):
    """Exact samples drawn with a generator on the device: on the device, finite, reproducible, and (boxes) inside
    the class support; the class means within 5 standard errors."""
    target = targets[name]
    n = 4000
    for cond in (None, 0):
        a = target.sample(n, cond, generator=torch.Generator(device=DEV).manual_seed(5))
        b = target.sample(n, cond, generator=torch.Generator(device=DEV).manual_seed(5))
        assert a.device.type == DEV.type and torch.equal(a, b)
        a = on_cpu(a)
        assert torch.isfinite(a).all()
        if hasattr(target, "support_contains"):
            assert bool(on_cpu(target.support_contains(a, cond)).all())
        if cond is not None:
            mean = target.mean(cond)
            se = a.std(0) / math.sqrt(n)
            assert bool(((a.mean(0) - mean).abs() <= 5 * se + 1e-12).all()), (a.mean(0), mean)


# --- guider combines ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learned_checkpoints(tmp_path_factory, targets):
    """A conditional learned-weights checkpoint per set of class names, and a conditioning-agnostic one (ω = 1.5 at
    start)."""
    from guidelab.models.guidance_weights import GuidanceWeights, save_weights

    root = tmp_path_factory.mktemp("learned")
    out = {}
    for target in [*targets.values(), None]:
        names = target.class_names if target is not None else ["a", "b"]
        key = tuple(names)
        if key not in out:
            path = root / f"weights-{len(out)}.pt"
            save_weights(GuidanceWeights(len(names), init_omega=1.5), path, {"class_names": list(names)})
            out[key] = str(path)
    save_weights(GuidanceWeights(0, init_omega=1.5), root / "unconditional.pt", {})  # one ω for every class
    out["unconditional"] = str(root / "unconditional.pt")
    return out


# every registered guider (rectified-cfg++, which evaluates the model inside its step, only in the sampling tests) and
# diffusers' own, with parameters that make the nonlinear parts act
COMBINE_CASES = [
    ("cfg", {"scale": 3.0}),
    ("cfg", {"scale": [1.0, 3.0]}),
    ("adamag", {"scale": 4.0, "kappa": 1.0}),
    ("adg", {"scale": 3.0}),
    ("apg", {"scale": 5.0}),
    ("apg", {"scale": 5.0, "norm_dims": [1], "momentum_form": "ema", "norm_threshold": 1.0}),
    ("beta-cfg", {"scale": 3.0}),
    ("cfg++", {"scale": 0.6}),
    ("cfg-zero-star", {"scale": 4.0, "zero_init_steps": 0}),
    ("dynamic-thresholding", {"scale": 3.0, "data_range": [-4.0, 4.0]}),  # latents beyond it: clipping acts
    ("fbg", {"pi": 0.5, "scale": 2.0}),
    ("learned", {}),
    ("learned", {"unconditional": True}),
    ("mambo-g", {"scale": 6.0}),
    ("rescale", {"scale": 5.0}),
    ("rescale", {"scale": 5.0, "space": "eps"}),
    ("tangential", {"scale": 3.0}),
    ("weak-model", {"scale": 2.5}),
    ("diffusers:ClassifierFreeGuidance", {"guidance_scale": 4.0}),
    ("diffusers:AdaptiveProjectedGuidance", {"guidance_scale": 4.0}),
    ("diffusers:ClassifierFreeZeroStarGuidance", {"guidance_scale": 4.0, "zero_init_steps": 0}),
    ("diffusers:TangentialClassifierFreeGuidance", {"guidance_scale": 4.0}),
]
COMBINE_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(COMBINE_CASES)]
# diffusers' CFG-Zero* and TCFG cast to float32 inside whatever the input dtype (diffusers/guiders/
# classifier_free_zero_star_guidance.py: cond.float(); tangential_classifier_free_guidance.py: the SVD's operands
# .float()), so their float64 results on two devices agree to float32 rounding only: measured on an H200 against the
# CPU 1.0e-7 (CFG-Zero*) and 2.9e-6 (TCFG, the SVD's error grows as its singular values close up).
FLOAT32_INSIDE = {"diffusers:ClassifierFreeZeroStarGuidance": 1e-5, "diffusers:TangentialClassifierFreeGuidance": 3e-5}
HALF_TOLERANCE = {torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7}


def test_the_combine_cases_cover_every_registered_guider():
    from guidelab.guiders import GUIDERS

    assert {name for name, _ in COMBINE_CASES} | {"rectified-cfg++"} >= set(GUIDERS)


def _build(name, params, learned_checkpoints, class_names=("a", "b")):
    if name == "learned":
        key = "unconditional" if params.get("unconditional") else tuple(class_names)
        return build_guider("learned", checkpoint=learned_checkpoints[key])
    return build_guider(name, **params)


def _latent_case(path, t, space, seed, shape=(2, 4, 16, 16), scale=2.0):
    """x_t and cond/uncond predictions in ``space`` with latent-like clean estimates (float64, CPU)."""
    g = torch.Generator().manual_seed(seed)
    x0 = scale * (torch.randn(*shape, generator=g, dtype=D64) + 0.5 * torch.randn(1, shape[1], 1, 1, generator=g))
    c = path.coefficients(torch.tensor(t, dtype=D64))
    x_t = c.alpha * x0 + c.sigma * torch.randn(*shape, generator=g, dtype=D64)
    x0_c = x0 + 0.1 * scale * torch.randn(*shape, generator=g, dtype=D64)
    x0_u = x0_c + 0.3 * scale * torch.randn(*shape, generator=g, dtype=D64)

    def to_space(x0_hat):
        eps = (x_t - c.alpha * x0_hat) / c.sigma
        return {"x0": x0_hat, "eps": eps, "velocity": c.d_alpha * x0_hat + c.d_sigma * eps}[space]

    u = to_space(x0_u)
    return x_t, {"cond": to_space(x0_c), "uncond": u, "guide0": u.clone()}  # guide0: weak-model's null pass


def _steps(guider, path, times, x_t, raw, space, *, scalars: bool):
    """Two consecutive steps (indices 3 and 4 of 10) as the sampler runs them: labels and predictions on x_t's device,
    the path's coefficients as 0-d tensors there; ``scalars=False`` takes the per-sample (elementwise) conversions."""
    device, batch = x_t.device, x_t.shape[0]
    grid = torch.cat([torch.linspace(1.0, times[0], 4, dtype=D64), torch.linspace(times[1], 0.0, 7, dtype=D64)])
    cond = torch.arange(batch, device=device) % 2
    guider.reset(batch)
    guider.prepare(grid, path, None)
    outs = []
    for index, t in zip((3, 4), times, strict=True):
        sc = path_scalars(path, t)
        ctx = StepContext(index, 10, t, sc[1] / sc[0], grid, path, cond=cond)
        names = {p.name for p in guider.passes(ctx)}
        if scalars:
            coefs = PathCoefficients(*torch.tensor(sc, dtype=x_t.dtype, device=device).unbind())
        else:
            coefs = PathCoefficients(*(torch.full((batch,), v, dtype=D64, device=device) for v in sc)).expand_as(x_t)
        preds = Predictions({k: (v, space) for k, v in raw.items() if k in names}, x_t, coefs, sc if scalars else None)
        outs.append(guider.guide(preds, ctx))
        x_t = outs[-1].x0_hat * path_scalars(path, times[1])[0] + outs[-1].eps_hat * path_scalars(path, times[1])[1]
    return [(o.x0_hat, o.eps_hat) for o in outs]


def _pair_error(got, want):
    """Per-sample relative error of the pair against the reference, max over samples and the two steps."""
    worst = 0.0
    for (x0, eps), (rx0, reps) in zip(on_cpu(got), on_cpu(want), strict=True):
        num = (x0 - rx0).flatten(1).square().sum(1) + (eps - reps).flatten(1).square().sum(1)
        den = rx0.flatten(1).square().sum(1) + reps.flatten(1).square().sum(1)
        worst = max(worst, float((num / den).sqrt().max()))
    return worst


@pytest.mark.parametrize(
    ("path_name", "times", "space"), [("rf", (0.7, 0.6), "velocity"), ("vp-cosine", (0.5, 0.4), "eps")]
)
@pytest.mark.parametrize(("name", "params"), COMBINE_CASES, ids=COMBINE_IDS)
def test_guider_combines_match_the_cpu(name, params, path_name, times, space, learned_checkpoints):
    """Every guider's combine over two steps on device predictions equals the CPU's in float64 (1e-11; float32
    rounding for the diffusers guiders that compute in float32, ``FLOAT32_INSIDE``), with the
    sampler's scalar conversions and with per-sample coefficients; in float16 and bfloat16 on the device it runs,
    returns the dtype, stays finite and lies within 2·eps of the float64 result on the same rounded inputs."""
    path = get_path(path_name)
    x_t, raw = _latent_case(path, times[0], space, seed=3)
    for scalars in (True, False):
        want = _steps(_build(name, params, learned_checkpoints), path, times, x_t, raw, space, scalars=scalars)
        with torch_paths():
            got = _steps(
                _build(name, params, learned_checkpoints), path, times, x_t.to(DEV),
                {k: v.to(DEV) for k, v in raw.items()}, space, scalars=scalars,
            )  # fmt: skip
        assert where(got) == {DEV.type}
        err = _pair_error(got, want)
        tol = FLOAT32_INSIDE.get(name, 1e-11)
        assert err <= tol, f"{name} (scalars={scalars}): relative error {err:.3g} against the CPU"
    for dtype in HALVES:
        rounded = {k: v.to(dtype) for k, v in raw.items()}
        with torch_paths():
            got = _steps(
                _build(name, params, learned_checkpoints), path, times, x_t.to(dtype).to(DEV),
                {k: v.to(DEV) for k, v in rounded.items()}, space, scalars=True,
            )  # fmt: skip
        ref = _steps(
            _build(name, params, learned_checkpoints), path, times, x_t.to(dtype).double(),
            {k: v.double() for k, v in rounded.items()}, space, scalars=True,
        )  # fmt: skip
        assert all(a.dtype == b.dtype == dtype for a, b in got), f"{name}: {[(a.dtype, b.dtype) for a, b in got]}"
        assert all(bool(torch.isfinite(a).all() and torch.isfinite(b).all()) for a, b in got), f"{name} {dtype}"
        # the first step only: the second starts from the half-rounded first, which the float64 run does not see
        err = _pair_error(got[:1], ref[:1])
        assert err <= HALF_TOLERANCE[dtype], f"{name} {dtype}: relative error {err:.3g} against float64"


# --- sampling on exact targets: every guider, every solver --------------------------------------------------------

SAMPLE_TARGETS = [("multimodal-2d", "rf"), ("chidambaram-uniform-1d", "vp-cosine"), ("gmm-highdim", "rf")]
SAMPLE_GUIDERS = [
    ("cfg", {"scale": 3.0}),
    ("cfg", {"schedule": "interval", "scale": 3.0}),
    ("adamag", {"scale": 3.0}),
    ("adg", {"scale": 3.0}),
    ("apg", {"scale": 3.0}),
    ("beta-cfg", {"scale": 3.0}),  # see ROUNDING_BOUND
    ("beta-cfg", {"scale": 3.0, "norm_power": 0.0}),
    ("cfg++", {"scale": 0.6}),
    ("cfg-zero-star", {"scale": 3.0}),
    ("dynamic-thresholding", {"scale": 3.0}),
    ("fbg", {}),
    ("learned", {}),
    ("mambo-g", {"scale": 3.0}),
    ("rectified-cfg++", {"scale": 3.0}),
    ("rescale", {"scale": 3.0}),
    ("rescale", {"scale": 3.0, "space": "eps"}),
    ("tangential", {"scale": 3.0}),
    ("weak-model", {"scale": 2.0}),
    ("weak-model", {"scale": 2.0, "guide_model": "weak", "guide_cond": "cond"}),  # a second model (autoguidance)
    ("diffusers:ClassifierFreeGuidance", {"guidance_scale": 3.0}),
    ("diffusers:AdaptiveProjectedGuidance", {"guidance_scale": 3.0}),
]
SAMPLE_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(SAMPLE_GUIDERS)]
# β-CFG's default g = 1 scales the difference Δ = ε̂_c − ε̂_u to a fixed length ω·B(p): where a sample's class posterior
# saturates, Δ is at rounding level and its direction is rounding noise, so the samples depend on the last bits of the
# arithmetic (float32 against float64 moves them by O(1) on every target here; two float64 paths by ~1e-3). A property
# of the rule, not of a device: float64 is compared to 1e-2·(1 + max |x|) and float32 only for running and finiteness;
# β-CFG with g = 0 is compared at the normal tolerances.
ROUNDING_BOUND = [("beta-cfg", {"scale": 3.0})]
STEPS, N = 6, 24


def test_the_sampling_cases_cover_every_registered_guider():
    from guidelab.guiders import GUIDERS

    assert {name for name, _ in SAMPLE_GUIDERS} >= set(GUIDERS)


def _sample(target, path, name, params, solver, device, dtype, checkpoints):
    """One run of ``sample``: its result, or the ValueError it raised (as text)."""
    from guidelab.targets.under_conditioned import UnderConditionedDenoiser

    params = dict(params)
    if name == "learned":
        params = {"checkpoint": checkpoints[tuple(target.class_names)]}
    if params.get("guide_model") == "weak":
        params["models"] = {"weak": UnderConditionedDenoiser(target, path, leak=0.5)}
    grid = make_grid("uniform", STEPS, path, t_max=0.99 if solver == "euler-maruyama" else 1.0)
    try:
        return sample(
            target.denoiser(path), build_guider(name, **params), grid=grid, n=N, shape=(target.dim,),
            cond=_labels(target, N), solver=solver, seed=11, dtype=dtype, device=device,
        )  # fmt: skip
    except ValueError as err:
        return str(err)


@pytest.mark.parametrize(("name", "params"), SAMPLE_GUIDERS, ids=SAMPLE_IDS)
@pytest.mark.parametrize(("target_name", "path_name"), SAMPLE_TARGETS, ids=[t for t, _ in SAMPLE_TARGETS])
def test_sampling_matches_the_cpu(cpu_noise, targets, learned_checkpoints, target_name, path_name, name, params):
    """Every solver: the device run in float64 equals the CPU run (same noise, drawn on the CPU) to 1e-9·(1 + max |x|),
    with the same diverged samples and NFE, or raises the same error; float32 on the device is finite and within
    2e-3·(1 + max |x|) of float64 on the device."""
    target, path = targets[target_name], get_path(path_name)
    loose = (name, params) in ROUNDING_BOUND
    tol64, tol32 = (1e-2, math.inf) if loose else (1e-9, 2e-3)
    failures = []
    for solver in SOLVERS:
        ref = _sample(target, path, name, params, solver, "cpu", D64, learned_checkpoints)
        with torch_paths():
            got = _sample(target, path, name, params, solver, DEV, D64, learned_checkpoints)
            got32 = _sample(target, path, name, params, solver, DEV, torch.float32, learned_checkpoints)
        if isinstance(ref, str) or isinstance(got, str):
            if got != ref:
                failures.append(f"{solver}: CPU {ref if isinstance(ref, str) else 'ran'}; device {got}")
            continue
        if isinstance(got32, str):
            failures.append(f"{solver}: float32 on the device raised {got32}")
            continue
        if got.x.device.type != DEV.type or got.x.dtype != D64:
            failures.append(f"{solver}: samples on {got.x.device} in {got.x.dtype}")
        scale = 1 + float(ref.x.abs().max())
        err = float((on_cpu(got.x) - ref.x).abs().max())
        if not err <= tol64 * scale:
            failures.append(f"{solver}: float64 differs from the CPU by {err:.3g} (max |x| {scale - 1:.3g})")
        if not torch.equal(on_cpu(got.diverged), ref.diverged) or (got.nfe, got.calls) != (ref.nfe, ref.calls):
            failures.append(f"{solver}: diverged {got.num_diverged} vs {ref.num_diverged}, nfe {got.nfe} vs {ref.nfe}")
        x32, x64 = on_cpu(got32.x), on_cpu(got.x)
        both = ~(on_cpu(got32.diverged) | on_cpu(got.diverged))
        err32 = float((x32 - x64)[both].abs().max()) if bool(both.any()) else 0.0
        if not (torch.isfinite(x32).all() and got32.x.dtype == torch.float32 and err32 <= tol32 * scale):
            failures.append(f"{solver}: float32 differs from float64 by {err32:.3g} (max |x| {scale - 1:.3g})")
    assert not failures, f"{name} on {target_name}:\n" + "\n".join(failures)


HALF_EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
HALF_GUIDERS = [
    ("cfg", {"scale": 3.0}),
    ("apg", {"scale": 3.0}),
    ("cfg-zero-star", {"scale": 3.0}),
    ("rescale", {"scale": 3.0}),
    ("tangential", {"scale": 3.0}),
    ("adamag", {"scale": 3.0}),
]


@pytest.mark.parametrize("dtype", HALVES, ids=["fp16", "bf16"])
@pytest.mark.parametrize(("target_name", "path_name"), SAMPLE_TARGETS, ids=[t for t, _ in SAMPLE_TARGETS])
def test_sampling_in_half_precision(cpu_noise, targets, target_name, path_name, dtype):
    """A half-precision state on the device (the exact denoiser and the guider's rule run in it, or upcast): samples
    in the dtype, finite, none diverged, and near the float64 CPU samples: the median error within 4·eps·(1 + max |x|)
    and the largest within 64·eps·(1 + max |x|) (6 steps of a few roundings each; on the CPU 0.6 and 10 eps)."""
    target, path = targets[target_name], get_path(path_name)
    grid = make_grid("uniform", STEPS, path)
    failures = []
    for name, params in HALF_GUIDERS:
        if name == "rescale" and target.dim == 2:
            continue  # its per-sample std of 2 coordinates can sit at its rounding floor (README): 360 eps measured
        for solver in ("heun", "euler-ancestral"):
            kw = {"grid": grid, "n": 48, "shape": (target.dim,), "cond": 0, "solver": solver, "seed": 2}
            ref = sample(target.denoiser(path), build_guider(name, **params), dtype=D64, **kw)
            with torch_paths():
                got = sample(target.denoiser(path), build_guider(name, **params), dtype=dtype, device=DEV, **kw)
            scale, eps = 1 + float(ref.x.abs().max()), HALF_EPS[dtype]
            x = on_cpu(got.x)
            if got.x.dtype != dtype or not bool(torch.isfinite(x).all()) or got.num_diverged:
                failures.append(
                    f"{name} {solver}: {got.x.dtype}, {got.num_diverged} diverged, finite {x.isfinite().all()}"
                )
                continue
            err = (x - ref.x).abs()
            median, worst = float(err.median()) / (eps * scale), float(err.max()) / (eps * scale)
            if not (median <= 4 and worst <= 64):
                failures.append(f"{name} {solver}: median error {median:.2g} eps, largest {worst:.2g} eps")
    assert not failures, f"{target_name} in {dtype}:\n" + "\n".join(failures)


def test_feynman_kac_correctors_match_the_cpu(cpu_noise, targets):
    """FKC's weights and per-class resampling (the particles move between devices) on the device equal the CPU's."""
    from guidelab.fkc import FKCConfig

    target, path = targets["multimodal-2d"], get_path("rf")
    grid = make_grid("uniform", 8, path, t_max=0.99)
    kw = {"grid": grid, "n": 64, "shape": (2,), "cond": torch.arange(64) % 2, "solver": "euler-maruyama", "seed": 3}
    ref = sample(target.denoiser(path), build_guider("cfg", scale=3.0), dtype=D64, fkc=FKCConfig(), **kw)
    with torch_paths():
        got = sample(
            target.denoiser(path), build_guider("cfg", scale=3.0), dtype=D64, device=DEV, fkc=FKCConfig(), **kw
        )
    assert got.resamplings == ref.resamplings and ref.resamplings > 0
    close(got.ess, ref.ess, 1e-9, "ess")
    close(got.x, ref.x, 1e-9, "samples")


def test_noise_on_the_device_keeps_its_promises():
    """The device's generator (not the CPU's): reproducible, per sample (a sample's noise does not depend on the batch
    size, the order or the dtype), equal ids equal noise, standard normal."""
    like = torch.empty(300, 3, device=DEV)
    a, b = NoiseSource(7, DEV)(like), NoiseSource(7, DEV)(like)
    assert a.device.type == DEV.type and torch.equal(a, b)
    assert torch.equal(NoiseSource(7, DEV)(like[:100]), a[:100])
    ids = torch.tensor([250, 3, 3, 0])
    assert torch.equal(NoiseSource(7, DEV, ids)(like[:4]), a[ids.to(DEV)])
    assert torch.equal(NoiseSource(7, DEV)(like.double()), a.double())
    two = NoiseSource(7, DEV)
    first, second = two(like), two(like)
    assert torch.equal(first, a) and not torch.equal(second, a)
    big = on_cpu(NoiseSource(1, DEV)(torch.empty(200_000, 2, device=DEV)))
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01
    if not ON_CPU:
        print(f"noise: the {DEV.type} generator's draws for seed 7 are not the CPU's (drawn where the state lives)")


def test_sampling_on_the_device_keeps_the_noise_promises(targets):
    """With the device's own noise, float64: the same seed twice gives bit-identical samples; a sample's trajectory
    does not depend on n (stochastic solvers included: to 1e-10, the kernels may change with the batch size);
    noise_ids pair samples."""
    target, path = targets["multimodal-2d"], get_path("rf")
    grid = make_grid("uniform", 6, path)
    den = target.denoiser(path)
    for solver in ("euler", "euler-ancestral", "dpm++2s-ancestral", "ddim"):
        kw = {
            "grid": grid,
            "shape": (2,),
            "cond": 0,
            "solver": solver,
            "device": DEV,
            "dtype": D64,
            "eta": 1.0 if solver == "ddim" else None,
        }
        with torch_paths():
            a = sample(den, build_guider("apg", scale=3.0), n=32, seed=5, **kw)
            b = sample(den, build_guider("apg", scale=3.0), n=32, seed=5, **kw)
            c = sample(den, build_guider("apg", scale=3.0), n=8, seed=5, **kw)
            d = sample(den, build_guider("apg", scale=3.0), n=32, seed=6, **kw)
            ids = torch.tensor([4, 4, 9, 9])
            e = sample(den, build_guider("apg", scale=3.0), n=4, seed=5, noise_ids=ids, **kw)
        assert a.x.device.type == DEV.type
        assert torch.equal(a.x, b.x), solver
        close(c.x, a.x[:8], 1e-10, f"{solver}: n = 8 against the first 8 of n = 32")
        assert not torch.allclose(a.x, d.x), solver
        close(e.x[:2], a.x[[4, 4]], 1e-10, f"{solver}: noise_ids")
        close(e.x[2:], a.x[[9, 9]], 1e-10, f"{solver}: noise_ids")


# --- metrics ----------------------------------------------------------------------------------------------------

METRIC_TARGETS = ["multimodal-2d", "chidambaram-uniform-1d", "chidambaram-uniform-2d", "gmm-highdim"]


@pytest.mark.parametrize("name", METRIC_TARGETS)
def test_metrics_on_device_tensors_match_the_cpu(targets, name):
    """Every sweep measure (energy distance and class fidelity, the defaults, and the others), given samples and the
    reference on the device, gives the CPU's values to 1e-9 relative; so do the pairwise sums, grid divergences and the
    tilted target's density."""
    from guidelab import metrics as m
    from guidelab.experiments.measures import MEASURES, MeasureInput, measure, reference_samples

    target = targets[name]
    g = torch.Generator().manual_seed(4)
    x = 0.9 * target.sample(400, 0, generator=g).double() + 0.05 * torch.randn(400, target.dim, generator=g, dtype=D64)
    ref = reference_samples(target, 0, 300)
    names = [k for k in MEASURES if k != "w2" or importlib.util.find_spec("ot") is not None]  # w2 needs POT
    want = measure(names, MeasureInput(x, target, 0, ref, 0.1))
    with torch_paths():
        got = measure(names, MeasureInput(x.to(DEV), target, 0, ref.to(DEV), 0.1))
    assert set(got) == set(want)
    for key, value in want.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (
            f"{key}: {got[key]} on the device, {value} on the CPU"
        )
    extra_want = {
        "energy_compiled": m.energy_distance(x, ref, compiled=True),
        "w2_sliced": m.w2_sliced(x, ref, num_projections=16),
        "in_support": m.in_support_fraction(x, target, 0) if hasattr(target, "support_contains") else 0.0,
    }
    with torch_paths():
        xd, rd = x.to(DEV), ref.to(DEV)
        extra_got = {
            "energy_compiled": m.energy_distance(xd, rd, compiled=True),
            "w2_sliced": m.w2_sliced(xd, rd, num_projections=16),
            "in_support": m.in_support_fraction(xd, target, 0) if hasattr(target, "support_contains") else 0.0,
        }
    for key, value in extra_want.items():
        assert extra_got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    if target.dim <= 2:
        lo = [float(v) - 1.0 for v in ref.min(0).values]
        hi = [float(v) + 1.0 for v in ref.max(0).values]
        grid = m.CellGrid(tuple(lo), tuple(hi), (12,) * target.dim)
        density = m.target_log_density(target, 0, t=1e-3, path=get_path("rf"))
        want_div = m.grid_divergences(x, density, grid, floor_draws=2)
        tilted = m.TiltedTarget(target, 0, 2.0, t=1e-3, path=get_path("rf"))
        want_tilt = tilted.log_unnormalized(x)
        with torch_paths():
            got_div = m.grid_divergences(x.to(DEV), density, grid, floor_draws=2)
            got_tilt = tilted.log_unnormalized(x.to(DEV))
        for key, value in want_div.to_dict().items():
            assert getattr(got_div, key) == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
        close(got_tilt, want_tilt, 1e-10, "tilted log density")


# --- a trained model ----------------------------------------------------------------------------------------------


def test_the_shipped_digits_model_matches_the_cpu(cpu_noise):
    """The shipped digits UNet (and digits-mlp as autoguidance's weak model) moved to the device: CFG, APG and
    autoguidance with Heun and Euler ancestral in float32 give the CPU's images to 1e-3 of the largest |pixel|."""
    from guidelab.models.zoo import load_model_file

    main_cpu, weak_cpu = load_model_file("digits").eval(), load_model_file("digits-mlp").eval()
    main_dev, weak_dev = copy.deepcopy(main_cpu).to(DEV), copy.deepcopy(weak_cpu).to(DEV)
    grid = make_grid("uniform", 5, main_cpu.path)
    cases = [("cfg", {"scale": 3.0}), ("apg", {}), ("weak-model", {"guide_model": "weak", "guide_cond": "cond"})]
    for name, params in cases:
        for solver in ("heun", "euler-ancestral"):
            kw = {"grid": grid, "n": 6, "shape": main_cpu.shape, "cond": torch.arange(6) % 10, "solver": solver}
            ref = sample(main_cpu, build_guider(name, **params, **_weak(name, weak_cpu)), **kw)
            with exact_float32(), torch_paths():
                got = sample(main_dev, build_guider(name, **params, **_weak(name, weak_dev)), device=DEV, **kw)
            assert got.x.device.type == DEV.type and torch.isfinite(got.x).all()
            assert rel_max(got.x, ref.x) <= 1e-3, f"{name} {solver}: {rel_max(got.x, ref.x):.3g}"


def _weak(name, model):
    return {"models": {"weak": model}} if name == "weak-model" else {}


# --- diffusers --------------------------------------------------------------------------------------------------

PROMPTS = ["a cat", "a dog on a hill"]


def _families():
    from tiny_diffusers import FLUX_HW, make_dit, make_flux, make_sd, make_sd3, make_sdxl

    text = {"prompt": PROMPTS, "negative_prompt": ""}
    return {
        "sd-ddim": (lambda: make_sd(scheduler="ddim"), text),
        "sd-dpm-v": (lambda: make_sd(scheduler="dpm", prediction_type="v_prediction"), text),
        "sd-euler": (lambda: make_sd(scheduler="euler"), text),
        "sdxl": (make_sdxl, text),
        "sd3": (make_sd3, text),
        "flux": (make_flux, {**text, "height": FLUX_HW, "width": FLUX_HW}),
        "dit": (make_dit, {"class_labels": [1, 2]}),
    }


FAMILIES = ["sd-ddim", "sd-dpm-v", "sd-euler", "sdxl", "sd3", "flux", "dit"]


@pytest.fixture(scope="module")
def pipelines():
    """Each tiny pipeline on the CPU in float32 (built once; tests copy it to the device)."""
    pytest.importorskip("diffusers")
    from diffusers.utils import logging

    logging.set_verbosity_error()
    out = {}
    for name, (make, kwargs) in _families().items():
        pipe = make()
        pipe.set_progress_bar_config(disable=True)
        out[name] = (pipe, kwargs)
    return out


def _to_device(pipe, dtype=torch.float32):
    dev = copy.deepcopy(pipe).to(DEV, dtype)
    dev.set_progress_bar_config(disable=True)
    return dev


def _cpu_latents(pipe, kwargs, seed=1):
    from guidelab.pipelines import latent_shape

    shape = latent_shape(pipe, kwargs.get("height"), kwargs.get("width"))
    return torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_the_cpu(cpu_noise, pipelines, family):
    """``generate`` on the device in float32 (TF32 off) from the same CPU latents: APG with the scheduler's solver and
    CFG with Euler ancestral (its noise drawn on the CPU) give the CPU's latents and decoded images to 1e-3 of the
    largest |value|, with the same NFE."""
    from guidelab.pipelines import generate

    pipe, kwargs = pipelines[family]
    dev = _to_device(pipe)
    lat = _cpu_latents(pipe, kwargs)
    for guider, params, solver in (("apg", {"scale": 4.0}, None), ("cfg", {"scale": 4.0}, "euler-ancestral")):
        run = {"guider": guider, "params": params, "solver": solver, "steps": 4, "latents": lat, "output_type": "pt"}
        ref = generate(pipe, **kwargs, **run)
        with exact_float32(), torch_paths():
            got = generate(dev, **kwargs, **run)
        assert got.latents.device.type == DEV.type and got.config["device"].startswith(DEV.type)
        assert (got.nfe, got.calls, got.diverged) == (ref.nfe, ref.calls, ref.diverged)
        assert rel_max(got.latents, ref.latents) <= 1e-3, f"{guider}: latents {rel_max(got.latents, ref.latents):.3g}"
        assert rel_max(got.images, ref.images) <= 1e-3, f"{guider}: images {rel_max(got.images, ref.images):.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_in_float16_and_the_same_seed_twice(pipelines, family):
    """With the device's own noise (no latents): the same seed twice gives bit-identical latents, another seed other
    latents; the pipeline in float16 runs, gives finite images (0 ≤ pixel ≤ 1) within 0.1 of float32's largest
    |latent| from the same latents."""
    from guidelab.pipelines import generate

    pipe, kwargs = pipelines[family]
    dev = _to_device(pipe)
    run = {"guider": "apg", "params": {"scale": 4.0}, "steps": 4, "output_type": "latent"}
    with torch_paths():
        a = generate(dev, **kwargs, seed=3, **run)
        b = generate(dev, **kwargs, seed=3, **run)
        c = generate(dev, **kwargs, seed=4, **run)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    dev16 = _to_device(pipe, torch.float16)
    lat = _cpu_latents(pipe, kwargs)
    with torch_paths():
        half = generate(dev16, **kwargs, latents=lat, **{**run, "output_type": "np"})
        full = generate(dev, **kwargs, latents=lat, **{**run, "output_type": "np"})
    assert half.config["dtype"] == "float16"
    images = torch.as_tensor(half.images)
    assert bool(torch.isfinite(images).all()) and float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.isfinite(half.latents).all()
    assert rel_max(half.latents, full.latents) <= 0.1, f"float16 {rel_max(half.latents, full.latents):.3g}"


@pytest.mark.parametrize("family", ["sd-ddim", "sdxl", "sd3"])
def test_the_pipelines_own_call_with_a_guidelab_guider_matches_the_cpu(pipelines, family):
    """``with guided(pipe, ...)`` on the device: rescale in ε (on SD3 its first step sits at α = 0, the regular
    branch of the ε rule) and APG inside the pipeline's own call give the CPU's latents to 1e-3; in float16 it runs
    and stays finite."""
    from guidelab.pipeline_guidance import guided

    pipe, kwargs = pipelines[family]
    dev = _to_device(pipe)
    lat = _cpu_latents(pipe, kwargs)
    call = {"num_inference_steps": 4, "guidance_scale": 2.0, "output_type": "latent", "negative_prompt": ["", ""]}
    for name, params in (("rescale", {"scale": 4.0, "space": "eps"}), ("apg", {"scale": 4.0})):
        with guided(pipe, name, **params):
            ref = pipe(PROMPTS, latents=lat, **call).images
        with exact_float32(), torch_paths(), guided(dev, name, **params):
            got = dev(PROMPTS, latents=lat.to(DEV), **call).images
        assert got.device.type == DEV.type
        assert rel_max(got, ref) <= 1e-3, f"{name}: {rel_max(got, ref):.3g}"
    dev16 = _to_device(pipe, torch.float16)
    with torch_paths(), guided(dev16, "apg", scale=4.0):
        half = dev16(PROMPTS, latents=lat.to(DEV, torch.float16), **call).images
    assert torch.isfinite(half).all()


def test_a_modular_pipeline_with_a_guidelab_guider_matches_the_cpu(pipelines):
    """GuidelabGuidance as the guider of SD3's modular pipeline, on the device: APG and interval CFG give the CPU's
    latents to 1e-3."""
    pytest.importorskip("diffusers.modular_pipelines")
    from diffusers.modular_pipelines import StableDiffusion3AutoBlocks

    from guidelab.modular import GuidelabGuidance

    pipe, kwargs = pipelines["sd3"]
    lat = _cpu_latents(pipe, kwargs)

    def modular(p):
        mp = StableDiffusion3AutoBlocks().init_pipeline()
        mp.update_components(**{k: v for k, v in p.components.items() if v is not None})
        mp.set_progress_bar_config(disable=True)
        return mp

    cpu, dev = modular(pipe), modular(_to_device(pipe))
    for name, params in (("apg", {"scale": 5.0}), ("cfg", {"schedule": "interval", "scale": 4.0})):
        call = {"prompt": PROMPTS, "negative_prompt": "", "num_inference_steps": 4, "output": "latents"}
        cpu.update_components(guider=GuidelabGuidance.from_pipeline(cpu, name, **params))
        ref = cpu(latents=lat, **call)
        dev.update_components(guider=GuidelabGuidance.from_pipeline(dev, name, **params))
        with exact_float32(), torch_paths():
            got = dev(latents=lat.to(DEV), **call)
        assert got.device.type == DEV.type
        assert rel_max(got, ref) <= 1e-3, f"{name}: {rel_max(got, ref):.3g}"


# --- the command line -------------------------------------------------------------------------------------------


def _cli(*args) -> int:
    from guidelab.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as err:
        return int(err.code or 0)
    return 0


@pytest.fixture(scope="module")
def saved_sd(pipelines, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "sd"
    pipelines["sd-ddim"][0].save_pretrained(folder)
    return folder


def test_cli_generate_on_the_device(saved_sd, tmp_path):
    """``guidelab generate --device D`` (and ``--dtype float16`` off the CPU) exits 0 and writes its images and a
    sidecar that names the device."""
    import json

    dtypes = ["float32"] if ON_CPU else ["float32", "float16"]
    for dtype in dtypes:
        out = tmp_path / dtype
        code = _cli("generate", "--pipeline", saved_sd, "--prompt", "a cat", "--guider", "apg", "--steps", 3, "--n", 2,
                    "--device", DEV, "--dtype", dtype, "--out", out)  # fmt: skip
        assert code == 0
        meta = json.loads((out / "generate.json").read_text())
        assert meta["config"]["device"].startswith(DEV.type) and meta["config"]["dtype"] == dtype
        assert (out / "image_000.png").is_file() and (out / "image_001.png").is_file()


def test_cli_pipeline_sweep_on_the_device(saved_sd, tmp_path):
    """``guidelab run`` on a pipeline sweep with ``pipeline.device`` (float16 off the CPU) exits 0 and stores one ok
    row per run, each run on the device."""
    from guidelab.experiments.store import ResultStore

    dtype = "float32" if ON_CPU else "float16"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"""
name: device-sweep
pipeline:
  folder: {saved_sd}
  prompts: ["a cat"]
  negative_prompt: blurry
  n: 2
  steps: 3
  device: "{DEV}"
  dtype: {dtype}
guiders:
  - {{name: cfg, params: {{scale: [1, 3]}}}}
  - {{name: apg}}
seeds: [0]
"""
    )
    assert _cli("run", sweep, "--out", tmp_path / "out") == 0
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for r in rows:
        assert r["config"]["device"].startswith(DEV.type), r["config"]
        assert r["metrics"]["latent_rms"] > 0 and math.isfinite(r["metrics"]["pixel_diversity"])
