"""The table, ratios, PASS / MISS verdicts and JSON of ``python -m bench.gpu``.

Ratios come from the same run: a step row's ``pct_of_ceiling`` is its images/s over the best (fp16, NCHW or
channels-last) rate of its matched ceiling (the trunk's forward + backward on the crops the online network trains
on, plus a forward on the crops a momentum encoder embeds), ``pct_of_bare`` the same over the bare ceiling (forward
+ backward on every crop), ``x_base`` its images/s over the recipe's ``base`` row (fp32, per-sample augmentation).
"""
from bench.common import write_json

TARGET_PCT, TARGET_X = 85.0, 1.5


def _ok(row):
    return "error" not in row and "skipped" not in row


def derive(rows):
    """Add the ratios to the step rows (in place); return ``(verdicts, feeds)``."""
    ceiling = {}
    for r in rows:
        if r["kind"] == "ceiling" and _ok(r):
            ceiling[r["shape"]] = max(ceiling.get(r["shape"], 0.0), r["images_per_s"])
    steps = [r for r in rows if r["kind"] == "step" and not r.get("group")]
    base = {r["name"]: r["images_per_s"] for r in steps if r["config"] == "base" and _ok(r)}
    for r in steps:
        if _ok(r):
            c, bare, b = ceiling.get(r["matched_shape"]), ceiling.get(r["bare_shape"]), base.get(r["name"])
            r["pct_of_ceiling"] = 100 * r["images_per_s"] / c if c else None
            r["pct_of_bare"] = 100 * r["images_per_s"] / bare if bare else None
            r["x_base"] = r["images_per_s"] / b if b else None
    verdicts = []
    for name in dict.fromkeys(r["name"] for r in steps):
        done = [r for r in steps if r["name"] == name and _ok(r)]
        v = {"name": name, "verdict": "n/a", "why": "no step row finished"}
        if done:
            best = max(done, key=lambda r: r["images_per_s"])
            v = {"name": name, "best_config": best["config"], "images_per_s": best["images_per_s"],
                 "pct_of_ceiling": best["pct_of_ceiling"], "x_base": best["x_base"]}
            if best.get("video"):
                v.update(verdict="-", why="video: no target")
            elif best["pct_of_ceiling"] is None or best["x_base"] is None:
                v.update(verdict="n/a", why="no " + ("ceiling" if best["pct_of_ceiling"] is None else "base") + " row")
            else:
                passed = best["pct_of_ceiling"] >= TARGET_PCT and best["x_base"] >= TARGET_X
                v.update(verdict="PASS" if passed else "MISS", why="")
        verdicts.append(v)
    feeds = []
    for f in (r for r in rows if r["kind"] == "feed"):
        fed = [r for r in steps if _ok(r) and r.get("pipeline") == f["pipeline"] and r["sizes"] == f["sizes"]
               and ("device_aug" in r["config"] or "all" in r["config"])]
        best = max(fed, key=lambda r: r["images_per_s"]) if fed else None
        entry = {"pipeline": f["pipeline"], "crops": crops(f), "workers": f["workers"],
                 "loader_images_per_s": f.get("images_per_s"), "error": f.get("error") or f.get("skipped")}
        if best and _ok(f):
            entry.update(step=f"{best['name']} {best['config']}", step_images_per_s=best["images_per_s"],
                         loader_over_step=f["images_per_s"] / best["images_per_s"])
        feeds.append(entry)
    return verdicts, feeds


def crops(row):
    """``2x224+6x96``, or ``2x8x224`` for clips of 8 frames."""
    frames = f"{row['frames']}x" if row.get("frames") else ""
    return "+".join(f"{n}x{frames}{s}" for s, n in zip(row["sizes"], row["nmb"]) if n)


def _pct(v):
    return f"{v:6.1f}" if v is not None else "     -"


def _line(name, config, r, w):
    if not _ok(r):
        return f"  {name:<{w}} {config:<20} " + ("error: " + r["error"] if "error" in r else "skipped: " + r["skipped"])
    extra = ""
    if "x_base" in r:
        extra = f" {_pct(r['pct_of_ceiling'])} {_pct(r['pct_of_bare'])} " + (f"{r['x_base']:6.2f}" if r["x_base"]
                                                                              else "     -")
    return (f"  {name:<{w}} {config:<20} {r['images_per_s']:9.1f} {r['ms_per_step']:8.1f} "
            f"{r['peak_mib'] / 1024:8.2f}{extra}")


