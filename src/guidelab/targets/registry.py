"""Named analytic targets, and user targets from YAML or JSON files.

Built-ins (``list_targets()`` describes each): the Chidambaram et al. (arXiv 2409.13074) settings in 1D and
2D, a two-class 2D mixture whose guided class has a weak mode near the other class, and a 64-dimensional
16-class mixture. A file holds one :class:`TargetSpec`::

    kind: gaussian-mixture        # or box-mixture
    name: my-target
    dim: 2
    classes:
      - name: a
        prior: 0.5
        components:
          - {weight: 0.7, mean: [1, 2], cov: [[1, 0.2], [0.2, 1]]}   # or std: 0.5, or var: [0.3, 0.2]
      - name: b
        components:
          - {mean: [-1, 0], std: 0.3}

Box components are ``{weight, low: [...], high: [...]}``. Priors default to uniform, weights to 1; both
are normalized. Every error is a ValueError of one line naming the field, e.g.
``target file t.yaml: classes[1].components[0].cov: not positive definite (smallest eigenvalue -0.2)``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from guidelab.progress import counted
from guidelab.targets.base import Target
from guidelab.targets.box_mixture import BoxMixture
from guidelab.targets.gaussian_mixture import GaussianMixture
from guidelab.validation import did_you_mean, error_lines, yaml_problem

__all__ = ["BUILTIN_TARGETS", "TargetSpec", "get_target", "list_targets", "load_target_file"]


# --- the file schema --------------------------------------------------------------------------------------


class ComponentSpec(BaseModel):
    """One component: a Gaussian (``mean`` and one of ``cov``, ``std``, ``var``) or a box (``low``, ``high``)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0, allow_inf_nan=False, description="weight within the class")
    mean: list[float] | None = Field(None, description="Gaussian mean (dim values)")
    cov: list[list[float]] | None = Field(None, description="full covariance (dim × dim, positive definite)")
    std: float | None = Field(None, gt=0, allow_inf_nan=False, description="isotropic standard deviation")
    var: list[float] | None = Field(None, description="diagonal variances (dim values, > 0)")
    low: list[float] | None = Field(None, description="box lower corner (dim values)")
    high: list[float] | None = Field(None, description="box upper corner (dim values, > low)")


