"""Write the table of docs/tasks.md (block ``figures:tasks``) from the finished runs under
``runs/tasks/<preset>*/seed_*`` (trained by the commands shown in docs/tasks.md):

    .venv/bin/python scripts/tasks_table.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from figures import write_block  # noqa: E402

from inductionlab.metrics.stats import fmt_ci  # noqa: E402

PRESETS = ("mqar-2l", "mqar-1l", "mqar-linear-2l", "induction-linear-2l")


def main() -> None:
    rows = ["| preset | seeds | headline per seed | mean ± 95% CI | reached 0.95 (step) | best recall / induction head per seed |",
            "|---|---|---|---|---|---|"]
    for preset in PRESETS:
        runs = []
        for path in sorted(ROOT.glob(f"runs/tasks/{preset}*/seed_*/summary.json")):
            if path.parent.parent.name not in (preset, f"{preset}-b"):
                continue
            s = json.loads(path.read_text())
            runs.append((int(path.parent.name[5:]), s))
        runs.sort(key=lambda r: r[0])
        if not runs:
            continue
        vals = [s["headline"]["value"] for _, s in runs]
        metric = runs[0][1]["headline"]["metric"]
        reached = [f"{s['reached_target_at']}" for _, s in runs if s.get("reached_target_at")]
        best = [(s.get("best_recall_head") or s.get("best_induction_head") or {}).get("score") for _, s in runs]
        rows.append(f"| `{preset}` | {','.join(str(k) for k, _ in runs)} | {metric}: "
                    f"{', '.join(f'{v:.3f}' for v in vals)} | {fmt_ci(vals)} | "
                    f"{len(reached)} of {len(runs)} ({', '.join(reached) or '-'}) | "
                    f"{', '.join('-' if b is None else f'{b:.3f}' for b in best)} |")
    write_block(ROOT / "docs" / "tasks.md", "tasks", ".venv/bin/python scripts/tasks_table.py", "\n".join(rows))


if __name__ == "__main__":
    main()
