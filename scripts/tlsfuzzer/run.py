"""Runs the tlsfuzzer scripts listed in scripts/tlsfuzzer-expected.txt; called by scripts/tlsfuzzer.sh.

Plan file format (blank lines and '#' comments are ignored):

    set   <name> | <value>
    run   <id> | <listener> | [aead-shim] <script> [args...]
    xfail <test name> | <substring of the expected error, or empty> | <reason>
    flaky <test name> | <substring of the error it may fail with> | <reason>
    skip  <test name> | <reason>

`run` starts an entry; its args are split like a shell would (shlex), then each may use
{placeholders}: those given with --file (e.g. {client_rsa_key}) and those `set` above.
`aead-shim` runs the script through aead_shim.py. `xfail` lines become `-x NAME [-X SUBSTRING]`, `skip` lines `-e NAME`, for the entry above them.
An xfail NAME with `*` in it is a pattern (`*` matches any text): tlsfuzzer cannot take those, so
this runner applies them to the script's failed tests afterwards, and a pattern that matched no
failed test counts as unexpected. `flaky` (name or pattern, applied afterwards too) accepts a
pass or a failure with that error: for tests whose outcome depends on socket timing. A line that
starts with whitespace continues the line above: more arguments after `run`, more reason after
the others. Every xfail, flaky and skip must give a reason.

Prints one line per entry and, at the end, every unexpected result with the error tlsfuzzer saw.
Exit status: 0 when every entry had only expected results, 1 otherwise.
"""
import argparse
import ast
import os
import re
import shlex
import subprocess
import sys
import time


class Entry:
    def __init__(self, ident, listener, script, args, line, shim):
        self.ident, self.listener, self.script, self.args, self.line, self.shim = (
            ident, listener, script, args, line, shim)
        self.xfail = []  # [name, substring, reason, where]
        self.flaky = []  # [name, substring, reason, where]
        self.skip = []  # [name, reason, where]


def parse_plan(path, values):
    """Reads the plan; `set NAME | VALUE` lines add to `values` (the {placeholders})."""
    entries, last = [], None
    with open(path) as f:
        for no, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path}:{no}"
            if line[0].isspace():
                if last is None:
                    sys.exit(f"{where}: continuation line with nothing to continue")
                if isinstance(last, Entry):
                    last.args += shlex.split(line)
                else:
                    last[-2] = (last[-2] + " " + line.strip()).strip()
                continue
            kind, _, rest = line.partition(" ")
            fields = [x.strip() for x in rest.split("|")]
            if kind == "set":
                if len(fields) != 2 or not fields[0]:
                    sys.exit(f"{where}: want 'set NAME | VALUE'")
                values[fields[0]] = fields[1]
                last = None
            elif kind == "run":
                if len(fields) != 3:
                    sys.exit(f"{where}: want 'run ID | LISTENER | SCRIPT ARGS...'")
                words = shlex.split(fields[2])
                shim = words[0] == "aead-shim"
                if shim:
                    words = words[1:]
                entries.append(Entry(fields[0], fields[1], words[0], words[1:], no, shim))
                last = entries[-1]  # continuation lines add arguments
            elif kind in ("xfail", "flaky", "skip"):
                if not entries:
                    sys.exit(f"{where}: {kind} before any run line")
                want = 2 if kind == "skip" else 3
                if len(fields) != want or not fields[0]:
                    sys.exit(f"{where}: want '{kind} NAME | "
                             + ("" if kind == "skip" else "SUBSTRING | ") + "REASON'")
                fields.append(where)  # [name, (substring,) reason, where]
                getattr(entries[-1], kind).append(fields)
                last = fields  # continuation lines extend fields[-2], the reason
            else:
                sys.exit(f"{where}: unknown line kind {kind!r}")
    for e in entries:
        for item in e.xfail + e.flaky + e.skip:
            if not item[-2]:
                sys.exit(f"{item[-1]}: {item[0]!r} has no reason")
    ids = [e.ident for e in entries]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        sys.exit(f"{path}: duplicate run ids: {sorted(dup)}")
    return entries


SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aead_shim.py")


