"""The seed sweep's summary: per check and figure, its distribution over seeds (plain Python).

A check's name is the same for every seed; each numeric figure (max_abs_err, snr_db, ratio, flip
counts, ...) gets min / median / worst, where worst is the lowest for an SNR and the highest
for anything else (errors, ratios, counts).
"""

import statistics

SKIP = {"seed", "tolerance", "max_rel_err", "seconds", "seconds_ours", "seconds_reference", "steps"}


def figures(check: dict, prefix: str = ""):
    """(name, value) for every numeric figure of a check, nested dicts flattened with dots."""
    for key, value in check.items():
        if key in SKIP or key == "name":
            continue
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield prefix + key, float(value)
        elif isinstance(value, dict):
            yield from figures(value, f"{prefix}{key}.")
        elif key == "flips" and isinstance(value, list):  # token choices: how many, their worst margin
            yield prefix + "flip_count", float(len(value))


def summarize(checks: list) -> list:
    by_name = {}
    for c in checks:
        row = by_name.setdefault(c["name"], {"seeds": [], "failed_seeds": [], "figures": {}})
        row["seeds"].append(c.get("seed"))
        if not c["ok"]:
            row["failed_seeds"].append(c.get("seed"))
        for key, value in figures(c):
            row["figures"].setdefault(key, []).append(value)
    out = []
    for name, row in by_name.items():
        stats = {}
        for key, values in row["figures"].items():
            worst = min(values) if "snr" in key else max(values)
            stats[key] = {"min": min(values), "median": statistics.median(values), "worst": worst}
        out.append({"summary": name, "seeds": row["seeds"], "failed_seeds": row["failed_seeds"], **stats})
    return out


def main(argv=None):
    """`python -m tests.reference.sweep LOG.jsonl ...`: the summary of parity output lines already
    written (a sweep prints each check as it comes, so an interrupted one still summarizes)."""
    import json
    import sys

    checks = []
    for path in (argv if argv is not None else sys.argv[1:]):
        with open(path) as f:
            for line in f:
                row = json.loads(line) if line.startswith("{") else {}
                if "name" in row and "ok" in row:
                    checks.append(row)
    for row in summarize(checks):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
