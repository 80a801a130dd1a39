"""Checks runawayd's TensorBoard event files against its database.

    tb_check.py TB_DIR RUNAWAY_DB [--job J] [--expect-purge] [--allow-gaps]

Reads every job's run folder (TB_DIR/gID-GRID/VARIANT/seedK) independently
of the daemon's writer: TFRecord framing with CRC32C from the crc32c module
(Debian's python3-crc32c), protobuf wire format decoded by hand with the
field numbers of TensorBoard's event.proto and summary.proto. Then it
replays the files as TensorBoard does (name order; a SessionLog START at
step s drops every point at step >= s read before it) and requires each
scalar to equal, in float32, the newest stored metric of its kind and step:
nothing missing, nothing extra (with --allow-gaps, as after a full disk: points
may be missing, and the count of them is printed). Where the tensorboard
package is importable,
its own EventAccumulator must read the same points.

Each file must also hold, at step 0, the HParams plugin's session start
(TensorBoard's plugin_data.proto, decoded by hand as well): version 0, the
group "gID-GRID/VARIANT", and as hyper-parameters the job's stored spec
(read with Debian's python3-yaml), but for its name, seed, threads, log,
checkpoint and monitor fields.

Exits 0 after a summary line, 1 with the first difference found.
"""
import os
import sqlite3
import struct
import sys

import crc32c
import yaml

FIELDS = [  # (TensorBoard tag suffix, metrics column)
    ("loss", "loss"), ("L_align", "align"), ("L_uniform", "uniform"),
    ("collapse_std", "collapse"), ("knn_top1", "knn"), ("pairs_per_s", "pairs_per_s"),
    ("tau", "tau"), ("lr", "lr"), ("eff_rank", "rank"), ("linear_top1", "linear"),
    ("W_cos_I", "w_cos_i"), ("W_asymmetry", "w_asym")]
RESULT = [("linear_top1", "linear_acc"), ("L_align_last10", "align_last10"),
          ("L_uniform_last10", "uniform_last10")]


class Bad(Exception):
    pass


def masked(data):
    c = crc32c.crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        b = f.read()
    off = 0
    while off < len(b):
        if len(b) - off < 12:
            raise Bad(f"{path}: torn record header at byte {off}")
        n, = struct.unpack_from("<Q", b, off)
        hc, = struct.unpack_from("<I", b, off + 8)
        if hc != masked(b[off:off + 8]):
            raise Bad(f"{path}: length CRC wrong at byte {off}")
        data = b[off + 12:off + 12 + n]
        if len(data) != n or len(b) < off + 16 + n:
            raise Bad(f"{path}: torn record at byte {off}")
        dc, = struct.unpack_from("<I", b, off + 12 + n)
        if dc != masked(data):
            raise Bad(f"{path}: data CRC wrong at byte {off}")
        yield data
        off += 16 + n


def varint(b, i):
    v = shift = 0
    while True:
        if i >= len(b):
            raise Bad("truncated varint")
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def fields(b):
    """(field number, value) pairs: ints for varints, bytes otherwise."""
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise Bad(f"wire type {wt}")
        if i > len(b):
            raise Bad("truncated field")
        out.append((num, v))
    return out


def event(data):
    """Event as a dict: wall_time, step, and one of file_version,
    session_status, scalars [(tag, float)]."""
    ev = {"step": 0}
    for num, v in fields(data):
        if num == 1:
            ev["wall_time"], = struct.unpack("<d", v)
        elif num == 2:
            ev["step"] = v - (1 << 64) if v >= 1 << 63 else v
        elif num == 3:
            ev["file_version"] = v.decode()
        elif num == 7:
            ev["session_status"] = dict(fields(v)).get(1, 0)
        elif num == 5:
            sc = []
            for vn, val in fields(v):
                if vn != 1:
                    raise Bad(f"Summary field {vn}")
                f = dict(fields(val))
                if 9 in f:  # a plugin's summary
                    ev.setdefault("hparams", []).append(hparams_value(f))
                    continue
                if 2 not in f:
                    raise Bad("Summary.Value without simple_value")
                sc.append((f[1].decode(), struct.unpack("<f", f[2])[0]))
            if sc:
                ev["scalars"] = sc
        else:
            raise Bad(f"unexpected Event field {num}")
    return ev


