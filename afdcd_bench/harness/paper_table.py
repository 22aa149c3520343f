"""table.md and table.tex as a paper or a README takes them: display names, mean +- std with n,
deltas, published beside measured only where the published schedule ran, the schedule and
precision in the caption; the full frame stays in table.csv (harness/table.py)."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

METHOD_NAMES = {"teacher": "Teacher", "baseline": "Baseline", "kd": "KD", "afdcd": "Af-DCD", "cwd": "CWD", "skd": "SKD",
                "ifvd": "IFVD", "dist": "DIST", "cirkd": "CIRKD", "maskd": "MasKD", "kt": "KT", "fitnet": "FitNet", "adv": "adv",
                "fd": "FD"}
ARCHS = {"deeplabv3": "DeepLabV3", "pspnet": "PSPNet"}
BACKBONES = {"resnet18": "R18", "resnet34": "R34", "resnet101": "R101", "mobilenetv2": "MBV2", "resnet10t": "R10t"}
BENCHMARKS = {"cityscapes": "Cityscapes", "voc": "Pascal VOC", "camvid": "CamVid", "ade20k": "ADE20K",
              "coco_stuff_164k": "COCO-Stuff-164K", "digits": "digits (demo)"}


def network_name(student: str) -> str:
    """deeplabv3-resnet18_deepstem -> DeepLabV3-R18."""
    arch, _, backbone = str(student).partition("-")
    base = backbone.split("_")[0]
    return f"{ARCHS.get(arch, arch)}-{BACKBONES.get(base, base)}"


def method_name(label: str) -> str:
    """cwd+kd+adv -> CWD + KD + adv; a variant keeps its recipe in parentheses."""
    main, _, variant = str(label).partition(" ")
    return " + ".join(METHOD_NAMES.get(m, m) for m in main.split("+")) + (f" {variant}" if variant else "")


def _num(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _measured(mean: Any, std: Any, n: int) -> str:
    if not n:
        return "missing"
    return f"{_num(mean)} ± {_num(std)} (n={n})" if n > 1 and not math.isnan(std) else f"{_num(mean)} (n={n})"


def paper_frame(table: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment, in the table's order, with the columns a paper shows."""
    budgets = table["budget"].nunique(dropna=True) > 1 if "budget" in table else False
    released = "released" in table and table["released"].notna().any()
    rows = []
    for r in table.to_dict("records"):
        row = {"Benchmark": BENCHMARKS.get(r["benchmark"], r["benchmark"]), "Network": network_name(r["student"]),
               "Method": method_name(r["method"])}
        if budgets:
            row["Budget"] = r.get("budget") or ""
        row.update({"mIoU (best)": _measured(r["best_mean"], r["best_std"], int(r["n"])), "Δ baseline": _num(r["delta_best"], True),
                    "mIoU (final)": _measured(r["final_mean"], r["final_std"], int(r["n"])), "Published": _num(r["published"])})
        if released:
            row["Released (measured)"] = _num(r.get("released"))
        rows.append(row)
    return pd.DataFrame(rows)


def caption(table: pd.DataFrame) -> str:
    present = table[table["n"] > 0]
    splits = ", ".join(sorted({str(s) for s in present["split"].dropna()})) or "val"
    iterations = sorted({int(i) for i in present["iterations"].dropna()}) if "iterations" in present else []
    precisions = sorted({str(p) for p in present["precision"].dropna()})
    steps = (f"{iterations[0]} iterations" if len(iterations) == 1 else
             f"{iterations[0]}-{iterations[-1]} iterations (see the budget)" if iterations else "")
    return (f"mIoU (%) on {splits}: best = the best of the periodic validations (what published numbers are), final = "
            f"the last checkpoint; mean ± std over n seeds (std over seeds, n-1 denominator); Δ baseline: best minus the "
            f"baseline's of the same protocol; published numbers only beside runs of their published schedule"
            f"{'; ' + steps if steps else ''}{'; precision ' + '/'.join(precisions) if precisions else ''}.")


def to_markdown(table: pd.DataFrame) -> str:
    frame = paper_frame(table)
    align = ["left" if c in ("Benchmark", "Network", "Method", "Budget") else "right" for c in frame.columns]
    return f"{caption(table)}\n\n" + frame.to_markdown(index=False, colalign=align) + "\n"


def _tex_escape(text: str) -> str:
    return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&") \
        .replace("±", "$\\pm$").replace("Δ", "$\\Delta$")


def to_latex(table: pd.DataFrame) -> str:
    frame = paper_frame(table)
    spec = "".join("l" if c in ("Benchmark", "Network", "Method", "Budget") else "r" for c in frame.columns)
    lines = ["\\begin{table}", "\\centering", f"\\caption{{{_tex_escape(caption(table))}}}", f"\\begin{{tabular}}{{{spec}}}",
             "\\toprule", " & ".join(_tex_escape(c) for c in frame.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(_tex_escape(v) for v in row) + " \\\\" for row in frame.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"
