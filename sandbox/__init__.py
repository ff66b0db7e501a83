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
  environment strings hold one. Its configuration arrives on its control socket (not on the command
  line) and its initial environment strings are zeroed, so ``sys.argv``, ``/proc/self/cmdline`` and
  ``/proc/self/environ`` of a worker show neither.
* Files: workers see a minimal filesystem view built once in the zygote (``rootfs``: a tmpfs root,
  ``pivot_root``): the interpreter and its standard library, the virtualenv with site-packages,
  ``/usr/lib`` and the loader cache, read-only; ``/dev/{null,zero,full,random,urandom}``; a /proc of the
  zygote's PID namespace with hidepid=2; a private size- and inode-capped tmpfs as working directory
  (/tmp) and as /dev/shm, discarded with the worker. The host's ``/run``, ``/var``, ``/home``, ``/etc``
  (but the loader cache), its unix sockets, the project checkout and everything else are absent, not
  denied: nothing to stat, readlink, watch or connect to; the host name is ``sandbox`` (a UTS namespace).
  Landlock on top allows reading only the view's trees and writing only the workdir, /dev/shm and
  /dev/null.
* Network and sockets: the zygote enters an empty network namespace once (loopback down) and creates one
  more per slot, which that slot's workers join (workers of different slots do not see each other's
  sockets in /proc/net; nothing a worker has outlives it there). seccomp refuses ``socket()`` for every
  family (inet, netlink, vsock, packet, unix, ...): only ``socketpair(AF_UNIX)`` works. Landlock also
  denies TCP bind/connect and scopes abstract unix sockets and signals to the worker itself.
* IPC: every worker has its own IPC namespace, and seccomp refuses SysV IPC (shmget/shmat/msgget/
  msgsnd/semget/..., the ``ipc`` multiplexer) and POSIX message queues: no object outlives a worker, is
  shared between calls or sessions, or stays charged to a slot.
* Processes: the zygote is pid 1 of its own PID namespace, so host pids cannot be named at all (kill,
  getpgid, sched_getaffinity, pidfd_open, /proc all see only the zygote and its workers); one
  unprivileged uid per slot (kill/ptrace of other processes fails; RLIMIT_NPROC applies), a seccomp
  deny-list (no exec, fork, unshare, setns, mount, ptrace, bpf, io_uring, keyctl, userfaultfd, perf,
  pidfd_open, inotify, TIOCSTI, ...; a system call through another ABI, i386 ``int 0x80`` or x32, kills
  the process), a cgroup pids limit against thread storms, PR_SET_PDEATHSIG.
* Resources, enforced from OUTSIDE the worker: wall time (the supervisor kills it), CPU time (cgroup
  cpuacct polled by the supervisor; RLIMIT_CPU as kernel backstop), memory (cgroup memory limit;
  RLIMIT_AS only as a generous backstop because numpy/OpenBLAS reserve address space), output
  (the supervisor keeps the first 64 KiB per stream and kills a process that floods), file size
  (RLIMIT_FSIZE), open files (RLIMIT_NOFILE), core dumps off, stdin is /dev/null. A memory limit the
  kernel refuses to apply (it cannot lower a group below what it holds) is never cached and never run
  under: a pool slot that refuses is recycled (out of the pool until its limit can be set) and the call
  moves to another worker; a session holding more than its cell asks for gets ``memory_limit``, the
  cell not run.
* Time: code stopped at the wall limit is reported as ``cpu_limit`` when it was computing (its threads
  on a CPU or queued for one, read from /proc/<pid>/task/*/schedstat, so the class does not depend on
  how busy the host is) and as ``timeout`` when it was sleeping or blocked.
* Honest results: everything a worker writes on its command socket is untrusted; the answer to a cell
  must be one small frame of the expected shape carrying that cell's nonce. Malformed, oversized,
  deeply nested or out-of-order frames are the code's own ``crashed``, never ``sandbox_error``, in the
  service and in ``python -m sandbox exec`` (one JSON line, whatever happens).
* Sessions: a session worker is stopped (SIGSTOP, which no code can catch) between cells, so threads a
  cell left behind cannot compute between cells; the CPU they used before the stop is charged to the
  next cell. When every session slot is taken, the least recently used idle session's worker is
  evicted: its successful cells are kept and replayed before its next cell, which reports
  ``state_reset`` (as after a lost worker); when every slot is running a cell a new session is refused
  with a clear error. An idle session expires after ``session_ttl_s``.
* Recovery: a dead zygote is restarted by the supervisor (sessions replay their cells); cgroups left
  by a supervisor killed with SIGKILL are swept by the next one at start (only groups under our
  ``mathagent-sandbox-`` prefix whose owning process provably no longer exists).
* Every stateless execution uses a fresh single-use worker; afterwards everything in its slot is
  killed and its tmpfs and IPC namespace vanish, so tampering never reaches the next execution.

Not covered: the kernel is shared. A kernel exploit reachable through the allowed syscalls escapes
all of the above. For code from the public internet run the sandbox service inside a VM boundary
(a Firecracker microVM like these machines) or gVisor in production. Side channels (timing, cache)
and CPU contention between executions are not isolated; among them, a worker can count the live
workers (their pids answer ``kill(pid, 0)`` with EPERM in the shared PID namespace) and read the
read-only trees of its view (the interpreter, site-packages, /usr/lib), whose paths name the
virtualenv's location. A session's own state can be corrupted by its own code (that is the session's
business; it can also forge the answer to its own cell, which only lies about itself). An evicted
session replays its successful cells, so their side effects on its own state repeat. Where a
protection is missing on a host the service says so in ``/healthz`` and ``python -m sandbox doctor``;
strict mode (default unless MATHAGENT_DEV) refuses to start without the full set.

Layout: ``supervisor`` (pool, sessions, limits), ``cell`` (one cell in one worker: limits from outside,
classification), ``frames`` (the worker's answer, validated), ``zygote`` (forks workers),
``isolation`` (the confinement steps), ``rootfs`` (the workers' filesystem view), ``seccomp_filter``,
``cgroups``, ``prefault`` (a fresh worker's page faults paid before it joins the pool), ``harness`` (runs
cells inside a worker), ``service``/``client`` (HTTP), ``local.local_service`` (a private service for one
command or test run); the benchmark is ``mathagent bench sandbox``.
"""