def hparams_value(f):
    """A Summary.Value of the HParams plugin (summary.proto, tensor.proto,
    plugin_data.proto, struct.proto): {"group", "hparams": {name: value}}."""
    if f.get(1) != b"_hparams_/session_start_info":
        raise Bad(f"plugin summary tag {f.get(1)!r}")
    meta = dict(fields(f[9]))
    plugin = dict(fields(meta[1]))
    if plugin.get(1) != b"hparams":
        raise Bad(f"plugin {plugin.get(1)!r}")
    # the value: an empty float vector (dtype DT_FLOAT, shape [0]), as
    # TensorBoard's own hparams writer stores
    tensor = dict(fields(f.get(8, b"")))
    if tensor.get(1) != 1 or [n for n, _ in fields(tensor.get(2, b""))] != [2]:
        raise Bad(f"hparams tensor {f.get(8)!r} is not an empty float vector")
    version, ssi = 0, None
    for n, v in fields(plugin.get(2, b"")):
        if n == 1:
            version = v
        elif n == 3:
            ssi = v
        else:
            raise Bad(f"HParamsPluginData field {n}")
    if version != 0 or ssi is None:
        raise Bad(f"HParamsPluginData version {version}, session_start_info {ssi is not None}")
    out = {"group": "", "hparams": {}}
    for n, v in fields(ssi):
        if n == 1:  # map<string, google.protobuf.Value> entry
            e = dict(fields(v))
            kind = dict(fields(e.get(2, b"")))
            if 2 in kind:
                val = struct.unpack("<d", kind[2])[0]
            elif 3 in kind:
                val = kind[3].decode()
            elif 4 in kind:
                val = bool(kind[4])
            else:
                raise Bad(f"hparam {e.get(1)!r} without a value")
            out["hparams"][e[1].decode()] = val
        elif n == 4:
            out["group"] = v.decode()
    return out


NOT_HPARAMS = ("name", "seed", "threads", "data.loader_threads", "data.device_budget_mb")


def spec_fields(node, prefix=""):
    """The stored spec's fields as {"a.b": value}."""
    out = {}
    for k, v in node.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            out.update(spec_fields(v, key + "."))
        else:
            out[key] = v
    return out


