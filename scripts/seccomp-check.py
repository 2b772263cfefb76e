#!/usr/bin/env python3
"""Checks certgate's seccomp profile (dist/docker/seccomp.json), or runs a command under it.

    scripts/seccomp-check.py [--profile FILE] [--docker-default FILE]
    scripts/seccomp-check.py [--profile FILE] exec -- COMMAND [ARG...]

The profile allows what certgate calls (traced with strace over the integration tests, on
io_uring and with CERTGATE_EPOLL=1, plus the aarch64 spellings: epoll_pwait, ppoll, fstat,
faccessat, readlinkat, mkdirat, renameat, unlinkat), and the io_uring calls that Docker 25+ and
containerd 2.0+ leave out of their defaults. Operations submitted through io_uring do not pass
through seccomp at all; that is why those defaults block it, and what allowing it gives up.

The check (standard library only) fails, naming the rule, unless the profile
  - is the OCI runtime-spec form that Docker, containerd and CRI-O all read as written
    (no Docker-only archMap/includes/excludes, which containerd would ignore, applying
    every conditional rule unconditionally);
  - denies by default with an errno, for x86_64 and aarch64;
  - allows io_uring_setup, io_uring_enter and io_uring_register, unconditionally;
  - answers clone3 with ENOSYS (so glibc falls back to clone) and allows clone only without
    namespace flags;
  - allows none of the system calls that Docker's default profile keeps from a container
    without capabilities (mount, unshare, setns, ptrace, bpf, keyctl, ... listed below).
With --docker-default FILE (Docker's default profile, profiles/seccomp/default.json of
moby/moby or the moby/profiles module; not shipped here), it also checks that every system
call the profile allows is one that Docker's default allows a container without capabilities,
io_uring's three excepted: certgate's profile is that default narrowed to what certgate calls,
plus io_uring.

`exec` runs COMMAND under the profile (Debian's python3-seccomp, libseccomp's bindings). Run the
integration tests with certgate under it by putting a wrapper at the binary's path:
    cargo test --test it --no-run
    mv target/debug/certgate target/debug/certgate.real
    printf '#!/bin/sh\nexec /usr/bin/python3 %s exec -- %s.real "$@"\n' \\
        "$PWD/scripts/seccomp-check.py" "$PWD/target/debug/certgate" > target/debug/certgate
    chmod +x target/debug/certgate && cargo test --test it
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
ENOSYS = 38
# socket(): AF_UNIX (sd_notify, the signal thread's wakeups), AF_INET, AF_INET6.
SOCKET_FAMILIES = (1, 2, 10)
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET: clone may create no namespace.
CLONE_NAMESPACES = 0x7E020000
# Blocked by Docker's default profile for a container without capabilities (Docker's
# documentation lists them), and of no use to certgate.
NEVER = {
    "acct", "add_key", "bpf", "chroot", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen",
    "fspick", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "move_pages", "nfsservctl", "open_by_handle_at",
    "open_tree", "perf_event_open", "pidfd_getfd", "pivot_root", "process_madvise",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
    "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setdomainname", "sethostname",
    "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog", "sysfs", "umount",
    "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old",
}
OCI_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
            "listenerMetadata", "syscalls"}
RULE_KEYS = {"names", "action", "errnoRet", "args"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}


class Bad(Exception):
    pass


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Bad(f"{path}: {e}") from e


def allowed(profile):
    """name -> list of its ALLOW rules' args (an empty list: unconditional)."""
    out = {}
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            for name in rule["names"]:
                out.setdefault(name, []).append(rule.get("args", []))
    return out


def check(profile):
    extra = set(profile) - OCI_KEYS
    if extra:
        raise Bad(f"not OCI runtime-spec form: top-level {sorted(extra)}")
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        raise Bad("defaultAction must be SCMP_ACT_ERRNO (deny, with an errno)")
    arches = set(profile.get("architectures", []))
    if arches != {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}:
        raise Bad(f"architectures must be x86_64 and aarch64, not {sorted(arches)}")
    seen = {}
    for i, rule in enumerate(profile.get("syscalls", [])):
        where = f"syscalls[{i}]"
        extra = set(rule) - RULE_KEYS
        if extra:
            raise Bad(f"{where}: not OCI runtime-spec form: {sorted(extra)}")
        names = rule.get("names")
        if not names or not all(isinstance(n, str) and n for n in names):
            raise Bad(f"{where}: names must be a non-empty list of syscall names")
        if rule.get("action") not in ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"):
            raise Bad(f"{where}: action {rule.get('action')!r}")
        for arg in rule.get("args", []):
            if set(arg) - ARG_KEYS or arg.get("op", "").startswith("SCMP_CMP_") is False:
                raise Bad(f"{where}: argument condition {arg}")
        for name in names:
            # A name may have several rules only if each has argument conditions.
            if name in seen and not (rule.get("args") and seen[name][1]):
                raise Bad(f"{where}: {name} already in syscalls[{seen[name][0]}]")
            seen[name] = (i, bool(rule.get("args")))
    allow = allowed(profile)
    for name in sorted(IO_URING):
        if allow.get(name) != [[]]:
            raise Bad(f"{name} is not allowed unconditionally")
    clone3 = [r for r in profile["syscalls"] if "clone3" in r["names"]]
    if len(clone3) != 1 or clone3[0]["action"] != "SCMP_ACT_ERRNO" or \
            clone3[0].get("errnoRet") != ENOSYS:
        raise Bad("clone3 must be answered with ENOSYS (38), so that glibc falls back to clone")
    want = [[{"index": 0, "value": CLONE_NAMESPACES, "op": "SCMP_CMP_MASKED_EQ"}]]
    if allow.get("clone") != want:
        raise Bad(f"clone must be allowed only as {want[0]}, not {allow.get('clone')}")
    families = [[{"index": 0, "value": f, "op": "SCMP_CMP_EQ"}] for f in SOCKET_FAMILIES]
    if sorted(map(str, allow.get("socket", []))) != sorted(map(str, families)):
        raise Bad(f"socket must be allowed for AF_UNIX, AF_INET and AF_INET6 only, not "
                  f"{allow.get('socket')}")
    bad = sorted(set(allow) & NEVER)
    if bad:
        raise Bad(f"allows {bad}, which Docker's default keeps from an unprivileged container")
    return allow