def report(result, path):
    """Print the tables and verdicts of ``result`` (the dict :func:`bench.gpu.main` builds) and write it, with the
    derived fields, to ``path`` as JSON."""
    rows = result["rows"]
    verdicts, feeds = derive(rows)
    result.update(verdicts=verdicts, feed=feeds)
    ceilings = [(f"{r['name']} {r['arch']} {crops(r)}", r) for r in rows if r["kind"] == "ceiling"]
    steps = [(f"{r['name']} {r['arch']} b{r['batch_size']} {crops(r)}", r) for r in rows
             if r["kind"] == "step" and not r.get("group")]
    w = max([len(name) for name, _ in ceilings + steps] + [10])
    head = f"  {'':<{w}} {'config':<20} {'images/s':>9} {'ms/step':>8} {'peak GiB':>8}"
    print(f"\n== results ({result['machine']}, {result['wall_s']:.0f} s)")
    print("ceilings: trunk forward + backward (matched: + momentum-encoder forward)")
    print(head)
    for name, r in ceilings:
        print(_line(name, r["config"], r, w))
    print("training steps (train_one_epoch); %ceil: of the matched ceiling, %bare: of the bare one, x base: over "
          "fp32 per-sample")
    print(head + f" {'%ceil':>6} {'%bare':>6} {'x base':>6}")
    for name, r in steps:
        print(_line(name, r["config"], r, w))
    print("1-process group (torchrun; NCCL on CUDA), DDP and SyncBatchNorm as the scripts build them")
    for r in (r for r in rows if r.get("group")):
        print(f"  {r['name']:<14} " + (f"{r['backend']} world {r['world_size']}, {r['syncbn_layers']} SyncBatchNorm "
                                       f"layers, loss {r['loss']:.4f}" if _ok(r) else
                                       r.get("error") or "skipped: " + r["skipped"]))
    print("checks (real scripts; side by side, not timed)")
    for c in result["checks"]:
        detail = c.get("resume_line", "") if c["check"].startswith("torchrun") else \
            f"kNN top-1 pretrained {c.get('knn_pretrained')}%, random-init {c.get('knn_random_init')}%"
        print(f"  {c['check']:<20} {c['name']:<14} " + ("ok  " + detail if c["ok"] else "FAILED: " + c["error"]))
    print("feed: split pipeline's CPU half (every core a loader worker) against the step that consumes it")
    for f in feeds:
        if f.get("step_images_per_s"):
            word = "fed" if f["loader_over_step"] >= 1 else "NOT fed"
            print(f"  {f['pipeline']:<6} {f['crops']:<28} {f['workers']:3d} workers {f['loader_images_per_s']:8.1f} "
                  f"img/s; step {f['step']} {f['step_images_per_s']:.1f} img/s: {word} ({f['loader_over_step']:.2f}x)")
        else:
            print(f"  {f['pipeline']:<6} {f['crops']:<28} " + (f"{f['loader_images_per_s']:.1f} img/s, no step row"
                                                               if f["loader_images_per_s"] else f"{f['error']}"))
    print(f"targets: best option set >= {TARGET_PCT:.0f}% of the matched ceiling and >= {TARGET_X}x base")
    for v in verdicts:
        if "best_config" in v:
            print(f"  {v['verdict']:<4} {v['name']:<14} best {v['best_config']:<20} {v['images_per_s']:9.1f} img/s  "
                  f"{_pct(v['pct_of_ceiling'])}% of ceiling  " + (f"{v['x_base']:.2f}x base" if v["x_base"] else "")
                  + (f"  ({v['why']})" if v["why"] else ""))
        else:
            print(f"  {v['verdict']:<4} {v['name']:<14} ({v['why']})")
    bad = sum(not _ok(r) for r in rows) + sum(not c["ok"] for c in result["checks"])
    print(f"bench.gpu: {len(rows)} rows, {len(result['checks'])} checks, {bad} failed or skipped; "
          f"PASS {sum(v['verdict'] == 'PASS' for v in verdicts)}/{sum(v['verdict'] in ('PASS', 'MISS', 'n/a') for v in verdicts)} "
          f"image recipes; {result['wall_s']:.0f} s")
    write_json(path, result, indent=1)