def glob(pattern):
    """A test-name pattern: '*' matches anything, every other character only itself."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


COUNT = re.compile(r"^(TOTAL|SKIP|PASS|XFAIL|FAIL|XPASS): (\d+)$", re.M)
TEST_START = re.compile(r"^(.*) \.\.\.$")
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(: |$)")


def blocks(output):
    """Maps each test name to the outputs it printed, one per time it ran (tlsfuzzer prints
    'NAME ...' first; 'sanity' runs first and last)."""
    out, lines = {}, None
    for line in output.splitlines():
        m = TEST_START.match(line)
        if m:
            lines = out.setdefault(m.group(1), [])
            lines.append([])
        elif lines is not None:
            if line == "Test end":
                lines = None
            else:
                lines[-1].append(line)
    return out


def listed(output, header):
    m = re.search(r"^" + header + r":\n((?:\t.*\n?)+)", output, re.M)
    if not m:
        return []
    names = []
    for line in m.group(1).splitlines():
        item = line.strip()
        try:
            names.append(ast.literal_eval(item))
        except (ValueError, SyntaxError):
            names.append(item)
    return names


def why(runs):
    """The error tlsfuzzer printed for a failed test: the traceback's last line, plus the
    'Expected error message' line when an expected failure failed differently."""
    said = []
    for lines in runs:
        errors = [l for l in lines if EXCEPTION.match(l)]
        if errors:
            said.append(errors[-1])
        for l in lines:
            if l.startswith("Expected error message"):
                said.append(l)
    said = list(dict.fromkeys(said))
    return " / ".join(said) or "(no error printed)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tlsfuzzer", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--certgate-pid", type=int)
    ap.add_argument("--port", action="append", default=[])
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("only", nargs="*", help="run ids to run (default: all)")
    a = ap.parse_args()

    ports = dict(p.split("=", 1) for p in a.port)
    files = dict(p.split("=", 1) for p in a.file)
    entries = parse_plan(a.plan, files)
    if a.only:
        unknown = set(a.only) - {e.ident for e in entries}
        if unknown:
            sys.exit(f"unknown run ids: {sorted(unknown)}")
        entries = [e for e in entries if e.ident in a.only]
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=a.tlsfuzzer, PYTHONUNBUFFERED="1")

    problems, started = [], time.monotonic()
    print(f"{'run id':<34} {'listener':<8} {'time':>6}  result")
    for e in entries:
        if e.listener not in ports:
            sys.exit(f"{a.plan}:{e.line}: unknown listener {e.listener!r}")
        script = os.path.join(a.tlsfuzzer, "scripts", e.script)
        cmd = [sys.executable] + ([SHIM] if e.shim else []) + [script]
        cmd += ["-h", "localhost", "-p", ports[e.listener]]
        # Options first: the scripts use getopt, which stops at the first probe name in args.
        for name, _reason, _where in e.skip:
            cmd += ["-e", name]
        exact = [x for x in e.xfail if "*" not in x[0]]
        patterns = [x for x in e.xfail if "*" in x[0]]
        for name, sub, _reason, _where in exact:
            cmd += ["-x", name] + (["-X", sub] if sub else [])
        cmd += [x.format(**files) for x in e.args]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=a.tlsfuzzer, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=a.timeout,
                               stdin=subprocess.DEVNULL)
            output, rc = p.stdout.decode("utf-8", "replace"), p.returncode
        except subprocess.TimeoutExpired as t:
            output = (t.stdout or b"").decode("utf-8", "replace")
            rc = "timeout"
        took = time.monotonic() - t0
        with open(os.path.join(a.out, e.ident + ".log"), "w") as f:
            f.write("$ " + shlex.join(cmd) + "\n\n" + output)

        counts = {k: int(v) for k, v in COUNT.findall(output)}
        by_name = blocks(output)
        failed = [(n, why(by_name.get(n, []))) for n in dict.fromkeys(listed(output, "FAILED"))]
        xpassed = listed(output, "XPASSED")
        # Pattern xfails are applied here: a failed test is expected when a pattern matches its
        # name and the error contains the pattern's substring. A pattern that matches no failed
        # test is itself unexpected (the behaviour changed or the test was renamed).
        # A flaky rule accepts a failure like a pattern xfail does, but also a pass.
        unexpected, used, flaky = [], set(), 0
        for name, text in failed:
            hit = next((i for i, (pat, sub, _r, _w) in enumerate(patterns)
                        if glob(pat).fullmatch(name) and sub in text), None)
            if hit is not None:
                used.add(hit)
            elif any(glob(pat).fullmatch(name) and sub in text for pat, sub, _r, _w in e.flaky):
                flaky += 1
            else:
                unexpected.append((name, text))
        unused = [pat for i, (pat, _s, _r, _w) in enumerate(patterns) if i not in used]
        pattern_xfail = len(failed) - len(unexpected) - flaky
        finished = "TOTAL" in counts and rc in (0, 1)
        ok = finished and not unexpected and not xpassed and not unused \
            and (rc == 0 or failed or xpassed)
        if "TOTAL" in counts:
            counts["XFAIL"] = counts.get("XFAIL", 0) + pattern_xfail
            counts["FLAKY"] = flaky  # tests under a flaky entry that failed its way
            counts["FAIL"] = counts.get("FAIL", 0) - pattern_xfail - flaky
            keys = ["TOTAL", "PASS", "XFAIL"] + (["FLAKY"] if e.flaky else [])
            summary = " ".join(f"{k}={counts.get(k, 0)}" for k in
                               keys + ["SKIP", "FAIL", "XPASS"])
        else:
            summary = "no tlsfuzzer summary"
        if rc == "timeout":
            summary += f" (killed after {a.timeout}s)"
        elif not finished:
            summary += f" (exit status {rc})"
        print(f"{e.ident:<34} {e.listener:<8} {took:5.0f}s  {'ok  ' if ok else 'FAIL'} {summary}",
              flush=True)
        if not ok:
            details = list(unexpected)
            details += [(n, "XPASS: expected to fail but passed") for n in xpassed]
            details += [(pat, "expected-failure pattern matched no failed test") for pat in unused]
            if not details:
                details = [("(script)", "\n      ".join(output.strip().splitlines()[-15:]))]
            problems.append((e, details))
        if a.certgate_pid:
            try:
                os.kill(a.certgate_pid, 0)
            except OSError:
                problems.append((e, [("(certgate)", "certgate is no longer running")]))
                break

    total = time.monotonic() - started
    print(f"{len(entries)} runs in {total:.0f}s")
    if problems:
        # Grouped by error, at most MAX_NAMES names each; the full list is in unexpected.txt.
        MAX_NAMES = 6
        full = []
        print("\nUNEXPECTED RESULTS (tests grouped by the error tlsfuzzer saw):")
        for e, details in problems:
            head = f"{e.ident} ({e.script}, listener {e.listener}):"
            print("  " + head)
            full.append(head)
            groups = {}
            for name, text in details:
                groups.setdefault(text, []).append(name)
                full.append(f"  {name!r}: {text}")
            for text, names in groups.items():
                shown = ", ".join(repr(n) for n in names[:MAX_NAMES])
                more = f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else ""
                print(f"    {len(names)} test(s): {shown}{more}\n      -> {text}")
        with open(os.path.join(a.out, "unexpected.txt"), "w") as f:
            f.write("\n".join(full) + "\n")
        return 1
    print("OK: every result was expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