def docker_unconditional(default):
    """What Docker's default profile allows a container with no capabilities on x86_64 or
    aarch64, with the argument conditions of each name (an empty list: none)."""
    out = {}
    for rule in default["syscalls"]:
        if rule["action"] != "SCMP_ACT_ALLOW":
            continue
        inc = rule.get("includes", {})
        # io_uring needs Linux 5.1 or later, so rules for older kernels apply too.
        kernel = tuple(int(x) for x in inc.get("minKernel", "0").split("."))
        if inc.get("caps") or kernel > (5, 1):
            continue
        if inc.get("arches") and not set(inc["arches"]) & {"amd64", "arm64"}:
            continue
        for name in rule["names"]:
            out.setdefault(name, []).append(rule.get("args", []))
    return out


def holds(value, cond):
    """Whether argument value `value` satisfies one seccomp argument condition."""
    op, v = cond["op"], cond["value"]
    return {"SCMP_CMP_EQ": value == v, "SCMP_CMP_NE": value != v, "SCMP_CMP_LT": value < v,
            "SCMP_CMP_LE": value <= v, "SCMP_CMP_GT": value > v, "SCMP_CMP_GE": value >= v,
            "SCMP_CMP_MASKED_EQ": value & v == cond.get("valueTwo", 0)}[op]


def within(conds, theirs):
    """Whether what `conds` (one rule's conditions) lets through, one of `theirs` (a list of
    rules' conditions) lets through too: the same conditions, or an EQ on one argument whose
    value satisfies one of their single conditions on that argument."""
    if [] in theirs or conds in theirs:
        return True
    if len(conds) == 1 and conds[0]["op"] == "SCMP_CMP_EQ":
        c = conds[0]
        return any(len(t) == 1 and t[0]["index"] == c["index"] and holds(c["value"], t[0])
                   for t in theirs)
    return False


def compare(allow, default):
    docker = docker_unconditional(default)
    unknown = sorted(n for n in allow if n not in docker and n not in IO_URING)
    if unknown:
        raise Bad(f"allows {unknown}, which Docker's default does not (io_uring aside)")
    for name, conds in allow.items():
        if name in IO_URING:
            continue
        for c in conds:
            if not within(c, docker[name]):
                raise Bad(f"{name}: allowed under {c}, Docker's default only under "
                          f"{docker[name]}")
    in_default = sorted(IO_URING & set(docker))
    return in_default


def run_under(profile, argv):
    import seccomp  # Debian: python3-seccomp

    f = seccomp.SyscallFilter(seccomp.ERRNO(profile.get("defaultErrnoRet", 1)))
    ops = {"SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT,
           "SCMP_CMP_LE": seccomp.LE, "SCMP_CMP_GT": seccomp.GT, "SCMP_CMP_GE": seccomp.GE,
           "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ}
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            action = seccomp.ALLOW
        else:
            action = seccomp.ERRNO(rule.get("errnoRet", profile.get("defaultErrnoRet", 1)))
        args = [seccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
                for a in rule.get("args", [])]
        for name in rule["names"]:
            try:
                f.add_rule(action, name, *args)
            except (RuntimeError, ValueError):
                pass  # not a system call on this architecture: as runc does, skip it
    f.load()
    os.execvp(argv[0], argv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default=str(ROOT / "dist/docker/seccomp.json"))
    ap.add_argument("--docker-default", metavar="FILE")
    ap.add_argument("command", nargs="*", help="exec -- COMMAND [ARG...]")
    a = ap.parse_args()
    try:
        profile = load(a.profile)
        if a.command:
            if a.command[0] != "exec" or len(a.command) < 2:
                ap.error("usage: exec -- COMMAND [ARG...]")
            run_under(profile, a.command[1:])
        allow = check(profile)
        print(f"{a.profile}: OK: OCI form, deny by default, {len(allow)} system calls "
              f"allowed, io_uring among them, none that Docker keeps from a container")
        if a.docker_default:
            in_default = compare(allow, load(a.docker_default))
            print(f"{a.profile}: OK: within {a.docker_default} for a container without "
                  f"capabilities, except io_uring "
                  f"({'which it also allows' if in_default else 'which it blocks'})")
    except (Bad, KeyError, TypeError) as e:
        print(f"seccomp-check: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
