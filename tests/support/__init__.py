"""What the tests and the benchmarks share: processes, fault proxy, blocks, logs, memory, ports, waits.

One module a job, so a test or a benchmark imports only what it uses:

- ``wait``: poll a condition until it holds, with a deadline;
- ``ports``: free loopback ports (ephemeral, or below that range for restartable nodes);
- ``logs``: read a process's JSON log lines, or follow them as they are written;
- ``rss``: a process's resident memory and CPU time, from /proc;
- ``blocks``: cheap valid blocks, chains and lazy lines of blocks;
- ``proxy``: a fault-injecting TCP proxy (cut, reset, delay, drop, heal);
- ``processes``: ``python -m gridchain`` nodes and relays as subprocesses, their status, a clean stop;
- ``cluster``: a full mesh of node processes with an in-process relay, proxied links, crash and
  partition controls, and the store invariants checked at the end;
- ``nodes``: nodes and relays run inside the test's own event loop;
- ``hosts``: test hosts in network namespaces (an address each, on a bridge of their own) with
  partitions, packet loss and delay, and skewed clocks;
- ``netqueue``: packet loss and delay in user space (NFQUEUE), where the kernel has no netem.
"""