class ClassSpec(BaseModel):
    """One class: a name, an optional prior and its components."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    prior: float | None = Field(None, ge=0, allow_inf_nan=False, description="class prior (default uniform)")
    components: list[ComponentSpec] = Field(min_length=1)


def _finite(values: list[float], field: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{field}: contains non-finite values")


def _length(values: list[float], dim: int, field: str) -> None:
    if len(values) != dim:
        raise ValueError(f"{field}: expected {dim} values, got {len(values)}")
    _finite(values, field)


class TargetSpec(BaseModel):
    """A user target: a Gaussian or box mixture given class by class (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["gaussian-mixture", "box-mixture"]
    name: str = Field("custom", min_length=1)
    description: str = ""
    dim: int | None = Field(None, ge=1, description="dimension (default: from the first component)")
    classes: list[ClassSpec] = Field(min_length=1)
    allow_singular: bool | None = Field(
        None, description="gaussian-mixture: accept rank-deficient (positive semi-definite) covariances, data on planes"
    )

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        first = self.classes[0].components[0]
        if self.allow_singular is not None and self.kind != "gaussian-mixture":
            raise ValueError("allow_singular: only for kind gaussian-mixture")
        if self.dim is None:
            field = "mean" if self.kind == "gaussian-mixture" else "low"
            ref = getattr(first, field)
            if ref is None:
                raise ValueError(f"classes[0].components[0].{field}: missing")
            self.dim = len(ref)
        names = [c.name for c in self.classes]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"classes[{i}].name: duplicate class name {name!r}")
        given = [c.prior is not None for c in self.classes]
        if any(given) and not all(given):
            i = given.index(False)
            raise ValueError(f"classes[{i}].prior: give a prior for every class or for none")
        if all(given) and not sum(c.prior for c in self.classes) > 0:  # type: ignore[misc]
            raise ValueError("classes[*].prior: the priors sum to 0")
        for i, cls in enumerate(self.classes):
            if not sum(comp.weight for comp in cls.components) > 0:
                raise ValueError(f"classes[{i}].components: the weights sum to 0")
            for j, comp in enumerate(cls.components):
                where = f"classes[{i}].components[{j}]"
                if self.kind == "gaussian-mixture":
                    self._check_gaussian(comp, where)
                else:
                    self._check_box(comp, where)
        return self

    def _check_gaussian(self, comp: ComponentSpec, where: str) -> None:
        dim = self.dim or 0
        for field in ("low", "high"):
            if getattr(comp, field) is not None:
                raise ValueError(
                    f"{where}.{field}: not a field of a gaussian-mixture component (use mean and cov/std/var)"
                )
        if comp.mean is None:
            raise ValueError(f"{where}.mean: missing")
        _length(comp.mean, dim, f"{where}.mean")
        shapes = [f for f in ("cov", "std", "var") if getattr(comp, f) is not None]
        if len(shapes) != 1:
            got = ", ".join(shapes) if shapes else "none"
            raise ValueError(f"{where}: give exactly one of cov, std, var (got {got})")
        if comp.var is not None:
            _length(comp.var, dim, f"{where}.var")
            if min(comp.var) <= 0:
                raise ValueError(f"{where}.var: variances must be > 0, got {min(comp.var)}")
        if comp.cov is not None:
            cov = comp.cov
            if len(cov) != dim or any(len(row) != dim for row in cov):
                shape = f"{len(cov)} rows of lengths {sorted({len(r) for r in cov})}"
                raise ValueError(f"{where}.cov: expected a {dim} × {dim} matrix, got {shape}")
            arr = np.asarray(cov, dtype=np.float64)
            _finite(arr.ravel().tolist(), f"{where}.cov")
            if not np.allclose(arr, arr.T, rtol=1e-9, atol=1e-12 * np.abs(arr).max()):
                raise ValueError(f"{where}.cov: not symmetric")
            eig = np.linalg.eigvalsh(0.5 * (arr + arr.T))
            if self.allow_singular:
                if eig[0] < -1e-9 * max(eig[-1], 0.0):
                    raise ValueError(f"{where}.cov: not positive semi-definite (smallest eigenvalue {eig[0]:.3g})")
            elif not eig[0] > 1e-12 * max(eig[-1], 0.0):
                raise ValueError(f"{where}.cov: not positive definite (smallest eigenvalue {eig[0]:.3g})")

    def _check_box(self, comp: ComponentSpec, where: str) -> None:
        dim = self.dim or 0
        for field in ("mean", "cov", "std", "var"):
            if getattr(comp, field) is not None:
                raise ValueError(f"{where}.{field}: not a field of a box-mixture component (use low and high)")
        for field in ("low", "high"):
            if getattr(comp, field) is None:
                raise ValueError(f"{where}.{field}: missing")
            _length(getattr(comp, field), dim, f"{where}.{field}")
        for d, (lo, hi) in enumerate(zip(comp.low, comp.high, strict=True)):  # type: ignore[arg-type]
            if not hi > lo:
                raise ValueError(f"{where}.high: must exceed low in every dimension (dim {d}: low {lo}, high {hi})")

    def build(self) -> Target:
        """The target this spec describes; its ``config()`` is this spec."""
        comps = [(c, comp) for c, cls in enumerate(self.classes) for comp in cls.components]
        weights = [comp.weight for _, comp in comps]
        component_class = [c for c, _ in comps]
        class_names = [cls.name for cls in self.classes]
        prior = [cls.prior for cls in self.classes] if self.classes[0].prior is not None else None
        dim = self.dim or 0
        target: GaussianMixture | BoxMixture
        if self.kind == "gaussian-mixture":
            covs = []
            for _, comp in comps:
                if comp.cov is not None:
                    covs.append(np.asarray(comp.cov, dtype=np.float64))
                elif comp.var is not None:
                    covs.append(np.diag(np.asarray(comp.var, dtype=np.float64)))
                else:
                    covs.append(comp.std**2 * np.eye(dim))  # type: ignore[operator]
            target = GaussianMixture(
                np.asarray([comp.mean for _, comp in comps], dtype=np.float64),
                np.stack(covs),
                weights,
                component_class,
                class_names,
                prior,
                name=self.name,
                description=self.description,
                allow_singular=bool(self.allow_singular),
            )
        else:
            target = BoxMixture(
                np.asarray([comp.low for _, comp in comps], dtype=np.float64),
                np.asarray([comp.high for _, comp in comps], dtype=np.float64),
                weights,
                component_class,
                class_names,
                prior,
                name=self.name,
                description=self.description,
            )
        target._config = self.model_dump(exclude_none=True)
        return target


