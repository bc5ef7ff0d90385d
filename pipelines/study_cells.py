"""What a study cell trains: its method, mask set and overrides, from ``params.yaml``.

A study names its cells by mask set (``studies.<study>.masks``) or, for a table of methods,
by row (``studies.<study>.rows: {row: {method, mask}}``). A cell's overrides are the shared
protocol (``studies.common``), its method's own keys and schedule
(``studies.method_overrides.<method>``), the study's and the cell's own
(``studies.<study>.cells.<name>``); ``detlab.pipelines.study`` runs them.
"""

from __future__ import annotations

from detlab.platform.compose import group_options


def cell_name(study: str, mask: str, seed: int, resolution: int | None) -> str:
    return f"{mask}-r{resolution}-s{seed}" if study == "resolution" else f"{mask}-s{seed}"


def study_method(st: dict, study: str | None = None) -> str:
    """The object-level method a study trains: its own ``method``, else ``studies.method``."""
    return (st.get(study) or {}).get("method") or st.get("method", "detcon_b")


def cell_method(method: str, mask: str) -> str:
    """The method a cell trains: the study's, or for the global-mask cell (the image-level
    baseline) an object-level method's image-level counterpart (DetCon-B: BYOL; DetCon-S:
    SimCLR); an image-level method is its own."""
    from detlab.methods.registry import IMAGE_BASELINE, METHODS

    if method not in METHODS:
        raise ValueError(f"studies.method={method!r} is not a method; one of {sorted(METHODS)}")
    return IMAGE_BASELINE.get(method, method) if mask == "global" else method


def method_overrides(st: dict, method: str) -> list[str]:
    """A method's own keys and its schedule at the study's scale (``studies.method_overrides.
    <method>``), given to every cell that trains it; a plain list belongs to studies.method."""
    own = st.get("method_overrides") or {}
    if isinstance(own, list):
        return own if method == study_method(st) else []
    return list(own.get(method) or [])


def cell_row(params: dict, study: str, name: str) -> tuple[str, str]:
    """A cell's (method, mask set): a study of ``rows`` names both per row (``methods``:
    {row: {method, mask}}), the others train their method on the cell's mask set."""
    st = params["studies"]
    rows = st[study].get("rows")
    if rows is None:
        return cell_method(study_method(st, study), name), name
    if name not in rows:
        raise ValueError(f"studies.{study}.rows has no row {name!r}; rows: {sorted(rows)}")
    return rows[name]["method"], rows[name].get("mask", "global")


def mask_kind_of(params: dict, mask: str) -> str:
    """The masks/ config a mask set composes with: its own YAML when one exists, else that
    of its generator's kind (boxes: ss, per-pixel ids: gt), given the set's name and path."""
    from detlab.pipelines.masks.generators import KIND, split_params

    if mask in group_options("masks"):
        return mask
    generator, _ = split_params(mask, (params.get("masks", {}).get("methods") or {}).get(mask))
    return "ss" if KIND.get(generator) == "boxes" else "gt"


def cell_overrides(params: dict, study: str, mask: str, seed: int, resolution: int) -> list[str]:
    st = params["studies"]
    spec = st[study]
    method, masks = cell_row(params, study, mask)
    mask_path = [] if masks == "global" else [f"masks.path={params['masks']['out']}/{masks}"]
    kind = mask_kind_of(params, masks)
    named = [] if kind == masks else [f"masks.name={masks}"]
    return [
        *st["common"],
        *method_overrides(st, method),
        *spec.get("overrides", []),
        f"method={method}",
        f"masks={kind}",
        *named,
        *mask_path,
        f"data.root={params['prepare']['out']}",
        f"train.seed={seed}",
        f"aug.resolution={resolution}",
        *(spec.get("cells", {}) or {}).get(mask, []),
    ]
