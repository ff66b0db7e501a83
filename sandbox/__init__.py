"""mathagent's sandboxed Python executor: hostile code in, a typed ``ExecResult`` out.

Threat model
------------
Code arrives from the model and, through the chat page, indirectly from any user. We assume it is
hostile and may try to: damage or read the host (files, the project checkout, other sessions), steal
secrets (environment, /proc, inherited memory), reach the network or local services, attack the
supervisor or other executions (signals, ptrace, kill(-1)), escape (exec, new namespaces, mounts,
raising limits), or exhaust resources (CPU, memory, processes, threads, disk, file descriptors,
output). Covered, and why each limit exists:

* No secrets to steal: the supervisor runs with an emptied environment; the zygote that forks workers
  is exec'd with an empty environment and never loads a secret, so neither its memory nor its initial
  environment strings hold one.
* Network: the zygote enters an empty network namespace once (loopback down; TCP, UDP and abstract
  unix sockets of the host are unreachable); Landlock also denies TCP bind/connect and scopes
  abstract unix sockets and signals to the worker itself.
* Processes: one unprivileged uid per slot (kill/ptrace of other processes fails; RLIMIT_NPROC
  applies), a seccomp deny-list (no exec, fork, unshare, setns, mount, ptrace, bpf, io_uring, keyctl,
  userfaultfd, perf, TIOCSTI, ...), a cgroup pids limit against thread storms, PR_SET_PDEATHSIG.
* Files: a private mount namespace with a size- and inode-capped tmpfs as working directory (/tmp)
  and as /dev/shm, discarded with the worker; a fresh /proc with hidepid=2 (no host processes);
  Landlock allows reading only system and interpreter paths and writing only the workdir. The
  interpreter under a 0700 home is re-exposed read-only in the zygote's mount namespace.
* Resources, enforced from OUTSIDE the worker: wall time (the supervisor kills it), CPU time (cgroup
  cpuacct polled by the supervisor; RLIMIT_CPU as kernel backstop), memory (cgroup memory limit;
  RLIMIT_AS only as a generous backstop because numpy/OpenBLAS reserve address space), output
  (the supervisor keeps the first 64 KiB per stream and kills a process that floods), file size
  (RLIMIT_FSIZE), open files (RLIMIT_NOFILE), core dumps off, stdin is /dev/null.
* Time: code stopped at the wall limit is reported as ``cpu_limit`` when it was computing (its main
  thread on a CPU or queued for one, read from /proc/<pid>/schedstat, so the class does not depend on
  how busy the host is) and as ``timeout`` when it was sleeping or blocked.
* Recovery: a dead zygote is restarted by the supervisor (sessions replay their cells); cgroups left
  by a supervisor killed with SIGKILL are swept by the next one at start (only groups under our
  ``mathagent-sandbox-`` prefix whose owning process provably no longer exists).
* Every stateless execution uses a fresh single-use worker; afterwards everything in its slot is
  killed and its tmpfs vanishes, so tampering never reaches the next execution.

Not covered: the kernel is shared. A kernel exploit reachable through the allowed syscalls escapes
all of the above. For code from the public internet run the sandbox service inside a VM boundary
(a Firecracker microVM like these machines) or gVisor in production. Side channels (timing, cache)
and CPU contention between executions are not isolated. A session's own state can be corrupted by
its own code (that is the session's business). Where a protection is missing on a host the service
says so in ``/healthz`` and ``python -m sandbox doctor``; strict mode (default unless MATHAGENT_DEV)
refuses to start without the full set.

Layout: ``supervisor`` (pool, sessions, limits), ``zygote`` (forks workers), ``isolation`` (the
confinement steps), ``prefault`` (a fresh worker's page faults paid before it joins the pool),
``harness`` (runs cells inside a worker), ``service``/``client`` (HTTP), ``local.local_service``
(a private service for one command or test run); the benchmark is ``mathagent bench sandbox``.
"""
