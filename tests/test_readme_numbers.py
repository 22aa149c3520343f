"""Figures the README quotes that the code prints: checked against what it prints today, so that a
new recipe or a new measurement cannot leave the README behind."""
import re
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]


def test_the_cityscapes_projection_in_the_readme_is_the_dry_runs(tmp_path):
    from afdcd_bench.harness.reproduce import reproduce

    console = Console(record=True, width=400)
    reproduce("cityscapes", seeds=3, dry_run=True, results_dir=str(tmp_path), console=console)
    raw = console.export_text()
    text = " ".join(raw.split())
    planned = int(re.search(r"cityscapes: (\d+) run\(s\) planned", text).group(1))
    rated, total = re.search(r"training hours of the (\d+) run\(s\) with a rate: ([\d.]+)", text).groups()
    walls = dict((g, h) for g, h in re.findall(r"(\d+) GPU\(s\) ([\d.]+) h", text))
    unrated = int(re.search(r"(\d+) run\(s\) without a rate", text).group(1))
    proxies = len(re.findall(r"proxy: ", raw))

    readme = " ".join((ROOT / "README.md").read_text().split())
    said = re.search(r"`\./reproduce\.sh cityscapes --dry-run`, three seeds, one GPU per run, (\d+) runs\): at least ([\d.]+) h "
                     r"of training on one GPU, ([\d.]+) h on 8 GPUs and ([\d.]+) h on 64\. Lower bounds: only (\d+) runs have a "
                     r"rate of their own .*?, (\d+) take one of those as a proxy .*?, and (\d+) \(the teacher", readme)
    assert said, "the README's projection paragraph changed shape: update this test with it"
    runs, one, eight, sixty_four, own, proxy, none = said.groups()
    assert int(runs) == planned and int(none) == unrated and int(proxy) == proxies and int(own) == int(rated) - proxies
    assert (one, eight, sixty_four) == (total, walls["8"], walls["64"]) and walls["1"] == total
