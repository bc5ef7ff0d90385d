"""bench_study_signal.py picks what it trains from params.yaml: `--method` alone trains the
method's row of the table where it learns (its masks, budget and cell settings)."""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "bench_study_signal", ROOT / "tests/benchmarks/bench_study_signal.py"
)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def pick(*argv: str) -> tuple[str, list[str], dict]:
    p = bench.build_parser()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    study, cells = bench.pick_cells(p, p.parse_args(argv), params)
    return study, cells, params["studies"]


def test_a_method_alone_trains_its_row_of_the_shapes_table_at_the_rows_budget():
    study, cells, st = pick("--method", "detcon_b")
    assert (study, cells) == ("methods", ["detcon_b"])
    assert st["methods"]["rows"] == {"detcon_b": {"method": "detcon_b", "mask": "gt"}}
    assert "train.steps=1200" in st["methods"]["cells"]["detcon_b"]


def test_soco_alone_trains_its_fashion_mnist_row_and_masks_name_a_rows_set():
    study, cells, st = pick("--method", "soco", "--masks", "ss")
    assert (study, cells) == ("methods_fmnist", ["soco"])
    assert st["methods_fmnist"]["rows"]["soco"] == {"method": "soco", "mask": "ss"}
    assert "method.ema_base=0.9" in st["methods_fmnist"]["cells"]["soco"]
    _, _, st = pick("--method", "detcon_b", "--masks", "fh")
    assert st["methods"]["rows"]["detcon_b"]["mask"] == "fh"


def test_without_a_method_the_mask_quality_study_trains_gt_and_its_twin():
    study, cells, st = pick()
    assert (study, cells) == ("mask_quality", ["gt", "global"])
    study, cells, st = pick("--study", "mask_quality", "--method", "vicreg", "--set", "x=1")
    assert (study, cells, st["method"]) == ("mask_quality", ["global"], "vicreg")
    assert st["common"][-1] == "x=1"


@pytest.mark.parametrize(
    "argv",
    [
        ("--method", "soco", "detcon_b"),  # rows of two tables
        ("--method", "byol", "--masks", "gt"),  # an image-level row on masks
        ("--method", "detcon_b", "--masks", "gt", "fh"),  # a row trains one set
        ("--study", "methods", "--method", "dino"),  # not a row
        (
            "--study",
            "nope",
        ),
    ],
)
def test_what_it_cannot_train_is_refused_before_training(argv):
    with pytest.raises(SystemExit):
        pick(*argv)


def test_the_report_counts_seeds_above_their_own_random_init_and_ranks_them(capsys):
    def record(kind, seed, top1):
        return {"kind": kind, "mask": None, "seed": seed, "metrics": {"linear_top1": top1}}

    records = [record("random", 0, 0.64), record("random", 1, 0.76), record("random", 2, 0.75),
               record("soco", 0, 0.78), record("soco", 1, 0.80), record("soco", 2, 0.74),
               record("soco", 3, 0.90)]  # fmt: skip
    bench.report(records)
    out = capsys.readouterr().out
    # seed 3 has no random init to pair with; seed 2 is below its own
    assert "soco: above its seed's random init on 2 of 3 seeds (gains -0.0100 to +0.1400)" in out
    # ranked against every random init: 0.78, 0.80 and 0.90 above its best (0.76); p is the
    # share of the C(7, 3) ways to place 3 random inits among 7 ranks whose U is >= soco's
    from itertools import combinations

    a, b = [0.78, 0.80, 0.74, 0.90], [0.64, 0.76, 0.75]
    u = sum(x > y for x in a for y in b)  # 10
    ranks = sorted(a + b)
    splits = [set(c) for c in combinations(range(7), 3)]
    as_high = sum(
        sum(i > j for i in range(7) if i not in c for j in c) >= u for c in splits
    )  # fmt: skip
    p = as_high / len(splits)
    assert (u, round(p, 4)) == (10, round(4 / 35, 4)) and ranks[0] == 0.64
    assert (f"soco: 3 of 4 seeds above random init's best of 3 seeds (0.7600); "
            f"Mann-Whitney exact one-sided p = {p:.2g}") in out  # fmt: skip


def test_a_mask_set_not_built_is_named_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here: Fashion-MNIST's FH set is not built
    p = bench.build_parser()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    study, cells = bench.pick_cells(p, p.parse_args(["--study", "methods_fmnist", "--method",
                                                     "simclr", "detcon_b"]), params)  # fmt: skip
    with pytest.raises(SystemExit) as err:
        bench.train_records(params, study, cells, [0], tmp_path / "out")
    fmnist = params["studies"]["methods_fmnist"]["data"]
    assert str(err.value) == (
        f"error: mask set 'fh' of methods_fmnist detcon_b is not built at {fmnist['masks']}/fh: "
        f"`python -m detlab.pipelines.masks.run --method fh --data {fmnist['root']} "
        f"--out {fmnist['masks']}/fh`")  # fmt: skip
    assert not (tmp_path / "out").exists()  # random init did not train


def test_a_folder_without_records_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "metrics/references").mkdir(parents=True)  # a bench run's root: records below
    monkeypatch.setattr("sys.argv", ["bench", "--metrics", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"--metrics {tmp_path}: no study records there "
                        "(<folder>/<study>/<cell>.json; a bench run's are in its metrics/)")  # fmt: skip


def test_reference_seeds_train_random_init_alone(tmp_path, monkeypatch):
    """--reference-seeds: random init on those seeds, no cell; the row's seeds train both."""
    import detlab.pipelines.study_cells as cells_mod
    import detlab.pipelines.study_reference as reference_mod

    ran = []
    monkeypatch.setattr(reference_mod, "run_reference",
                        lambda params, kind, seed, out: ran.append((kind, seed)) or {})  # fmt: skip
    monkeypatch.setattr(cells_mod, "run_cell",
                        lambda params, study, cell, seed, *a: ran.append((cell, seed)) or {})  # fmt: skip
    p = bench.build_parser()
    args = p.parse_args(["--method", "simclr", "--seeds", "7", "--reference-seeds", "500", "501"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    study, cells = bench.pick_cells(p, args, params)
    bench.train_records(params, study, cells, args.seeds, tmp_path, args.reference_seeds)
    assert ran == [("random", 7), ("simclr", 7), ("random", 500), ("random", 501)]