def check_hparams(path, got, spec_text, group):
    if got["group"] != group:
        raise Bad(f"{path}: hparams group {got['group']!r}, expected {group!r}")
    want = {k: v for k, v in spec_fields(yaml.safe_load(spec_text)).items()
            if k not in NOT_HPARAMS and not k.startswith(("log.", "checkpoint.", "monitor."))}
    if set(got["hparams"]) != set(want):
        raise Bad(f"{path}: hparams extra {sorted(set(got['hparams']) - set(want))}, "
                  f"lacking {sorted(set(want) - set(got['hparams']))}")
    for k, w in want.items():
        g = got["hparams"][k]
        if isinstance(w, bool) or isinstance(w, str):
            same = g == w
        elif isinstance(w, (int, float)):
            same = isinstance(g, float) and abs(g - w) <= 1e-6 * max(1.0, abs(w))
        else:  # a list: its YAML text
            same = isinstance(g, str)
        if not same:
            raise Bad(f"{path}: hparam {k} = {g!r}, the spec has {w!r}")


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def check_job(tb_dir, db, job, stats, allow_gaps=False):
    gid, gname, variant, seed, spec_text = db.execute(
        "SELECT g.id, g.name, j.variant, j.seed, j.spec FROM jobs j "
        "JOIN grids g ON g.id=j.grid_id WHERE j.id=?", (job,)).fetchone()
    comp = lambda s: "_" + s[1:] if s.startswith(".") else s
    run = os.path.join(tb_dir, f"g{gid}-{comp(gname)}", comp(variant), f"seed{seed}")
    files = sorted(f for f in os.listdir(run) if "tfevents" in f) if os.path.isdir(run) else []
    # one file per attempt that reported a metric, named after it
    attempts = [a for a, in db.execute(
        "SELECT DISTINCT attempt_id FROM metrics WHERE job_id=? ORDER BY attempt_id", (job,))]
    named = sorted(int(f.rsplit(".a", 1)[1]) for f in files)
    if named != attempts:
        raise Bad(f"{run}: files for attempts {named}, metrics from attempts {attempts}")

    points = {}  # tag -> {step: value}, as TensorBoard keeps them
    raw = 0
    for f in files:
        path = os.path.join(run, f)
        evs = [event(r) for r in records(path)]
        if len(evs) < 3 or evs[0].get("file_version") != "brain.Event:2":
            raise Bad(f"{path}: does not open with the version event")
        first = next((e for e in evs if "scalars" in e), None)
        # the marker is at the attempt's first report; after a full disk the
        # file's first point may come later (the reports between were skipped)
        if (evs[1].get("session_status") != 1 or first is None
                or evs[1]["step"] > first["step"]
                or (evs[1]["step"] != first["step"] and not allow_gaps)):
            raise Bad(f"{path}: no START marker at the first reported step")
        hp = [(e["step"], h) for e in evs for h in e.get("hparams", [])]
        if len(hp) != 1 or hp[0][0] != 0:
            raise Bad(f"{path}: {len(hp)} HParams session starts (steps "
                      f"{[st for st, _ in hp]}), expected one at step 0")
        check_hparams(path, hp[0][1], spec_text,
                      f"g{gid}-{comp(gname)}/{comp(variant)}")
        stats["hparams"] += 1
        a_id = int(f.rsplit(".a", 1)[1])
        t0, t1 = db.execute("SELECT started, COALESCE(ended, strftime('%s','now')) FROM attempts "
                            "WHERE id=?", (a_id,)).fetchone()
        last = 0.0
        for e in evs:
            if not (t0 - 1 <= e["wall_time"] <= t1 + 1) or e["wall_time"] < last:
                raise Bad(f"{path}: wall_time {e['wall_time']} outside the attempt or going back")
            last = e["wall_time"]
            if e.get("session_status") == 1:
                for tag in points:
                    for s in [s for s in points[tag] if s >= e["step"]]:
                        del points[tag][s]
                        stats["purged"] += 1
            for tag, v in e.get("scalars", []):
                raw += 1
                if e["step"] in points.setdefault(tag, {}):
                    raise Bad(f"{path}: {tag} twice at step {e['step']} without a restart")
                points[tag][e["step"]] = v

    # what the database says TensorBoard should show: per kind and step the
    # newest row (a resumed attempt reports again the steps after its checkpoint)
    want = {}
    cols = ", ".join(c for _, c in FIELDS)
    for kind, prefix in (("step", "train"), ("epoch", "epoch")):
        for row in db.execute(f"SELECT step, {cols} FROM metrics WHERE job_id=? AND kind=? "
                              "ORDER BY id", (job, kind)):
            for (tag, _), v in zip(FIELDS, row[1:]):
                want.setdefault(f"{prefix}/{tag}", {}).pop(row[0], None)
                if v is not None:
                    want[f"{prefix}/{tag}"][row[0]] = f32(v)
    # the collapse alarm: epoch/collapse_alarm, 1 warn or 2 stop, at its epoch's step
    for step, alarm in db.execute("SELECT step, alarm FROM metrics WHERE job_id=? AND "
                                  "kind='alarm' ORDER BY id", (job,)):
        want.setdefault("epoch/collapse_alarm", {})[step] = f32(alarm)
    fin = db.execute("SELECT m.step, j.linear_acc, j.align_last10, j.uniform_last10 FROM metrics m "
                     "JOIN jobs j ON j.id=m.job_id WHERE m.job_id=? AND m.kind='final' "
                     "ORDER BY m.id DESC LIMIT 1", (job,)).fetchone()
    if fin:
        for (tag, _), v in zip(RESULT, fin[1:]):
            if v is not None:
                want[f"eval/{tag}"] = {fin[0]: f32(v)}
    want = {t: s for t, s in want.items() if s}
    if allow_gaps:  # every point there is the database's; some may not be there
        for tag in points:
            extra = [(st, v) for st, v in points[tag].items() if want.get(tag, {}).get(st) != v]
            if extra:
                raise Bad(f"{run}: {tag} has (step, value) {extra[:4]} the database has not")
        stats["missing"] += sum(len(s) for s in want.values()) - sum(
            len(s) for s in points.values())
    elif set(want) != set(points):
        raise Bad(f"{run}: tags {sorted(points)}, expected {sorted(want)}")
    for tag in want if not allow_gaps else ():
        if want[tag] != points[tag]:
            diff = sorted(set(want[tag].items()) ^ set(points[tag].items()))[:4]
            raise Bad(f"{run}: {tag} differs from the database at (step, value) {diff}")
    stats["runs"] += 1
    stats["files"] += len(files)
    stats["points"] += sum(len(s) for s in points.values())
    stats["raw"] += raw

    try:  # TensorBoard's own reader, where it is installed
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError:
        return
    acc = ea.EventAccumulator(run, size_guidance={ea.SCALARS: 0})
    acc.Reload()
    seen = {t: {s.step: s.value for s in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
    if seen != points:
        raise Bad(f"{run}: TensorBoard's EventAccumulator reads other points than ours")
    stats["tensorboard"] += 1


def main():
    args = sys.argv[1:]
    job = None
    expect_purge = "--expect-purge" in args
    if expect_purge:
        args.remove("--expect-purge")
    allow_gaps = "--allow-gaps" in args
    if allow_gaps:
        args.remove("--allow-gaps")
    if "--job" in args:
        k = args.index("--job")
        job = int(args[k + 1])
        del args[k:k + 2]
    tb_dir, db_path = args
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    jobs = [job] if job else [j for j, in db.execute(
        "SELECT DISTINCT job_id FROM metrics ORDER BY job_id")]
    stats = dict(runs=0, files=0, points=0, raw=0, purged=0, tensorboard=0, missing=0,
                 hparams=0)
    try:
        if not jobs:
            raise Bad("no job has metrics")
        for j in jobs:
            check_job(tb_dir, db, j, stats, allow_gaps)
        if expect_purge and not stats["purged"]:
            raise Bad("a resumed job, but no point was dropped by a restart marker")
    except (Bad, OSError) as e:
        print(f"tb_check: {e}")
        return 1
    print("tb_check: {runs} runs, {files} files, {points} points ({raw} written, {purged} "
          "dropped by restart markers), {tensorboard} runs read by TensorBoard too".format(**stats)
          + (", {missing} missing".format(**stats) if allow_gaps else "")
          + ", {hparams} HParams session starts".format(**stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
