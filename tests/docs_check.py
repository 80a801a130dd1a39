#!/usr/bin/env python3
"""Holds docs/ to the programs, so that neither drifts from the other.

  (a) every flag (--xxx, -x) that `runaway --help`, `runaway CMD --help`
      (where that exits 0) and `runawayd --help` print must appear in a
      table row of docs/cli.md (runaway) or docs/daemon.md (runawayd; the
      runawayd options that `runaway daemon start` and `runaway run` pass on
      may be in either);
  (b) docs/specs.md's table must have one row per spec field of the parser's
      field table (tests/spec_fields prints them with their defaults), no
      more, and a default written as one literal must be the parser's.

  docs_check.py --runaway BIN --runawayd BIN --spec-fields BIN --docs DIR

Every problem is printed; exit 1 if there is any. Finding no flag or no
field at all is a problem too: the check must not pass by seeing nothing.
The commands run with a state folder and HOME of their own, and
--daemon-bin /bin/false, so that no help request can reach or start a
daemon of the user's.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

# a flag: -x or --word-word, not inside a word (align-uniform, +-, ->)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9]*(?:-[a-z0-9]+)*|-[a-zA-Z])(?![\w-])")
# a command line of `runaway --help`: two spaces, a lowercase word
COMMAND = re.compile(r"^  ([a-z][a-z-]*)\b")
# commands whose extra options are runawayd's
PASS_ON = {"daemon", "daemon start", "run"}


def flags_in(text):
    return set(FLAG.findall(text))


def documented(flag, text):
    return re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text) is not None


def run(cmd, env, timeout=30):
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        return None, ""


def read_doc(args, name, problems, rows_only=False):
    """The page's text; with rows_only, only its table rows: a flag counts
    as documented where a reference table gives it, not where prose names
    it in passing."""
    try:
        with open(os.path.join(args.docs, name)) as f:
            text = f.read()
        if rows_only:
            text = "\n".join(l for l in text.splitlines() if l.lstrip().startswith("|"))
        return text
    except OSError as e:
        problems.append("docs/%s: %s" % (name, e.strerror))
        return ""


def check_flags(args, env, state, problems):
    cli = read_doc(args, "cli.md", problems, rows_only=True)
    daemon_md = read_doc(args, "daemon.md", problems, rows_only=True)
    runaway = [args.runaway, "--state-dir", state, "--daemon-bin", "/bin/false"]

    rc, top = run([args.runaway, "--help"], env)
    if rc != 0:
        problems.append("`runaway --help` exited %s:\n%s" % (rc, top))
        return
    commands = []
    for line in top.splitlines():
        m = COMMAND.match(line)
        if m and m.group(1) not in commands:
            commands.append(m.group(1))
    if not commands:
        problems.append("no command found in `runaway --help`")
    sources = [("runaway --help", flags_in(top), False)]
    asked = [[c] for c in commands]
    if "daemon" in commands:
        asked += [["daemon", s] for s in ("start", "stop", "status", "check")]
    per_command = 0
    for words in asked:
        rc, text = run(runaway + words + ["--help"], env)
        if rc == 0 and text.strip():  # that command has help of its own
            per_command += 1
            sources.append(("runaway %s --help" % " ".join(words), flags_in(text),
                            " ".join(words) in PASS_ON))
    print("docs_check: runaway: %d commands, %d with help of their own"
          % (len(commands), per_command))

    rc, dtext = run([args.runawayd, "--help"], env)
    if rc != 0:
        problems.append("`runawayd --help` exited %s:\n%s" % (rc, dtext))
    daemon_flags = flags_in(dtext)

    nflags = 0
    for where, flags, pass_on in sources:
        nflags += len(flags)
        for f in sorted(flags):
            if documented(f, cli) or (pass_on and f in daemon_flags and documented(f, daemon_md)):
                continue
            problems.append("%s: %s is in no table row of docs/cli.md" % (where, f))
    for f in sorted(daemon_flags):
        if not documented(f, daemon_md):
            problems.append("runawayd --help: %s is in no table row of docs/daemon.md" % f)
    print("docs_check: %d runaway flags, %d runawayd flags"
          % (len(set().union(*(s[1] for s in sources))), len(daemon_flags)))
    if nflags == 0:
        problems.append("no flag found in runaway's help: the check would pass on nothing")
    if not daemon_flags:
        problems.append("no flag found in `runawayd --help`: the check would pass on nothing")


def same_default(doc, real):
    doc, real = doc.strip().strip('"'), real.strip().strip('"')
    if doc == real:
        return True
    try:
        a, b = float(doc), float(real)
    except ValueError:
        return False
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def check_specs(args, env, problems):
    rc, out = run([args.spec_fields], env)
    if rc != 0:
        problems.append("spec_fields exited %s:\n%s" % (rc, out))
        return
    real = {}
    for line in out.splitlines():
        name, _, value = line.partition("\t")
        real[name] = value
    if not real:
        problems.append("spec_fields printed no field: the check would pass on nothing")
        return
    # rows of a markdown table whose first cell is one `dotted.name`
    rows = {}
    for n, line in enumerate(read_doc(args, "specs.md", problems).splitlines(), 1):
        m = re.match(r"^\|\s*`([a-z_][a-z0-9_.]*)`\s*\|(.*)$", line)
        if not m:
            continue
        cells = [c.strip() for c in m.group(2).split("|")]
        if m.group(1) in rows:
            problems.append("docs/specs.md:%d: %s has a second row" % (n, m.group(1)))
        rows[m.group(1)] = (n, cells)
    for name in real:
        if name not in rows:
            problems.append("docs/specs.md: no row for the spec field %s" % name)
    for name, (n, cells) in sorted(rows.items()):
        if name not in real:
            problems.append("docs/specs.md:%d: %s is not a spec field" % (n, name))
            continue
        # columns: field | type | default | allowed | meaning
        lit = re.fullmatch(r"`([^`]*)`", cells[1]) if len(cells) > 1 else None
        if lit and not same_default(lit.group(1), real[name]):
            problems.append("docs/specs.md:%d: %s defaults to %s, not %s"
                            % (n, name, real[name], lit.group(1)))
    print("docs_check: %d spec fields, %d rows in docs/specs.md" % (len(real), len(rows)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runaway", required=True)
    ap.add_argument("--runawayd", required=True)
    ap.add_argument("--spec-fields", required=True)
    ap.add_argument("--docs", required=True)
    args = ap.parse_args()
    problems = []
    with tempfile.TemporaryDirectory(prefix="rw-docs-") as tmp:
        state = os.path.join(tmp, "state")
        env = dict(os.environ, HOME=tmp, XDG_STATE_HOME=tmp, XDG_CACHE_HOME=tmp)
        check_flags(args, env, state, problems)
        check_specs(args, env, problems)
    for p in problems:
        print("docs_check: " + p)
    if problems:
        print("docs_check: %d problem(s)" % len(problems))
        return 1
    print("docs_check: docs/ agree with the programs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