def spec_from_dict(data: Any, source: str = "target spec") -> TargetSpec:
    """Validate a plain dict as a :class:`TargetSpec`; errors become one-line ValueErrors naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with kind, dim, classes; got {type(data).__name__}")
    try:
        return TargetSpec.model_validate(data)
    except ValidationError as err:
        lines = sorted(error_lines(err), key=lambda line: ": unknown key" not in line)  # a misspelt key first
        more = f" (and {counted(len(lines) - 1, 'more error')})" if len(lines) > 1 else ""
        raise ValueError(f"{source}: {lines[0]}{more}") from None


def load_target_file(path: str | Path) -> Target:
    """Build a target from a YAML (``.yaml``/``.yml``) or JSON file holding one :class:`TargetSpec`."""
    path = Path(path)
    source = f"target file {path}"
    if path.is_dir():
        raise ValueError(f"{source}: is a folder, not a target file (YAML or JSON)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{source}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not a text file (not UTF-8); a target file is YAML or JSON") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise ValueError(f"{source}: not valid {kind} ({yaml_problem(err)})") from None
    return spec_from_dict(data, source).build()


# --- built-in targets -------------------------------------------------------------------------------------


def _rotated_cov(std_major: float, std_minor: float, angle_deg: float) -> np.ndarray:
    """A 2 × 2 covariance with the given standard deviations along axes rotated by ``angle_deg``."""
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return R @ np.diag([std_major**2, std_minor**2]) @ R.T


def chidambaram_uniform_1d(low: float = 1.0, high: float = 2.0) -> BoxMixture:
    """Chidambaram et al. §3 (a): "pos" uniform on [low, high], "neg" on [−high, −low], priors ½."""
    return BoxMixture([[low], [-high]], [[high], [-low]], None, [0, 1], ["pos", "neg"], name="chidambaram-uniform-1d")


def chidambaram_uniform_2d(low: float = 1.0, high: float = 2.0) -> BoxMixture:
    """Chidambaram et al.'s 2D mixture of uniforms: "pos" on [low, high]², "neg" on [−high, −low]²."""
    return BoxMixture(
        [[low, low], [-high, -high]], [[high, high], [-low, -low]], None, [0, 1], ["pos", "neg"],
        name="chidambaram-uniform-2d",
    )  # fmt: skip


def chidambaram_gauss_1d(mean: float = 1.0, std: float = 1.0) -> GaussianMixture:
    """Chidambaram et al. §3 (b): ½N(mean, std²) ("pos") + ½N(−mean, std²) ("neg")."""
    return GaussianMixture(
        [[mean], [-mean]], np.full((2, 1, 1), std**2), None, [0, 1], ["pos", "neg"], name="chidambaram-gauss-1d"
    )


def multimodal_2d(weak_weight: float = 0.25) -> GaussianMixture:
    """Class "a": a strong mode and a weak mode (weight ``weak_weight``) lying nearer to class "b" than the
    strong one; class "b": one mode; priors ½; full non-isotropic covariances, modes 2.5–3.2 apart."""
    means = [[-1.5, 0.0], [1.0, 1.5], [1.5, -1.0]]  # a strong, a weak, b
    covs = [_rotated_cov(0.5, 0.3, 30), _rotated_cov(0.4, 0.3, -45), _rotated_cov(0.5, 0.35, 60)]
    return GaussianMixture(
        means, np.stack(covs), [1 - weak_weight, weak_weight, 1.0], [0, 0, 1], ["a", "b"], name="multimodal-2d"
    )


