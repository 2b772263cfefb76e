"""CPU time and resident memory of a process tree, read from /proc.

A terminator may be several processes (nginx: master + worker) and several threads (certgate),
so every figure is summed over the root pid and all its descendants. /proc/<pid>/stat already
sums the threads of one process, including threads that have exited.

Used as a module by bench.py and idle_conns.py, and from the shell:
    python3 procstat.py cpu PID   -> clock ticks (utime+stime) of the tree
    python3 procstat.py split PID -> clock ticks of the tree: utime, then stime
    python3 procstat.py rss PID   -> VmRSS of the tree, KiB
"""

import os
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def tree(root):
    """The root pid and every descendant that is alive now."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue  # the process exited while we were looking
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [int(root)]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_split(root):
    """(utime, stime) of the tree, in clock ticks: user space, and the kernel on its behalf
    (system calls, and the softirq work of loopback TCP that runs in them)."""
    user = system = 0
    for pid in tree(root):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        # Fields 14 (utime) and 15 (stime); rest[0] is field 3.
        user += int(f[11])
        system += int(f[12])
    return user, system


def cpu_ticks(root):
    """utime + stime of the tree, in clock ticks."""
    return sum(cpu_split(root))


def rss_kib(root):
    """Sum of VmRSS of the tree, KiB."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


if __name__ == "__main__":
    what, pid = sys.argv[1], sys.argv[2]
    if what == "cpu":
        print(cpu_ticks(pid))
    elif what == "split":
        print(*cpu_split(pid))
    else:
        print(rss_kib(pid))