def gmm_highdim(dim: int = 64, num_classes: int = 16, components_per_class: int = 2, seed: int = 0) -> GaussianMixture:
    """``num_classes`` classes × ``components_per_class`` Gaussians in ``dim`` dimensions (numpy
    default_rng(seed)). Class centres ~ N(0, 0.2²I), component offsets ~ N(0, 0.12²I); covariances
    ``½Σ_shared + ½Σ_k`` with each Σ = Q diag(λ) Qᵀ, Q Haar-random, λ ~ U[0.1, 1] (so every eigenvalue lies in
    [0.1, 1]); weights ~ U[0.3, 0.7]; priors uniform. Independent random covariances alone would separate the
    classes almost perfectly in 64 dimensions; the shared half keeps them overlapping: at t = 0 the largest
    class posterior averages about 0.83 over samples of p(x)."""
    rng = np.random.default_rng(seed)
    K = num_classes * components_per_class
    centres = rng.normal(scale=0.2, size=(num_classes, dim))
    component_class = np.repeat(np.arange(num_classes), components_per_class)
    means = centres[component_class] + rng.normal(scale=0.12, size=(K, dim))
    q, r = np.linalg.qr(rng.normal(size=(K + 1, dim, dim)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar-distributed rotations
    eig = rng.uniform(0.1, 1.0, size=(K + 1, dim))
    covs = np.einsum("kij,kj,klj->kil", q, eig, q)  # (K + 1, D, D); the last one is shared
    covs = 0.5 * covs[-1] + 0.5 * covs[:-1]
    weights = rng.uniform(0.3, 0.7, size=K)
    names = [f"c{c}" for c in range(num_classes)]
    return GaussianMixture(means, covs, weights, component_class, names, name="gmm-highdim")


BUILTIN_TARGETS: dict[str, tuple[Callable[..., Target], str]] = {
    "chidambaram-uniform-1d": (
        chidambaram_uniform_1d,
        "1D uniforms: pos on [1, 2], neg on [-2, -1], priors 1/2 (Chidambaram et al. 2409.13074, compact support)",
    ),
    "chidambaram-uniform-2d": (
        chidambaram_uniform_2d,
        "2D uniforms: pos on [1, 2]^2, neg on [-2, -1]^2, linearly separable (Chidambaram et al. 2409.13074)",
    ),
    "chidambaram-gauss-1d": (
        chidambaram_gauss_1d,
        "1D Gaussians: 1/2 N(1, 1) (pos) + 1/2 N(-1, 1) (neg) (Chidambaram et al. 2409.13074, Th. 2)",
    ),
    "multimodal-2d": (
        multimodal_2d,
        "2D, class a = strong mode (0.75) + weak mode (0.25) near class b; full covariances: weak-mode suppression",
    ),
    "gmm-highdim": (
        gmm_highdim,
        "64-D Gaussian mixture, 16 overlapping classes x 2 components, random SPD covariances (eigenvalues 0.1-1)",
    ),
}


def list_targets() -> dict[str, str]:
    """Built-in target names and their one-line descriptions."""
    return {name: description for name, (_, description) in BUILTIN_TARGETS.items()}


def get_target(name_or_path: str | Path | dict | Target, **params: Any) -> Target:
    """A target by built-in name (with its builder's keyword ``params``), from a YAML/JSON file, from a
    spec or config dict (as returned by ``Target.config()``), or passed through if already a Target."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if isinstance(name_or_path, dict):
        data = {**name_or_path, **params}
        if "kind" in data:
            return spec_from_dict(data).build()
        if "name" not in data:
            raise ValueError("target: a config dict needs 'name' (a built-in) or 'kind' (a spec)")
        return get_target(data.pop("name"), **data)
    if "kind" in params:  # a config dict split as get_target(spec.pop("name"), **spec)
        return spec_from_dict({"name": str(name_or_path), **params}).build()
    name = str(name_or_path)
    if name in BUILTIN_TARGETS:
        builder, description = BUILTIN_TARGETS[name]
        signature = inspect.signature(builder).parameters
        accepted = [p for p, v in signature.items() if v.kind is not inspect.Parameter.VAR_KEYWORD]
        for key in params:
            if key not in accepted and len(accepted) == len(signature):  # (a **kwargs builder takes any)
                raise ValueError(f"target {name!r}: unknown parameter {key!r}{did_you_mean(key, accepted)}")
        try:
            target = builder(**params)
        except TypeError as err:
            raise ValueError(f"target {name!r}: bad parameters {params}: {err}") from None
        target.description = description
        target._config = {"name": name, **params}  # type: ignore[attr-defined]
        return target
    path = Path(name).expanduser()
    if path.is_file():
        if params:
            raise ValueError(f"target file {path}: takes no parameters, got {sorted(params)}")
        return load_target_file(path)
    if path.is_dir():
        raise ValueError(f"target: {name!r} is a folder; give a target file (YAML or JSON) or a built-in name")
    raise ValueError(f"target: no built-in target or file named {name!r}{did_you_mean(name, BUILTIN_TARGETS)}")
